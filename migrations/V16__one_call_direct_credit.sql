-- A cross-shard transfer's DirectCredit on the receiver's shard in one call
-- (src/transfer/tcc/receiver.rs, `credit_direct_in_one_call`): the bucket's claim, the
-- transfer's lock, the check that the shard has recorded nothing of the transfer, the
-- receiver's wallet lock, the credit from transit with its posting and two entries, the
-- confirm barrier, the incoming record and the Confirmed answer in the outbox, all in
-- the one statement's transaction: one round trip instead of eleven (BEGIN, the claim,
-- the lock and two reads, the wallet lock, the posting, the barrier, the record, the
-- outbox row, COMMIT).
--
-- It only ever takes the one step the TCC state machine (src/transfer/tcc.rs,
-- `receiver_step`) takes for a DirectCredit when nothing is recorded: CreditDirect.
-- Every other case, a bucket this shard does not own, a barrier or record already
-- there (a redelivery, a stray stage), a wallet or transit account missing, writes
-- nothing and says so; the caller then takes the general path (one transaction,
-- `handle_receiver`), which reads the same records under the same lock and decides.
--
-- The writes are exactly those of the general path: `claim_bucket` (V10, V12) records
-- the claimed bucket for the outbox row as `check_write` does, the lock key is the one
-- `read_receiver` takes, and the posting is `posting::post`'s (kind transfer_credit,
-- the wallet's leg then transit's, the wallet's balance after; a system account has no
-- balance).
CREATE FUNCTION credit_direct_in_one_call(
    b integer, t_id uuid, from_user text, to_user text, cur text, amt numeric, descr text,
    p_id uuid, wallet_entry uuid, transit_entry uuid, m_key text, m_payload text)
RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    claim text;
    wallet bigint;
    transit bigint;
    after numeric;
BEGIN
    SELECT c.state INTO claim FROM claim_bucket(b) c;
    IF claim IS DISTINCT FROM 'owned' THEN
        RETURN 'not_owned';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(t_id::text, 0));
    IF EXISTS (SELECT 1 FROM tcc_barriers WHERE transfer_id = t_id)
       OR EXISTS (SELECT 1 FROM incoming_transfers WHERE transfer_id = t_id) THEN
        RETURN 'recorded';
    END IF;
    SELECT a.account_id INTO wallet FROM accounts a WHERE a.user_id = to_user AND a.currency = cur FOR UPDATE;
    SELECT a.account_id INTO transit FROM accounts a WHERE a.system_name = 'transit' AND a.currency = cur;
    IF wallet IS NULL OR transit IS NULL THEN
        RETURN 'no_wallet';
    END IF;
    WITH moved AS (
        UPDATE accounts SET balance = balance + amt, updated_at = now() WHERE account_id = wallet
        RETURNING balance
    ), legs AS (
        INSERT INTO entries (entry_id, posting_id, account_id, amount, balance_after)
        SELECT wallet_entry, p_id, wallet, amt, m.balance FROM moved m
        UNION ALL
        SELECT transit_entry, p_id, transit, -amt, NULL
    ), posting AS (
        INSERT INTO postings (posting_id, kind, reference) VALUES (p_id, 'transfer_credit', t_id)
    ), barrier AS (
        INSERT INTO tcc_barriers (transfer_id, branch) VALUES (t_id, 'confirm')
    ), incoming AS (
        INSERT INTO incoming_transfers (transfer_id, from_user, to_user, currency, amount, description, state)
        VALUES (t_id, from_user, to_user, cur, amt, descr, 'confirmed')
    )
    INSERT INTO outbox (msg_key, payload) VALUES (m_key, m_payload);
    RETURN 'credited';
END $$;

-- The sender's side of a direct cross-shard transfer in one call (src/ledger/holds.rs,
-- `debit_direct_in_one_call`): the bucket's claim, the sender's wallet lock and funds
-- check, the debit to transit with its posting and two entries, the transfer recorded
-- in `confirming`, its DirectCredit in the outbox and the request's Idempotency-Key with
-- its answer: one round trip instead of eight (BEGIN, the claim, the wallet lock, the
-- transfer and posting, the outbox row, the key, COMMIT).
--
-- As V13's same-shard call, it only ever starts the transfer. A refusal (funds, wallet),
-- a bucket this shard does not own, or a key already taken (SQLSTATE SW001, which rolls
-- everything back) writes nothing and says so; the caller then takes the general path
-- (`transfer::start` in the idempotent request's transaction), which decides again under
-- its own locks and stores the refusal or replays the key. The answer's body is the
-- caller's: every field of the new transfer is known before the call, `t_at` included.
CREATE FUNCTION debit_direct_in_one_call(
    b integer, t_id uuid, p_id uuid, wallet_entry uuid, transit_entry uuid,
    from_user text, to_user text, cur text, amt numeric, descr text, t_at timestamptz, t_state text,
    m_key text, m_payload text,
    k_caller text, k_key text, k_hash bytea, k_status smallint, k_body bytea, k_bucket integer, k_own boolean)
RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    claim text;
    wallet bigint;
    available numeric;
    transit bigint;
    stored integer;
BEGIN
    SELECT c.state INTO claim FROM claim_bucket(b) c;
    IF claim IS DISTINCT FROM 'owned' THEN
        RETURN 'not_owned';
    END IF;
    SELECT a.account_id, a.balance - a.held INTO wallet, available FROM accounts a
    WHERE a.user_id = from_user AND a.currency = cur FOR UPDATE;
    SELECT a.account_id INTO transit FROM accounts a WHERE a.system_name = 'transit' AND a.currency = cur;
    IF wallet IS NULL OR transit IS NULL THEN
        RETURN 'no_wallet';
    END IF;
    IF available < amt THEN
        RETURN 'insufficient_funds';
    END IF;
    WITH moved AS (
        UPDATE accounts SET balance = balance - amt, updated_at = now() WHERE account_id = wallet
        RETURNING balance
    ), legs AS (
        INSERT INTO entries (entry_id, posting_id, account_id, amount, balance_after)
        SELECT wallet_entry, p_id, wallet, -amt, m.balance FROM moved m
        UNION ALL
        SELECT transit_entry, p_id, transit, amt, NULL
    ), posting AS (
        INSERT INTO postings (posting_id, kind, reference) VALUES (p_id, 'transfer_debit', t_id)
    ), transfer AS (
        INSERT INTO transfers (transfer_id, from_user, to_user, currency, amount, description, route, state, direct,
                               created_at, updated_at)
        VALUES (t_id, from_user, to_user, cur, amt, descr, 'cross_shard', t_state, true, t_at, t_at)
    ), message AS (
        INSERT INTO outbox (msg_key, payload) VALUES (m_key, m_payload)
    ), answer AS (
        -- As `Idempotency::attempt` stores it: a user's key on their own bucket is found
        -- through the caller (V9).
        INSERT INTO idempotency_keys (caller, key, request_hash, status_code, response_body, bucket)
        VALUES (k_caller, k_key, k_hash, k_status, k_body,
                CASE WHEN k_own AND EXISTS (SELECT 1 FROM users WHERE user_id = k_caller) THEN NULL ELSE k_bucket END)
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT count(*) INTO stored FROM answer;
    IF stored = 0 THEN
        RAISE EXCEPTION 'idempotency key taken' USING ERRCODE = 'SW001';
    END IF;
    RETURN 'debited';
END $$;
