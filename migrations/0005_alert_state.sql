-- Alert state: lets a periodic check (W8_DLQ_HANDLER every 5 minutes) alert
-- once per threshold crossing instead of on every run. Above the threshold and
-- not active: send the alert, and only once the destination answered 2xx:
--   UPDATE alert_state SET active = true, last_value = $1, threshold = $2, last_alerted_at = now()
--    WHERE alert_key = 'dlq_threshold' AND NOT active;
-- (a failed send leaves it inactive: the next run tries again). Back under it:
--   UPDATE alert_state SET active = false, last_value = $1, cleared_at = now()
--    WHERE alert_key = 'dlq_threshold' AND active;

CREATE TABLE alert_state (
    alert_key       text        PRIMARY KEY,
    active          boolean     NOT NULL DEFAULT false,
    threshold       bigint,
    last_value      bigint,
    last_alerted_at timestamptz,
    cleared_at      timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alert_state_alert_key_check CHECK (alert_key ~ '^[a-z][a-z0-9_]*$'),
    CONSTRAINT alert_state_active_check CHECK (NOT active OR last_alerted_at IS NOT NULL)
);

CREATE TRIGGER alert_state_set_updated_at
    BEFORE UPDATE ON alert_state
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

INSERT INTO alert_state (alert_key) VALUES ('dlq_threshold');

COMMENT ON TABLE alert_state IS 'One row per alert: whether it is raised, so a periodic check alerts once per threshold crossing.';
COMMENT ON COLUMN alert_state.alert_key IS 'Alert name, e.g. dlq_threshold.';
COMMENT ON COLUMN alert_state.active IS 'true while the alert is raised (threshold crossed and not yet cleared).';
COMMENT ON COLUMN alert_state.threshold IS 'Threshold in force when the alert was last raised (e.g. DLQ_ALERT_THRESHOLD).';
COMMENT ON COLUMN alert_state.last_value IS 'Last measured value (e.g. DLQ row count).';
COMMENT ON COLUMN alert_state.last_alerted_at IS 'When the alert was last sent.';
COMMENT ON COLUMN alert_state.cleared_at IS 'When the value last fell back under the threshold.';
COMMENT ON COLUMN alert_state.updated_at IS 'Last change of the row (set by trigger).';
