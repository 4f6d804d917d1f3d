-- migrate:backward-compatible
-- Instagram's Send API takes no metadata, so an Instagram reply cannot name its row the way WhatsApp
-- (biz_opaque_callback_data) and Messenger (message.metadata) replies do. Meta still posts an echo of
-- each message the account sends (is_echo, in the messages field): W2 keeps its id and a key of its
-- recipient and text here, and W3, before it sends again an Instagram reply whose last send may have
-- reached Meta (its lease ran out with no outcome, or the Graph API did not answer in time), marks it
-- SENT with an echo of the same recipient and text that arrived after that send and that no reply holds.
-- A release that does not know the table still runs: its W2 ignores the echoes and its W3 resends.

CREATE TABLE outbound_echoes (
    mid         text        PRIMARY KEY,
    echo_key    text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT outbound_echoes_mid_check CHECK (mid <> ''),
    CONSTRAINT outbound_echoes_echo_key_check CHECK (echo_key ~ '^[0-9a-f]{32}$')
);

-- W3's lookup: the echoes of one recipient and text, oldest first.
CREATE INDEX outbound_echoes_echo_key_idx ON outbound_echoes (echo_key, received_at);
-- W2's delete of the echoes past their day.
CREATE INDEX outbound_echoes_received_at_idx ON outbound_echoes (received_at);

COMMENT ON TABLE outbound_echoes IS 'Meta''s echoes of the Instagram messages the account sent, kept a day: they settle an Instagram reply whose send W3 could not see answered.';
COMMENT ON COLUMN outbound_echoes.mid IS 'The message id Meta gave the sent message (message.mid of the echo).';
COMMENT ON COLUMN outbound_echoes.echo_key IS 'md5 of recipient || '':'' || text: the same key W3 computes from outbound_messages.recipient and payload.message.text (no personal data kept here).';
COMMENT ON COLUMN outbound_echoes.received_at IS 'When the echo arrived; W2 deletes it a day later.';

ALTER TABLE outbound_messages ADD COLUMN last_attempt_at timestamptz;

COMMENT ON COLUMN outbound_messages.last_attempt_at IS 'When W3 last claimed the row to send it; unlike send_started_at, kept once the outcome is recorded. An echo that arrived before it belongs to an earlier send.';
