-- The epoch at which a shard got a bucket, kept when it gives the bucket away. The
-- `resharding` stand-in legs a copy writes on the target are named after it
-- (`resharding_leg_id`, V8), and the switch's flip on the source now commits before the
-- target's copy (src/resharding/mover.rs, `fenced_copy`): a copy read after the flip
-- (the fence's full copy, or the next run's `take_over` of a bucket left between the two
-- commits) must name the stand-ins as the copy before it did, not after the flip's epoch.
ALTER TABLE bucket_owners ADD COLUMN owned_since_epoch bigint;
