-- Outbound messages: the bot's replies, sent through the Graph API by the
-- n8n worker, retried on transient errors and parked in the DLQ after the
-- last retry. At most one reply per inbound message; a row that has a
-- provider_message_id was accepted by Meta and is never sent again.

CREATE TABLE outbound_messages (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel             text        NOT NULL,
    msg_id              text        NOT NULL,
    inbound_message_id  bigint      REFERENCES inbound_messages (id) ON DELETE SET NULL,
    conversation_key    text        NOT NULL,
    recipient           text        NOT NULL,
    payload             jsonb       NOT NULL,
    status              text        NOT NULL DEFAULT 'PENDING',
    retry_count         integer     NOT NULL DEFAULT 0,
    next_retry_at       timestamptz,
    error_code          text,
    error_message       text,
    provider_message_id text,
    delivery_status     text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT outbound_messages_channel_check
        CHECK (channel IN ('whatsapp', 'messenger', 'instagram')),
    CONSTRAINT outbound_messages_msg_id_check CHECK (msg_id <> ''),
    CONSTRAINT outbound_messages_conversation_key_check CHECK (conversation_key <> ''),
    CONSTRAINT outbound_messages_recipient_check CHECK (recipient <> ''),
    CONSTRAINT outbound_messages_payload_check CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT outbound_messages_status_check
        CHECK (status IN ('PENDING', 'SENT', 'RETRY', 'DLQ')),
    CONSTRAINT outbound_messages_retry_count_check CHECK (retry_count >= 0),
    CONSTRAINT outbound_messages_next_retry_at_check
        CHECK (status <> 'RETRY' OR next_retry_at IS NOT NULL),
    CONSTRAINT outbound_messages_sent_check
        CHECK (status <> 'SENT' OR (sent_at IS NOT NULL AND provider_message_id IS NOT NULL)),
    CONSTRAINT outbound_messages_never_resent_check
        CHECK (provider_message_id IS NULL OR status = 'SENT'),
    CONSTRAINT outbound_messages_provider_message_id_check CHECK (provider_message_id <> ''),
    CONSTRAINT outbound_messages_delivery_status_check
        CHECK (delivery_status IN ('sent', 'delivered', 'read', 'failed')),
    CONSTRAINT outbound_messages_channel_msg_id_key UNIQUE (channel, msg_id),
    CONSTRAINT outbound_messages_inbound_message_id_key UNIQUE (inbound_message_id),
    CONSTRAINT outbound_messages_channel_provider_message_id_key UNIQUE (channel, provider_message_id)
);

-- The runbook's DLQ count and details, and its RETRY/DLQ listing:
-- WHERE status = ... ORDER BY created_at DESC.
CREATE INDEX outbound_messages_status_created_at_idx
    ON outbound_messages (status, created_at DESC);
-- The sender's queue: rows due now.
CREATE INDEX outbound_messages_due_idx
    ON outbound_messages (next_retry_at) WHERE status IN ('PENDING', 'RETRY');

CREATE TRIGGER outbound_messages_set_updated_at
    BEFORE UPDATE ON outbound_messages
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

COMMENT ON TABLE outbound_messages IS 'Replies to send through the Graph API, with retry and dead-letter (DLQ) state. One reply per inbound message; a row with provider_message_id is never resent.';
COMMENT ON COLUMN outbound_messages.id IS 'Surrogate key, shown by the runbook''s DLQ query.';
COMMENT ON COLUMN outbound_messages.channel IS 'whatsapp, messenger or instagram.';
COMMENT ON COLUMN outbound_messages.msg_id IS 'Idempotency key of the reply, unique per channel: the msg_id of the inbound message it answers, or a generated key for a message that answers none.';
COMMENT ON COLUMN outbound_messages.inbound_message_id IS 'The inbound message this reply answers (unique: a reply is never created twice for one inbound); NULL for proactive messages or once the inbound row was purged.';
COMMENT ON COLUMN outbound_messages.conversation_key IS 'Conversation the reply belongs to (same key as inbound_messages.conversation_key).';
COMMENT ON COLUMN outbound_messages.recipient IS 'Recipient id: WhatsApp phone number, Messenger PSID or Instagram IGSID. Personal data.';
COMMENT ON COLUMN outbound_messages.payload IS 'The message body to send (Graph API JSON).';
COMMENT ON COLUMN outbound_messages.status IS 'PENDING (to send), SENT (accepted by Meta), RETRY (transient error, due at next_retry_at), DLQ (gave up; replay from the admin API or the runbook).';
COMMENT ON COLUMN outbound_messages.retry_count IS 'Send attempts that failed so far.';
COMMENT ON COLUMN outbound_messages.next_retry_at IS 'When a RETRY row is due (required for RETRY).';
COMMENT ON COLUMN outbound_messages.error_code IS 'Last Graph API error code (e.g. 130429, 131056), if any.';
COMMENT ON COLUMN outbound_messages.error_message IS 'Last error message, if any.';
COMMENT ON COLUMN outbound_messages.provider_message_id IS 'Message id returned by the Graph API (wamid... / mid...). Set only when status = SENT: a row that has one is never sent again.';
COMMENT ON COLUMN outbound_messages.delivery_status IS 'Latest delivery status from Meta''s status webhooks: sent, delivered, read or failed.';
COMMENT ON COLUMN outbound_messages.created_at IS 'When the reply was queued.';
COMMENT ON COLUMN outbound_messages.sent_at IS 'When Meta accepted it (required for SENT).';
COMMENT ON COLUMN outbound_messages.updated_at IS 'Last change of the row (set by trigger).';
