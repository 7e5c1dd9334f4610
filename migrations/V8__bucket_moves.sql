-- Bucket moves (see src/resharding/moves.rs for the state machine). The record lives on
-- the target shard, which the move builds; the source's `bucket_owners` row is what
-- flips the authority.
CREATE TABLE bucket_moves (
    bucket      integer PRIMARY KEY CHECK (bucket >= 0 AND bucket < 65536),
    source      text NOT NULL,
    target      text NOT NULL,
    state       text NOT NULL CHECK (state IN ('copying', 'fenced', 'switched', 'cleaned')),
    -- The map epoch of the switch, chosen when the fence begins.
    epoch       bigint,
    rows_copied bigint NOT NULL DEFAULT 0,
    fence_ms    integer,
    started_at  timestamptz NOT NULL DEFAULT now(),
    switched_at timestamptz,
    cleaned_at  timestamptz
);

-- The bucket of the request a key guards (admins' keys cannot be told apart by their
-- caller): a move takes a bucket's keys along, so a retry after it replays.
ALTER TABLE idempotency_keys ADD COLUMN bucket integer;

-- `reshard cleanup` deletes a moved bucket's rows from its old shard, and only it:
-- it sets shardwallet.cleanup for its own transaction. Everything else stays append-only.
CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('shardwallet.cleanup', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the ledger is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME;
END $$;

-- The id of the leg a split posting gets on a `resharding` account (see
-- src/resharding/copy.rs): derived from one of the bucket's legs and the epoch at which
-- the source got the bucket, so that a re-run of an interrupted move writes the same leg
-- again and finds it there, while a later move (the bucket coming back) writes its own.
CREATE FUNCTION resharding_leg_id(id uuid, epoch bigint) RETURNS uuid
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT md5(id::text || '/' || epoch::text)::uuid $$;
