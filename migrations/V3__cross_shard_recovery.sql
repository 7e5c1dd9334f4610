-- A cancelled cross-shard transfer is re-driven (CancelCredit re-sent) until its
-- receiver acknowledges with Cancelled, so a lost CancelCredit cannot leave the
-- receiver's record `tried` forever. Rows cancelled before this migration start
-- unacknowledged: each is re-sent once, which receivers answer without effect.
ALTER TABLE transfers ADD COLUMN cancel_acked_at timestamptz;

DROP INDEX transfers_in_flight;
CREATE INDEX transfers_to_redrive ON transfers (updated_at)
    WHERE state IN ('trying', 'confirming')
       OR (state = 'cancelled' AND route = 'cross_shard' AND cancel_acked_at IS NULL);

-- A cross-shard transfer whose receiver was found by a read when it was requested skips
-- TryCredit/Tried: it starts `confirming` and its stage is DirectCredit (re-driven as such).
ALTER TABLE transfers ADD COLUMN direct boolean NOT NULL DEFAULT false;
