-- migrate:backward-compatible
-- When W3_OUTBOUND_SENDER last claimed a reply to send it. The claim sets it and
-- the reply's 2-minute lease together (next_retry_at = send_started_at + 2 min);
-- recording the outcome clears it. A row still holding that lease after it ran
-- out was sent, or not, with nobody left to know: the Graph API takes no
-- idempotency key. W3 then sends it again (pipeline.on_uncertain_send = resend)
-- or moves it to the DLQ as send_outcome_unknown for the operator (park). A
-- release that does not know the column still runs: it resends such a row, and
-- the outcome it records moves next_retry_at off the lease.

ALTER TABLE outbound_messages ADD COLUMN send_started_at timestamptz;

COMMENT ON COLUMN outbound_messages.send_started_at IS 'When W3 last claimed the row to send it; cleared when the outcome is recorded. With next_retry_at still send_started_at + 2 minutes and past, the outcome of that send is unknown.';
