-- A same-shard transfer in one call (src/ledger/local.rs, `transfer_in_one_call`): the
-- ownership checks, the wallet locks and the funds check, the posting with its two
-- entries and both balances, the transfer record and the request's Idempotency-Key
-- with its answer, all in the one statement's transaction: one round trip instead of
-- seven (BEGIN, two ownership checks, the locks, the posting, the key, COMMIT), and
-- plans the server caches per session.
--
-- It only ever completes a transfer. Every other outcome, a refusal (funds, wallets),
-- a bucket this shard does not own, or a key already taken (SQLSTATE SW001, which
-- rolls everything back), writes nothing and answers what happened; the caller then
-- takes the general path (one transaction per request, src/api/idempotency.rs), which
-- decides again under its own locks and stores the refusal or replays the key.
--
-- The answer's body is the caller's: every field of a completed same-shard transfer
-- is known before the call (ids, parties, amount, and the time `t_at`, which the
-- transfer records as created, updated and completed).
CREATE FUNCTION transfer_in_one_call(
    from_bucket integer, to_bucket integer,
    t_id uuid, p_id uuid, from_entry uuid, to_entry uuid,
    from_user text, to_user text, cur text, amt numeric, descr text, t_at timestamptz,
    k_caller text, k_key text, k_hash bytea, k_status smallint, k_body bytea, k_bucket integer, k_own boolean)
RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    claim record;
    w record;
    from_account bigint;
    to_account bigint;
    available numeric;
    from_balance numeric;
    to_balance numeric;
BEGIN
    -- Ownership (V10), in bucket order like a fence's locks.
    SELECT c.state INTO claim FROM claim_bucket(least(from_bucket, to_bucket)) c;
    IF claim.state IS DISTINCT FROM 'owned' THEN
        RETURN 'not_owned';
    END IF;
    IF from_bucket <> to_bucket THEN
        SELECT c.state INTO claim FROM claim_bucket(greatest(from_bucket, to_bucket)) c;
        IF claim.state IS DISTINCT FROM 'owned' THEN
            RETURN 'not_owned';
        END IF;
    END IF;
    -- Both wallets locked in account order (as `accounts::lock_wallets` does).
    FOR w IN SELECT a.account_id, a.user_id, a.balance - a.held AS available FROM accounts a
             WHERE a.user_id IN (from_user, to_user) AND a.currency = cur
             ORDER BY a.account_id FOR UPDATE LOOP
        IF w.user_id = from_user THEN
            from_account := w.account_id;
            available := w.available;
        ELSE
            to_account := w.account_id;
        END IF;
    END LOOP;
    IF from_account IS NULL OR to_account IS NULL THEN
        RETURN 'no_wallet';
    END IF;
    IF available < amt THEN
        RETURN 'insufficient_funds';
    END IF;
    UPDATE accounts SET balance = balance - amt, updated_at = now() WHERE account_id = from_account
        RETURNING balance INTO from_balance;
    UPDATE accounts SET balance = balance + amt, updated_at = now() WHERE account_id = to_account
        RETURNING balance INTO to_balance;
    INSERT INTO postings (posting_id, kind, reference, description) VALUES (p_id, 'transfer', t_id, descr);
    INSERT INTO entries (entry_id, posting_id, account_id, amount, balance_after)
        VALUES (from_entry, p_id, from_account, -amt, from_balance), (to_entry, p_id, to_account, amt, to_balance);
    INSERT INTO transfers (transfer_id, from_user, to_user, currency, amount, description, route, state,
                           created_at, updated_at, completed_at)
        VALUES (t_id, from_user, to_user, cur, amt, descr, 'local', 'completed', t_at, t_at, t_at);
    -- As `Idempotency::attempt` stores it: a user's key on their own bucket is found
    -- through the caller (V9).
    INSERT INTO idempotency_keys (caller, key, request_hash, status_code, response_body, bucket)
        VALUES (k_caller, k_key, k_hash, k_status, k_body,
                CASE WHEN k_own AND EXISTS (SELECT 1 FROM users WHERE user_id = k_caller) THEN NULL ELSE k_bucket END)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'idempotency key taken' USING ERRCODE = 'SW001';
    END IF;
    RETURN 'completed';
END $$;
