-- Re-drives are capped: a transfer re-emitted `transfers.redrive_max` times
-- without moving is marked stuck, left alone by the sweeper, listed by
-- GET /v1/admin/transfers?state=stuck and re-driven only by an operator
-- (POST /v1/admin/transfers/{id}/redrive). Stuck is a mark beside the TCC state, not a
-- state of its own: the protocol's transitions (a late answer, a Try timeout) still apply.
ALTER TABLE transfers ADD COLUMN redrives integer NOT NULL DEFAULT 0;
ALTER TABLE transfers ADD COLUMN stuck_at timestamptz;
CREATE INDEX transfers_stuck ON transfers (transfer_id DESC) WHERE stuck_at IS NOT NULL;
