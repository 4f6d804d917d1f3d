-- migrate:backward-compatible
-- Comments only. The lease W3 takes on a reply became a setting
-- (pipeline.outbound_lease_seconds, 2 minutes by default), and a reply whose
-- outcome W3 never recorded is now confirmed by Meta's echo of it: W3 tags each
-- send 'restobot-outbound-<id>:<md5 of msg_id>' (WhatsApp's
-- biz_opaque_callback_data, echoed in the message's statuses; Messenger's
-- message.metadata, echoed in message_echoes), and W2 marks the row SENT.

COMMENT ON COLUMN outbound_messages.send_started_at IS 'When W3 last claimed the row to send it; cleared when the outcome is recorded, or when Meta''s echo of the send (its tag restobot-outbound-<id>:<md5 of msg_id>) confirms it. With next_retry_at still send_started_at + the lease (pipeline.outbound_lease_seconds) and past, the outcome of that send is unknown.';
