-- migrate:backward-compatible
-- Quarantine: a sender whose messages the webhooks (W1_IN_*) refuse on purpose,
-- set and lifted by the operator (`resto STAGE quarantine add|remove`). W1
-- answers Meta 200 (so Meta does not retry), stores nothing, replies nothing
-- and records a QUARANTINED security event per refused message. An entry whose
-- expires_at has passed no longer refuses anything. A release that does not
-- know the table still runs: it only stops refusing.

CREATE TABLE quarantine (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel    text        NOT NULL,
    sender     text        NOT NULL,
    reason     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text        NOT NULL,
    expires_at timestamptz,
    CONSTRAINT quarantine_channel_check CHECK (channel IN ('whatsapp', 'messenger', 'instagram')),
    CONSTRAINT quarantine_sender_check CHECK (sender <> ''),
    CONSTRAINT quarantine_created_by_check CHECK (created_by <> ''),
    CONSTRAINT quarantine_expires_at_check CHECK (expires_at > created_at),
    -- Also the index of W1's per-message lookup (channel, sender).
    CONSTRAINT quarantine_channel_sender_key UNIQUE (channel, sender)
);

-- The new event type: the constraint is replaced whole (a CHECK cannot be
-- altered); every existing row passes it, the new list being a superset.
ALTER TABLE security_events
    DROP CONSTRAINT security_events_event_type_check,
    ADD CONSTRAINT security_events_event_type_check CHECK (event_type IN (
        'SIGNATURE_INVALID', 'SIGNATURE_MISSING', 'VERIFY_TOKEN_INVALID', 'RATE_LIMIT',
        'REPLAY', 'AUTH_FAILED', 'SCOPE_DENIED', 'PAYLOAD_INVALID', 'QUARANTINED'));

COMMENT ON COLUMN security_events.event_type IS 'SIGNATURE_INVALID, SIGNATURE_MISSING, VERIFY_TOKEN_INVALID, RATE_LIMIT, REPLAY, AUTH_FAILED, SCOPE_DENIED, PAYLOAD_INVALID or QUARANTINED (a message from a quarantined sender, refused; detail: sender, msg_id); a new type needs a new migration.';

COMMENT ON TABLE quarantine IS 'Senders whose messages the webhooks refuse (answered 200, not stored, not answered, recorded as QUARANTINED security events), one row per (channel, sender).';
COMMENT ON COLUMN quarantine.id IS 'Surrogate key.';
COMMENT ON COLUMN quarantine.channel IS 'whatsapp, messenger or instagram.';
COMMENT ON COLUMN quarantine.sender IS 'Sender id as W1 stores it in inbound_messages.sender: WhatsApp phone number (from), Messenger PSID or Instagram IGSID. Personal data.';
COMMENT ON COLUMN quarantine.reason IS 'Why the operator quarantined the sender (free text), if given.';
COMMENT ON COLUMN quarantine.created_at IS 'When the entry was added.';
COMMENT ON COLUMN quarantine.created_by IS 'Who added it (the operator, as written to the audit log).';
COMMENT ON COLUMN quarantine.expires_at IS 'When the entry stops refusing messages; NULL: until removed.';
