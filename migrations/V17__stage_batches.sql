-- The stage consumer applies a fetched batch of stages with one statement per shard
-- (src/transfer/tcc/batch.rs): the DirectCredits of a batch whose receivers one shard
-- owns in one call, and the Confirmed answers of a batch whose senders one shard owns
-- in another. One transaction, one commit, and one executor run per table for the
-- whole batch, where a stage by itself costs a transaction of its own (V16).
--
-- Both only ever take the step the TCC state machine (src/transfer/tcc.rs) takes in
-- the common case, and answer per item what they did; an item they did not apply is
-- handled by itself afterwards, by the general path, which decides. Locks are taken in
-- the order the general paths and a move's fence take them, so no batch can deadlock
-- with them: the buckets' claims in bucket order, then the transfers' locks in id
-- order, then the wallets in account order.

-- DirectCredits with nothing recorded of their transfer (`receiver_step`:
-- CreditDirect), as V16's `credit_direct_in_one_call` applies one. Item i is
-- (b[i], t_id[i], ...); the transfer ids are distinct. Answers, per item: 'credited',
-- or why not: 'not_owned', 'recorded' (a barrier or record is there), 'no_wallet'.
CREATE FUNCTION credit_direct_batch(
    b integer[], t_id uuid[], from_user text[], to_user text[], cur text[], amt numeric[], descr text[],
    p_id uuid[], wallet_entry uuid[], transit_entry uuid[], m_payload text[])
RETURNS text[]
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    n integer := cardinality(t_id);
    outcome text[] := array_fill('credited'::text, ARRAY[n]);
    bucket integer;
    claim text;
    id uuid;
    i integer;
