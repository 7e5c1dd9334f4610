-- A key's `bucket` is recorded only when its caller's own bucket does not say it: an
-- admin's key, or a user's request routed by another bucket. A user's keys on their
-- own bucket keep NULL and are found through the caller, as before V8. So the keys of
-- a moving bucket are found by two index scans (the primary key by caller, and this
-- small partial index) instead of a scan of the table, and the hot insert of a user's
-- request writes no entry in it.
UPDATE idempotency_keys k SET bucket = NULL
FROM users u
WHERE u.user_id = k.caller AND k.bucket = u.bucket;

CREATE INDEX idempotency_keys_by_bucket ON idempotency_keys (bucket) WHERE bucket IS NOT NULL;
