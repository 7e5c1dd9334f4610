-- Transfers. Local ones (both users on this shard) complete in one transaction.
-- Cross-shard ones are orchestrated by the sender's shard with Try/Confirm/Cancel;
-- see src/transfer/tcc.rs for the state machine.
CREATE TABLE transfers (
    transfer_id  uuid PRIMARY KEY,
    from_user    text NOT NULL,
    to_user      text NOT NULL,
    currency     text NOT NULL,
    amount       numeric NOT NULL CHECK (amount > 0 AND amount = trunc(amount)),
    description  text,
    route        text NOT NULL CHECK (route IN ('local', 'cross_shard')),
    state        text NOT NULL CHECK (state IN ('trying', 'confirming', 'completed', 'cancelled')),
    reason       text,
    try_deadline timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);
CREATE INDEX transfers_by_sender ON transfers (from_user, transfer_id DESC);
CREATE INDEX transfers_by_receiver ON transfers (to_user, transfer_id DESC);
CREATE INDEX transfers_in_flight ON transfers (updated_at) WHERE state IN ('trying', 'confirming');

-- Funds reserved on the sender's wallet while a cross-shard transfer is in flight.
CREATE TABLE holds (
    transfer_id uuid PRIMARY KEY REFERENCES transfers (transfer_id),
    account_id  bigint NOT NULL REFERENCES accounts (account_id),
    amount      numeric NOT NULL CHECK (amount > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    released_at timestamptz,
    released_by text CHECK (released_by IN ('confirm', 'cancel'))
);
CREATE INDEX holds_open ON holds (account_id) WHERE released_at IS NULL;

-- The receiver's side of a cross-shard transfer.
CREATE TABLE incoming_transfers (
    transfer_id uuid PRIMARY KEY,
    from_user   text NOT NULL,
    to_user     text NOT NULL,
    currency    text NOT NULL,
    amount      numeric NOT NULL CHECK (amount > 0),
    description text,
    state       text NOT NULL CHECK (state IN ('tried', 'rejected', 'confirmed', 'cancelled')),
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX incoming_by_receiver ON incoming_transfers (to_user, transfer_id DESC);

-- Branch barriers (as DTM's barrier / Seata's fence): one row per stage a receiver has
-- handled, so redelivery, empty rollback (cancel before try) and suspension (try after
-- cancel) are decided by primary keys.
CREATE TABLE tcc_barriers (
    transfer_id uuid NOT NULL,
    branch      text NOT NULL CHECK (branch IN ('try', 'confirm', 'cancel')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (transfer_id, branch)
);

-- Transactional outbox: a state change and its outgoing message commit together; the
-- relay publishes rows to Kafka and deletes them once the broker acknowledged.
CREATE TABLE outbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    msg_key    text NOT NULL,
    payload    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
