-- migrate:backward-compatible
-- Re-drive of inbound messages left RECEIVED: a message is stored before the
-- webhook answers 200, then processed in the background; when that background
-- step fails (worker killed, PostgreSQL or Redis gone mid-way), the sweeper
-- (W4_SWEEPER) hands the row to the pipeline again once it is older than
-- INBOUND_REDRIVE_AFTER_SECONDS, and alerts once rows stay RECEIVED longer than
-- INBOUND_STUCK_ALERT_SECONDS. The reply stays single: outbound_messages is
-- unique per inbound message.

ALTER TABLE inbound_messages
    ADD COLUMN redrive_count integer NOT NULL DEFAULT 0,
    ADD COLUMN redriven_at   timestamptz,
    ADD CONSTRAINT inbound_messages_redrive_count_check CHECK (redrive_count >= 0),
    ADD CONSTRAINT inbound_messages_redriven_at_check CHECK ((redrive_count = 0) = (redriven_at IS NULL));

INSERT INTO alert_state (alert_key) VALUES ('inbound_stuck');

COMMENT ON COLUMN inbound_messages.redrive_count IS 'How many times the sweeper (W4_SWEEPER) handed this RECEIVED row to the pipeline again.';
COMMENT ON COLUMN inbound_messages.redriven_at IS 'When the sweeper last re-drove it; the next re-drive waits INBOUND_REDRIVE_AFTER_SECONDS from here.';
