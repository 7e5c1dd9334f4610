-- Payments in doubt: a payment the gateway may hold is never failed on a
-- guess. Past its deadline it waits in `needs_review` (hold kept) for the gateway's
-- answer or an operator's decision; the state machine is src/payments/state.rs.
ALTER TABLE payments DROP CONSTRAINT payments_state_check;
ALTER TABLE payments ADD CONSTRAINT payments_state_check
    CHECK (state IN ('created', 'submitted', 'needs_review', 'succeeded', 'failed'));
-- Status queries since the last submission: the backoff between them.
ALTER TABLE payments ADD COLUMN queries integer NOT NULL DEFAULT 0;
-- Who settled a payment by hand, and why (POST /v1/admin/payments/{id}/resolve).
ALTER TABLE payments ADD COLUMN resolved_by text;
ALTER TABLE payments ADD COLUMN resolution_note text;

DROP INDEX payments_in_flight;
CREATE INDEX payments_in_flight ON payments (next_attempt_at)
    WHERE state IN ('created', 'submitted', 'needs_review');
-- GET /v1/admin/payments?state=...
CREATE INDEX payments_by_state ON payments (state, payment_id DESC);
