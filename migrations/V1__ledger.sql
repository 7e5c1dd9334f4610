-- The ledger of one shard. Amounts are NUMERIC with scale 0 (exact, unbounded);
-- the API limits a single amount to 36 digits.

-- Which part of the shard map this database is: written by `shardwallet migrate`,
-- checked by `shardwallet serve`.
CREATE TABLE shard_identity (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    shard_name      text NOT NULL,
    map_fingerprint text NOT NULL,
    buckets         integer NOT NULL,
    owned_ranges    text NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    user_id    text PRIMARY KEY CHECK (user_id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Wallets (user_id set) and system accounts (system_name set: 'adjustments',
-- 'transit', ...). Wallets keep a balance snapshot updated with their entries in the
-- same transaction; system accounts keep none (balance NULL): they are touched by every
-- posting of their kind, and a snapshot there would serialise all of them on one row.
CREATE TABLE accounts (
    account_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     text REFERENCES users (user_id),
    system_name text,
    currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    balance     numeric CHECK (balance = trunc(balance)),
    held        numeric NOT NULL DEFAULT 0 CHECK (held = trunc(held)),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT account_is_wallet_or_system CHECK ((user_id IS NULL) <> (system_name IS NULL)),
    CONSTRAINT wallet_has_balance CHECK ((user_id IS NULL) = (balance IS NULL)),
    CONSTRAINT wallet_balance_not_negative CHECK (balance >= 0),
    CONSTRAINT wallet_held_within_balance CHECK (held >= 0 AND (balance IS NULL OR held <= balance)),
    CONSTRAINT system_account_holds_nothing CHECK (user_id IS NOT NULL OR held = 0),
    UNIQUE (user_id, currency),
    UNIQUE (system_name, currency)
);

-- A posting is one balanced movement; its entries sum to zero.
CREATE TABLE postings (
    posting_id  uuid PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('adjustment', 'transfer', 'transfer_debit', 'transfer_credit', 'reversal')),
    reference   uuid,
    reverses    uuid UNIQUE REFERENCES postings (posting_id),
    description text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE entries (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id      uuid NOT NULL UNIQUE,
    posting_id    uuid NOT NULL REFERENCES postings (posting_id),
    account_id    bigint NOT NULL REFERENCES accounts (account_id),
    amount        numeric NOT NULL CHECK (amount <> 0 AND amount = trunc(amount)),
    balance_after numeric,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX entries_by_account ON entries (account_id, seq DESC);
CREATE INDEX entries_by_posting ON entries (posting_id);

-- The ledger is append-only.
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME;
END $$;
CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

-- Idempotency keys, stored in the same transaction as the effect they guard.
CREATE TABLE idempotency_keys (
    caller        text NOT NULL,
    key           text NOT NULL,
    request_hash  bytea NOT NULL,
    status_code   smallint NOT NULL,
    response_body bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