BEGIN
    FOR bucket IN SELECT DISTINCT x FROM unnest(b) x ORDER BY 1 LOOP
        SELECT c.state INTO claim FROM claim_bucket(bucket) c;
        IF claim IS DISTINCT FROM 'owned' THEN
            FOR i IN 1..n LOOP
                IF b[i] = bucket THEN outcome[i] := 'not_owned'; END IF;
            END LOOP;
        END IF;
    END LOOP;
    FOR id IN SELECT x.id FROM unnest(t_id, outcome) x(id, o) WHERE x.o = 'credited' ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(id::text, 0));
    END LOOP;
    -- Read after the locks were granted (each statement of a VOLATILE function takes a
    -- snapshot of its own): what another handler committed meanwhile is seen.
    FOR i IN SELECT x.i FROM unnest(t_id, outcome) WITH ORDINALITY x(id, o, i)
             WHERE x.o = 'credited'
               AND (EXISTS (SELECT 1 FROM tcc_barriers t WHERE t.transfer_id = x.id)
                    OR EXISTS (SELECT 1 FROM incoming_transfers t WHERE t.transfer_id = x.id)) LOOP
        outcome[i] := 'recorded';
    END LOOP;
    FOR i IN SELECT x.i FROM unnest(to_user, cur, outcome) WITH ORDINALITY x(u, c, o, i)
             WHERE x.o = 'credited'
               AND (NOT EXISTS (SELECT 1 FROM accounts a WHERE a.user_id = x.u AND a.currency = x.c)
                    OR NOT EXISTS (SELECT 1 FROM accounts a WHERE a.system_name = 'transit' AND a.currency = x.c)) LOOP
        outcome[i] := 'no_wallet';
    END LOOP;
    IF NOT 'credited' = ANY(outcome) THEN
        RETURN outcome;
    END IF;
    PERFORM 1 FROM accounts a
    WHERE (a.user_id, a.currency) IN (SELECT x.u, x.c FROM unnest(to_user, cur, outcome) x(u, c, o) WHERE x.o = 'credited')
    ORDER BY a.account_id FOR UPDATE;
    WITH item AS (
        SELECT x.*, w.account_id AS wallet, tr.account_id AS transit,
               sum(x.amt) OVER (PARTITION BY w.account_id ORDER BY x.i) AS running,
               sum(x.amt) OVER (PARTITION BY w.account_id) AS total
        FROM unnest(t_id, from_user, to_user, cur, amt, descr, p_id, wallet_entry, transit_entry, m_payload, outcome)
             WITH ORDINALITY x(t_id, from_user, to_user, cur, amt, descr, p_id, wallet_entry, transit_entry, payload, o, i)
        JOIN accounts w ON w.user_id = x.to_user AND w.currency = x.cur
        JOIN accounts tr ON tr.system_name = 'transit' AND tr.currency = x.cur
        WHERE x.o = 'credited'
    ), moved AS (
        UPDATE accounts a SET balance = a.balance + s.total, updated_at = now()
        FROM (SELECT DISTINCT wallet, total FROM item) s WHERE a.account_id = s.wallet
        RETURNING a.account_id, a.balance
    ), legs AS (
        -- A wallet's balance after each of its credits, in the batch's order.
        INSERT INTO entries (entry_id, posting_id, account_id, amount, balance_after)
        SELECT l.entry_id, l.p_id, l.account_id, l.amount, l.balance_after FROM (
            SELECT it.i, 0 AS leg, it.wallet_entry AS entry_id, it.p_id, it.wallet AS account_id, it.amt AS amount,
                   m.balance - it.total + it.running AS balance_after
            FROM item it JOIN moved m ON m.account_id = it.wallet
            UNION ALL
            SELECT it.i, 1, it.transit_entry, it.p_id, it.transit, -it.amt, NULL FROM item it
        ) l ORDER BY l.i, l.leg
    ), posting AS (
        INSERT INTO postings (posting_id, kind, reference)
        SELECT it.p_id, 'transfer_credit', it.t_id FROM item it ORDER BY it.i
    ), barrier AS (
        INSERT INTO tcc_barriers (transfer_id, branch) SELECT it.t_id, 'confirm' FROM item it ORDER BY it.i
    ), incoming AS (
        INSERT INTO incoming_transfers (transfer_id, from_user, to_user, currency, amount, description, state)
        SELECT it.t_id, it.from_user, it.to_user, it.cur, it.amt, it.descr, 'confirmed' FROM item it ORDER BY it.i
    )
    INSERT INTO outbox (msg_key, payload) SELECT it.t_id::text, it.payload FROM item it ORDER BY it.i;
    RETURN outcome;
END $$;

-- Confirmed answers for transfers in `confirming` (`sender_step`: Complete), as
-- `tcc::complete_if_confirming` applies one: returns the ids it completed; any other
-- (a bucket not owned here, a transfer unknown, final or in another state) is left to
-- the general path.
CREATE FUNCTION complete_confirmed_batch(b integer[], t_id uuid[])
RETURNS SETOF uuid
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    bucket integer;
    claim text;
    owned integer[] := '{}';
BEGIN
    FOR bucket IN SELECT DISTINCT x FROM unnest(b) x ORDER BY 1 LOOP
        SELECT c.state INTO claim FROM claim_bucket(bucket) c;
        IF claim = 'owned' THEN
            owned := owned || bucket;
        END IF;
    END LOOP;
    -- The rows in id order, so two batches over the same transfers cannot deadlock.
    RETURN QUERY
    WITH locked AS (
        SELECT t.transfer_id FROM transfers t JOIN unnest(t_id, b) x(id, bk) ON t.transfer_id = x.id
        WHERE x.bk = ANY(owned) AND t.state = 'confirming' AND t.route = 'cross_shard'
        ORDER BY t.transfer_id FOR UPDATE OF t
    )
    UPDATE transfers t SET state = 'completed', updated_at = now(), completed_at = now()
    FROM locked l WHERE t.transfer_id = l.transfer_id AND t.state = 'confirming'
    RETURNING t.transfer_id;
END $$;
