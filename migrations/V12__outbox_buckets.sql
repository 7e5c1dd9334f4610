-- A move's fence waits until the outbox rows written for its buckets are published
-- (src/resharding/mover.rs, `outbox_drained`): outbox rows do not move. To wait for
-- those rows only, not for every row of the shard, each row records the buckets its
-- transaction claimed. `claim_bucket` (the ownership check every write makes, V10)
-- keeps them in a transaction-local setting, and the outbox columns default to it. A
-- row written without a claim has no buckets and is waited for by every fence.
CREATE OR REPLACE FUNCTION claim_bucket(b integer) RETURNS TABLE (state text, owner text, epoch bigint)
    LANGUAGE plpgsql VOLATILE
    AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1398227540, b);
    PERFORM set_config('shardwallet.buckets',
                       concat_ws(',', nullif(current_setting('shardwallet.buckets', true), ''), b::text), true);
    RETURN QUERY SELECT o.state, o.owner, o.epoch FROM bucket_owners o WHERE o.bucket = b;
END $$;

ALTER TABLE outbox ADD COLUMN buckets integer[]
    DEFAULT string_to_array(nullif(current_setting('shardwallet.buckets', true), ''), ',')::integer[];
ALTER TABLE payment_outbox ADD COLUMN buckets integer[]
    DEFAULT string_to_array(nullif(current_setting('shardwallet.buckets', true), ''), ',')::integer[];
