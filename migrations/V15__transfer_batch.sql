-- A batch of same-shard transfers in one statement and one commit (issue: throughput,
-- round two, "a batch API"; `POST /v1/transfers/batch`, `ledger::local::transfer_batch`).
--
-- Item i is what `transfer_in_one_call` (V13/V14) does for one request, with the batch's
-- locks taken once and up front:
-- * every bucket the batch names, its advisory lock in shared mode, in bucket order
--   (as `claim_bucket`), then their ownership read after the grants;
-- * every wallet the batch may write, locked in account order (as
--   `accounts::lock_wallets`), so two batches naming the same wallets in any order
--   cannot deadlock, and the items then run in request order under those locks.
--
-- Outcomes, one per item in order:
-- * 'completed': the transfer, its posting and entries and its Idempotency-Key with
--   `k_bodies[i]` (201) were written;
-- * 'insufficient_funds': nothing but its Idempotency-Key with `refusal` (422) was
--   written, as the single request stores that refusal;
-- * 'not_owned', 'no_wallet', 'same_account', 'key_taken': nothing was written for it;
--   the service then sends the item the general way, which decides and answers (and
--   replays a key stored before).
-- An item's key is inserted before its effect: a key already taken (by an earlier
-- request or an earlier item of this batch) leaves nothing of the item behind, without
-- a subtransaction per item.
CREATE FUNCTION transfer_batch(
    from_buckets integer[], to_buckets integer[],
    t_ids uuid[], p_ids uuid[], from_entries uuid[], to_entries uuid[],
    from_users text[], to_users text[], curs text[], amts numeric[], descrs text[], t_at timestamptz,
    k_caller text, k_keys text[], k_hashes bytea[], k_bodies bytea[], k_owns boolean[], refusal bytea)
RETURNS text[]
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    outcomes text[] := '{}';
    owned integer[];
    caller_known boolean;
    w record;
    from_account bigint;
    to_account bigint;
    available numeric;
    short boolean;
    stored integer;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1398227540, s.b)
    FROM (SELECT DISTINCT x AS b FROM unnest(from_buckets || to_buckets) AS x ORDER BY 1) s;
    SELECT coalesce(array_agg(o.bucket), '{}') INTO owned FROM bucket_owners o
    WHERE o.bucket = ANY (from_buckets || to_buckets) AND o.state = 'owned';
    PERFORM 1 FROM accounts a
    WHERE a.user_id = ANY (from_users || to_users) AND a.currency = ANY (curs)
    ORDER BY a.account_id FOR UPDATE;
    caller_known := EXISTS (SELECT 1 FROM users WHERE user_id = k_caller);
    FOR i IN 1 .. coalesce(array_length(t_ids, 1), 0) LOOP
        IF from_users[i] = to_users[i] THEN
            outcomes := outcomes || 'same_account'::text;
            CONTINUE;
        END IF;
        IF NOT (from_buckets[i] = ANY (owned) AND to_buckets[i] = ANY (owned)) THEN
            outcomes := outcomes || 'not_owned'::text;
            CONTINUE;
        END IF;
        from_account := NULL;
        to_account := NULL;
        FOR w IN SELECT a.account_id, a.user_id, a.balance - a.held AS available FROM accounts a
                 WHERE a.user_id IN (from_users[i], to_users[i]) AND a.currency = curs[i] LOOP
            IF w.user_id = from_users[i] THEN
                from_account := w.account_id;
                available := w.available;
            ELSE
                to_account := w.account_id;
            END IF;
        END LOOP;
        IF from_account IS NULL OR to_account IS NULL THEN
            outcomes := outcomes || 'no_wallet'::text;
            CONTINUE;
        END IF;
        short := available < amts[i];
        -- As `Idempotency::attempt` stores it: a user's key on their own bucket is found
        -- through the caller (V9).
        INSERT INTO idempotency_keys (caller, key, request_hash, status_code, response_body, bucket)
        VALUES (k_caller, k_keys[i], k_hashes[i], CASE WHEN short THEN 422 ELSE 201 END,
                CASE WHEN short THEN refusal ELSE k_bodies[i] END,
                CASE WHEN k_owns[i] AND caller_known THEN NULL ELSE from_buckets[i] END)
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS stored = ROW_COUNT;
        IF stored = 0 THEN
            outcomes := outcomes || 'key_taken'::text;
            CONTINUE;
        END IF;
        IF short THEN
            outcomes := outcomes || 'insufficient_funds'::text;
            CONTINUE;
        END IF;
        WITH moved AS (
            UPDATE accounts a
            SET balance = a.balance + CASE WHEN a.account_id = from_account THEN -amts[i] ELSE amts[i] END,
                updated_at = now()
            WHERE a.account_id IN (from_account, to_account)
            RETURNING a.account_id, a.balance
        ), legs AS (
            INSERT INTO entries (entry_id, posting_id, account_id, amount, balance_after)
            SELECT CASE WHEN m.account_id = from_account THEN from_entries[i] ELSE to_entries[i] END, p_ids[i],
                   m.account_id, CASE WHEN m.account_id = from_account THEN -amts[i] ELSE amts[i] END, m.balance
            FROM moved m ORDER BY m.account_id = from_account DESC
        ), posting AS (
            INSERT INTO postings (posting_id, kind, reference, description)
            VALUES (p_ids[i], 'transfer', t_ids[i], descrs[i])
        )
        INSERT INTO transfers (transfer_id, from_user, to_user, currency, amount, description, route, state,
                               created_at, updated_at, completed_at)
        VALUES (t_ids[i], from_users[i], to_users[i], curs[i], amts[i], descrs[i], 'local', 'completed',
                t_at, t_at, t_at);
        outcomes := outcomes || 'completed'::text;
    END LOOP;
    RETURN outcomes;
END $$;
