-- Online resharding: the shards themselves are the authority on who owns a bucket.
-- See docs/ARCHITECTURE.md "Resharding" and src/sharding/ownership.rs.

-- One row per bucket this shard owns, is receiving, or has given away. Every write
-- takes a KEY SHARE lock on its bucket's row and finds it 'owned'; a move's fence takes
-- the row FOR UPDATE, so it waits for writes in flight and holds off new ones while the
-- last rows are copied, then flips the row to 'moved' (naming the new owner) in the same
-- transaction. A bucket is therefore writable on one shard at most, at every instant.
CREATE TABLE bucket_owners (
    bucket     integer PRIMARY KEY CHECK (bucket >= 0 AND bucket < 65536),
    state      text NOT NULL CHECK (state IN ('owned', 'incoming', 'moved')),
    -- This shard while 'owned' or 'incoming'; the new owner once 'moved'.
    owner      text NOT NULL,
    -- The map epoch of the row's last change; epochs only grow, cluster-wide.
    epoch      bigint NOT NULL CHECK (epoch > 0),
    changed_at timestamptz NOT NULL DEFAULT now()
);

-- The cluster's members, as recorded by `migrate` and `shards add` on every shard.
-- Connection URLs are kept without passwords (those come from the environment).
CREATE TABLE cluster_shards (
    name        text PRIMARY KEY,
    url         text NOT NULL,
    added_epoch bigint NOT NULL CHECK (added_epoch > 0),
    added_at    timestamptz NOT NULL DEFAULT now()
);

-- A user's bucket, written with the user (the hash lives in the application, see
-- sharding::bucket_of); `migrate` fills it for users created before this column.
-- A move selects its rows by it.
ALTER TABLE users ADD COLUMN bucket integer CHECK (bucket >= 0 AND bucket < 65536);
CREATE INDEX users_by_bucket ON users (bucket);

-- The bucket a routable id (transfer, entry, posting, payment) carries in bytes 10-11
-- (see domain::ids::RoutableId): lets background work on a shard pick only rows of
-- buckets the shard owns.
CREATE FUNCTION id_bucket(id uuid) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT get_byte(uuid_send(id), 10) * 256 + get_byte(uuid_send(id), 11) $$;

-- Instances poll the newest epoch a shard recorded (a cheap index lookup) and read the
-- whole map only when it grew.
CREATE INDEX bucket_owners_by_epoch ON bucket_owners (epoch);
