-- Inbound messages: every message Meta delivers (WhatsApp, Messenger, Instagram),
-- stored once per (channel, msg_id) before the webhook answers 200, then processed
-- asynchronously by the n8n worker.
--
-- Also defines set_updated_at(), the trigger function every table with an
-- updated_at column uses.

CREATE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION set_updated_at() IS 'Trigger function: sets updated_at to now() on every UPDATE.';

CREATE TABLE inbound_messages (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel          text        NOT NULL,
    msg_id           text        NOT NULL,
    conversation_key text        NOT NULL,
    sender           text        NOT NULL,
    text             text,
    payload          jsonb       NOT NULL,
    sent_at          timestamptz,
    received_at      timestamptz NOT NULL DEFAULT now(),
    status           text        NOT NULL DEFAULT 'RECEIVED',
    status_reason    text,
    processed_at     timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT inbound_messages_channel_check
        CHECK (channel IN ('whatsapp', 'messenger', 'instagram')),
    CONSTRAINT inbound_messages_msg_id_check CHECK (msg_id <> ''),
    CONSTRAINT inbound_messages_conversation_key_check CHECK (conversation_key <> ''),
    CONSTRAINT inbound_messages_sender_check CHECK (sender <> ''),
    CONSTRAINT inbound_messages_payload_check CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT inbound_messages_status_check
        CHECK (status IN ('RECEIVED', 'PROCESSED', 'DROPPED', 'FAILED')),
    CONSTRAINT inbound_messages_processed_at_check
        CHECK (status = 'RECEIVED' OR processed_at IS NOT NULL),
    CONSTRAINT inbound_messages_channel_msg_id_key UNIQUE (channel, msg_id)
);

-- The runbook's rate-limit query: received in the last minute, grouped by conversation.
CREATE INDEX inbound_messages_received_at_idx
    ON inbound_messages (received_at);
-- The pipeline's per-conversation rate limit and history lookups.
CREATE INDEX inbound_messages_conversation_key_received_at_idx
    ON inbound_messages (conversation_key, received_at DESC);
-- The worker's queue of messages still to process.
CREATE INDEX inbound_messages_received_idx
    ON inbound_messages (received_at) WHERE status = 'RECEIVED';

CREATE TRIGGER inbound_messages_set_updated_at
    BEFORE UPDATE ON inbound_messages
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

COMMENT ON TABLE inbound_messages IS 'Messages received from Meta webhooks, one row per (channel, msg_id): stored before answering 200, processed asynchronously.';
COMMENT ON COLUMN inbound_messages.id IS 'Surrogate key; outbound_messages.inbound_message_id points here.';
COMMENT ON COLUMN inbound_messages.channel IS 'whatsapp, messenger or instagram.';
COMMENT ON COLUMN inbound_messages.msg_id IS 'Meta message id (WhatsApp messages[].id "wamid...", Messenger/Instagram message.mid); unique per channel, the dedupe key for at-least-once delivery.';
COMMENT ON COLUMN inbound_messages.conversation_key IS 'Conversation the message belongs to (channel + business account + sender); rate limits and replies are per conversation.';
COMMENT ON COLUMN inbound_messages.sender IS 'Sender id: WhatsApp phone number (from), Messenger PSID or Instagram IGSID. Personal data.';
COMMENT ON COLUMN inbound_messages.text IS 'Message text; NULL for non-text messages (image, location, ...). Personal data.';
COMMENT ON COLUMN inbound_messages.payload IS 'The raw message object as Meta sent it (one entry of the webhook batch).';
COMMENT ON COLUMN inbound_messages.sent_at IS 'When the user sent it, from Meta''s timestamp (WhatsApp: seconds, Messenger/Instagram: milliseconds).';
COMMENT ON COLUMN inbound_messages.received_at IS 'When the webhook stored it.';
COMMENT ON COLUMN inbound_messages.status IS 'Processing state: RECEIVED (stored, not processed yet), PROCESSED, DROPPED (rate limit, echo, replay...; see status_reason), FAILED.';
COMMENT ON COLUMN inbound_messages.status_reason IS 'Why the message was DROPPED or FAILED.';
COMMENT ON COLUMN inbound_messages.processed_at IS 'When processing ended; required once status is not RECEIVED.';
COMMENT ON COLUMN inbound_messages.updated_at IS 'Last change of the row (set by trigger).';
