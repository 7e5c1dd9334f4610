-- A write's ownership check (src/sharding/ownership.rs, `check_write`): a shared
-- transaction-level advisory lock on the bucket, then its row read in a snapshot taken
-- after the lock was granted (a VOLATILE function's statements each take their own). A
-- move's fence takes the same lock exclusively, so a write either commits before the
-- fence begins or reads the bucket's row after the switch. It replaces a KEY SHARE lock
-- on the row, which wrote the tuple's lock (and, with two writers at once, a
-- MultiXact) on every write; an advisory lock lives in shared memory only.
-- 1398227540 = 'SWBT': the key space of bucket locks, apart from every other
-- advisory lock of ours (those take one 64-bit key).
CREATE FUNCTION claim_bucket(b integer) RETURNS TABLE (state text, owner text, epoch bigint)
    LANGUAGE plpgsql VOLATILE
    AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1398227540, b);
    RETURN QUERY SELECT o.state, o.owner, o.epoch FROM bucket_owners o WHERE o.bucket = b;
END $$;
