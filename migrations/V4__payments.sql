-- Deposits and withdrawals through payment gateways (issue #7). The state machine is
-- src/payments/state.rs; the ledger legs are src/payments/ledger.rs.

-- Payment postings move money between a wallet and a gateway's clearing account
-- (system_name 'clearing:<gateway>').
ALTER TABLE postings DROP CONSTRAINT IF EXISTS postings_kind_check;
ALTER TABLE postings ADD CONSTRAINT postings_kind_check CHECK (kind IN
    ('adjustment', 'transfer', 'transfer_debit', 'transfer_credit', 'reversal', 'deposit', 'withdrawal'));

-- One row per deposit or withdrawal, on the user's shard. `state` is the internal
-- state (created: not yet accepted by the gateway; submitted: the gateway has it);
-- the API shows created and submitted as `pending`.
CREATE TABLE payments (
    payment_id        uuid PRIMARY KEY,
    kind              text NOT NULL CHECK (kind IN ('deposit', 'withdrawal')),
    user_id           text NOT NULL REFERENCES users (user_id),
    currency          text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount            numeric NOT NULL CHECK (amount > 0 AND amount = trunc(amount)),
    gateway           text NOT NULL,
    state             text NOT NULL CHECK (state IN ('created', 'submitted', 'succeeded', 'failed')),
    reason            text,
    gateway_reference text,
    -- Masked for display; the full number only encrypted (AES-GCM, nonce || ciphertext)
    -- and only until the gateway has accepted the request.
    method_type       text NOT NULL CHECK (method_type IN ('card', 'iban')),
    method_last4      text NOT NULL,
    method_sealed     bytea,
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    deadline          timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz,
    CONSTRAINT final_payment_has_no_secret CHECK (state IN ('created', 'submitted') OR method_sealed IS NULL)
);
CREATE INDEX payments_by_user ON payments (user_id, payment_id DESC);
CREATE INDEX payments_in_flight ON payments (next_attempt_at) WHERE state IN ('created', 'submitted');

-- Funds reserved on the wallet while a withdrawal is in flight; `accounts.held`
-- includes them (the same mechanism as cross-shard transfer holds).
CREATE TABLE payment_holds (
    payment_id  uuid PRIMARY KEY REFERENCES payments (payment_id),
    account_id  bigint NOT NULL REFERENCES accounts (account_id),
    amount      numeric NOT NULL CHECK (amount > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz,
    released_by text CHECK (released_by IN ('succeeded', 'failed'))
);
CREATE INDEX payment_holds_open ON payment_holds (account_id) WHERE released_at IS NULL;

-- Every verified gateway callback, once per gateway event id. `applied` is false for
-- duplicates in substance (already final, same outcome) and for contradictions, which
-- carry a note for operators.
CREATE TABLE payment_events (
    gateway     text NOT NULL,
    event_id    text NOT NULL,
    payment_id  uuid NOT NULL,
    outcome     text NOT NULL,
    applied     boolean NOT NULL,
    note        text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, event_id)
);
CREATE INDEX payment_events_by_payment ON payment_events (payment_id);

-- Outbox of the payments topic (kept apart from the transfer outbox and its relay).
CREATE TABLE payment_outbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    msg_key    text NOT NULL,
    payload    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
