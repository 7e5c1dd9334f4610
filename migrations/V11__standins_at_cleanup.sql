-- The source's stand-in legs for a moved bucket's split postings (see
-- src/resharding/copy.rs) are written by `reshard cleanup`, in the transaction that
-- deletes the legs they stand for, rather than inside the move's fence: the fence's
-- work then scales with what changed since the copy, not with the bucket's history.
-- Until cleanup, the legs that left are still on the source, so every posting there
-- balances as it is; `verify` counts, for a bucket flagged here, the stand-ins cleanup
-- will write (src/ledger/verify.rs, `owned_only`). A bucket moved before this flag
-- existed had its stand-ins written by its fence and is not flagged.
ALTER TABLE bucket_owners ADD COLUMN standins_pending boolean NOT NULL DEFAULT false;
