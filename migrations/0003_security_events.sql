-- Security events: rejected or suspicious requests seen by the webhooks and the
-- admin API (bad signatures, rate limits, replays, failed authentication).

CREATE TABLE security_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type text        NOT NULL,
    channel    text,
    source_ip  inet,
    detail     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT security_events_event_type_check CHECK (event_type IN (
        'SIGNATURE_INVALID', 'SIGNATURE_MISSING', 'VERIFY_TOKEN_INVALID', 'RATE_LIMIT',
        'REPLAY', 'AUTH_FAILED', 'SCOPE_DENIED', 'PAYLOAD_INVALID')),
    CONSTRAINT security_events_channel_check
        CHECK (channel IN ('whatsapp', 'messenger', 'instagram', 'admin')),
    CONSTRAINT security_events_detail_check CHECK (jsonb_typeof(detail) = 'object')
);

-- The runbook's "events by type in the last hour" (index-only scan) and the
-- monitoring's "errors per hour".
CREATE INDEX security_events_created_at_event_type_idx
    ON security_events (created_at, event_type);
-- Per-type history (e.g. the latest SIGNATURE_INVALID events).
CREATE INDEX security_events_event_type_created_at_idx
    ON security_events (event_type, created_at DESC);

COMMENT ON TABLE security_events IS 'Rejected or suspicious requests (webhooks and admin API), for diagnosis and alerting.';
COMMENT ON COLUMN security_events.id IS 'Surrogate key.';
COMMENT ON COLUMN security_events.event_type IS 'SIGNATURE_INVALID, SIGNATURE_MISSING, VERIFY_TOKEN_INVALID, RATE_LIMIT, REPLAY, AUTH_FAILED, SCOPE_DENIED or PAYLOAD_INVALID; a new type needs a new migration.';
COMMENT ON COLUMN security_events.channel IS 'whatsapp, messenger, instagram, admin (the admin API), or NULL when unknown.';
COMMENT ON COLUMN security_events.source_ip IS 'Client IP address (the first X-Forwarded-For hop set by Traefik), if known.';
COMMENT ON COLUMN security_events.detail IS 'Event details as a JSON object (never secrets or tokens).';
COMMENT ON COLUMN security_events.created_at IS 'When the event happened.';
