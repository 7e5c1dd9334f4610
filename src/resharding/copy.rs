//! Copying buckets' rows from their source shard to their target, checking the copy,
//! and splitting the postings its users share with users who stay behind.
//!
//! Everything of a bucket is found from its users (`users.bucket`): their wallets, the
//! postings with a leg on one of those wallets, transfers they sent or received,
//! holds, incoming transfers and their barriers, payments with their holds and gateway
//! events, and the idempotency keys of requests on the bucket. Rows travel as JSON
//! (`to_jsonb` on the source, `jsonb_populate_recordset` on the target), so the copy
//! follows the schema without a column list per table; account ids, which each shard
//! numbers itself, are mapped by (user, currency) and (system name, currency).
//!
//! A posting is *whole* when all its legs are on the bucket's wallets or on system
//! accounts (a deposit, a cross-shard leg, a same-bucket transfer): it moves with all
//! its legs, system legs landing on the target's accounts of the same name. It is
//! *split* when it also has a leg elsewhere (a same-shard transfer with a user of
//! another bucket): the target gets the bucket's legs plus one leg on its `resharding`
//! account balancing them, and the source, when cleanup deletes the legs that left, one
//! leg on its own `resharding` account standing for them (`cleanup::write_standins`). Every shard's postings still
//! sum to zero, and so do the `resharding` accounts over the cluster.
use deadpool_postgres::GenericClient;
use tokio_postgres::{types::Json, Statement};

use crate::storage::cached::Cached;

/// The bucket's rows on the source, as JSON arrays, one per table.
#[derive(Default)]
pub struct Snapshot {
    tables: Vec<(&'static Table, serde_json::Value)>,
    pub rows: u64,
}

/// How one table's rows are read on the source and written on the target.
struct Table {
    name: &'static str,
    read: &'static str,
    write: Write,
}

enum Write {
    /// `INSERT ... SELECT * FROM jsonb_populate_recordset`, keeping what is there.
    Keep(&'static str),
    /// The same, replacing every column of a row already there (state that moves on).
    Replace(&'static str),
    /// A statement of its own (account ids to map).
    Sql(&'static str),
}

macro_rules! of_users {
    ($($sql:tt)+) => {
        concat!("WITH u AS (SELECT user_id FROM users WHERE bucket = ANY($1)) ", $($sql)+)
    };
}

/// `u` and `bp`: the postings with a leg on one of the bucket's wallets. Each wallet's
/// and each posting's entries are read by index (`LATERAL ... OFFSET 0` keeps the
/// planner from turning them into a join): entries per account are skewed (system
/// accounts hold most of them), and the planner's average made it scan all entries
/// for a few wallets' postings (0.3 s inside a fence).
macro_rules! of_postings {
    ($($sql:tt)+) => {
        of_users!(
            ", bp AS MATERIALIZED (SELECT DISTINCT e.posting_id FROM accounts a JOIN u USING (user_id),
                 LATERAL (SELECT posting_id FROM entries e WHERE e.account_id = a.account_id/*after-floor*/ OFFSET 0) e) ",
            $($sql)+
        )
    };
}

static TABLES: &[Table] = &[
    Table {
        name: "users",
        read: "SELECT coalesce(jsonb_agg(to_jsonb(x)), '[]') FROM users x WHERE bucket = ANY($1)/*changed:x*/",
        write: Write::Keep("user_id"),
    },
    Table {
        name: "wallets",
        read: of_users!(
            "SELECT coalesce(jsonb_agg(to_jsonb(a) - 'account_id'), '[]') FROM accounts a JOIN u USING (user_id)
             WHERE true/*changed:a*/"
        ),
        write: Write::Sql(
            "INSERT INTO accounts (system_name, currency)
             SELECT s, x.currency FROM jsonb_to_recordset($1) AS x(currency text),
                  unnest(ARRAY['adjustments', 'transit', 'resharding']) AS s
             ON CONFLICT DO NOTHING;
             INSERT INTO accounts (user_id, currency, balance, held, created_at, updated_at)
             SELECT user_id, currency, balance, held, created_at, updated_at
             FROM jsonb_populate_recordset(NULL::accounts, $1)
             ON CONFLICT (user_id, currency) DO UPDATE
                 SET balance = EXCLUDED.balance, held = EXCLUDED.held, updated_at = EXCLUDED.updated_at",
        ),
    },
    Table {
        name: "postings",
        read: of_postings!(
            "SELECT coalesce(jsonb_agg(to_jsonb(p) ORDER BY p.created_at, p.posting_id), '[]')
             FROM bp, LATERAL (SELECT * FROM postings p WHERE p.posting_id = bp.posting_id/*changed:p*/ OFFSET 0) p"
        ),
        write: Write::Keep("posting_id"),
    },
    Table {
        name: "entries",
        // Each leg with what the target needs to place it: whose wallet (and whether it
        // moves), or which system account; and whether its posting is whole.
        read: of_postings!(
            "SELECT coalesce(jsonb_agg(jsonb_build_object(
                 'entry_id', e.entry_id, 'posting_id', e.posting_id, 'amount', e.amount,
                 'balance_after', e.balance_after, 'created_at', e.created_at,
                 'user_id', a.user_id, 'system_name', a.system_name, 'currency', a.currency,
                 'moving', a.user_id IS NOT NULL AND a.user_id IN (SELECT user_id FROM u),
                 'epoch', CASE WHEN b.state = 'moved' THEN coalesce(b.owned_since_epoch, b.epoch) ELSE b.epoch END)
                 ORDER BY e.seq), '[]')
             FROM bp/*changed-posting*/, LATERAL (SELECT * FROM entries e WHERE e.posting_id = bp.posting_id OFFSET 0) e
                  JOIN accounts a USING (account_id)
                  LEFT JOIN users w ON w.user_id = a.user_id AND w.user_id IN (SELECT user_id FROM u)
                  LEFT JOIN bucket_owners b ON b.bucket = w.bucket"
        ),
        write: Write::Sql(
            "INSERT INTO accounts (system_name, currency)
             SELECT DISTINCT x.system_name, x.currency FROM jsonb_to_recordset($1) AS x(system_name text, currency text)
             WHERE x.system_name IS NOT NULL
             ON CONFLICT DO NOTHING;
             WITH x AS (
                 SELECT x.*, bool_and(x.moving OR (x.system_name IS NOT NULL AND x.system_name <> 'resharding'))
                        OVER (PARTITION BY x.posting_id) AS whole
                 FROM jsonb_to_recordset($1) AS x(entry_id uuid, posting_id uuid, amount numeric, balance_after numeric,
                      created_at timestamptz, user_id text, system_name text, currency text, moving boolean,
                      epoch bigint)),
             legs AS (
                 SELECT entry_id, posting_id, amount, balance_after, created_at, user_id, system_name, currency
                 FROM x WHERE moving OR whole
                 UNION ALL
                 SELECT resharding_leg_id(min(entry_id::text)::uuid, max(epoch)), posting_id, -sum(amount), NULL, min(created_at),
                        NULL, 'resharding', min(currency)
                 FROM x WHERE moving AND NOT whole GROUP BY posting_id
                 -- legs of two moving users that cancel need no stand-in
                 HAVING sum(amount) <> 0)
             INSERT INTO entries (entry_id, posting_id, account_id, amount, balance_after, created_at)
             SELECT l.entry_id, l.posting_id, a.account_id, l.amount, l.balance_after, l.created_at
             FROM legs l JOIN accounts a
               ON a.currency = l.currency
              AND (a.user_id = l.user_id OR (l.user_id IS NULL AND a.system_name = l.system_name))
             ORDER BY l.created_at, l.entry_id
             ON CONFLICT (entry_id) DO NOTHING",
        ),
    },
    Table {
        name: "transfers",
        read: of_users!(
            // Two index scans (by sender, by receiver) rather than one scan of an OR.
            "SELECT coalesce(jsonb_agg(to_jsonb(t)), '[]') FROM (
                 SELECT t1.* FROM transfers t1 JOIN u ON u.user_id = t1.from_user WHERE true/*changed:t1*/
                 UNION ALL
                 SELECT t2.* FROM transfers t2 JOIN u ON u.user_id = t2.to_user
                 WHERE t2.route = 'local' AND t2.from_user NOT IN (SELECT user_id FROM u)/*changed:t2*/) t"
        ),
        write: Write::Replace("transfer_id"),
    },
    Table {
        name: "holds",
        read: of_users!(
            "SELECT coalesce(jsonb_agg(to_jsonb(h) - 'account_id' || jsonb_build_object('user_id', a.user_id, 'currency', a.currency)), '[]')
             FROM holds h JOIN accounts a USING (account_id) JOIN u USING (user_id) WHERE true/*changed:h*/"
        ),
        write: Write::Sql(
            "INSERT INTO holds (transfer_id, account_id, amount, created_at, expires_at, released_at, released_by)
             SELECT x.transfer_id, a.account_id, x.amount, x.created_at, x.expires_at, x.released_at, x.released_by
             FROM jsonb_to_recordset($1) AS x(transfer_id uuid, user_id text, currency text, amount numeric,
                  created_at timestamptz, expires_at timestamptz, released_at timestamptz, released_by text)
             JOIN accounts a ON a.user_id = x.user_id AND a.currency = x.currency
             ON CONFLICT (transfer_id) DO UPDATE SET released_at = EXCLUDED.released_at, released_by = EXCLUDED.released_by",
        ),
    },
    Table {
        name: "incoming_transfers",
        read: of_users!(
            "SELECT coalesce(jsonb_agg(to_jsonb(i)), '[]') FROM incoming_transfers i JOIN u ON u.user_id = i.to_user
             WHERE true/*changed:i*/"
        ),
        write: Write::Replace("transfer_id"),
    },
    Table {
        name: "tcc_barriers",
        read: of_users!(
            "SELECT coalesce(jsonb_agg(to_jsonb(b)), '[]') FROM tcc_barriers b
             WHERE b.transfer_id IN (SELECT transfer_id FROM incoming_transfers i JOIN u ON u.user_id = i.to_user)
             /*changed:b*/"
        ),
        write: Write::Keep("transfer_id, branch"),
    },
    Table {
        name: "idempotency_keys",
        read: of_users!(
            // A user's keys on their own bucket by the caller, the others by bucket (V9).
            "SELECT coalesce(jsonb_agg(to_jsonb(k)), '[]') FROM (
                 SELECT k1.* FROM idempotency_keys k1 WHERE k1.bucket = ANY($1)/*changed:k1*/
                 UNION ALL
                 SELECT k2.* FROM idempotency_keys k2 JOIN u ON u.user_id = k2.caller
                 WHERE k2.bucket IS NULL/*changed:k2*/) k"
        ),
        write: Write::Keep("caller, key"),
    },
    Table {
        name: "payments",
        read: of_users!(
            "SELECT coalesce(jsonb_agg(to_jsonb(p)), '[]') FROM payments p JOIN u USING (user_id) WHERE true/*changed:p*/"
        ),
        write: Write::Replace("payment_id"),
    },
    Table {
        name: "payment_holds",
        read: of_users!(
            "SELECT coalesce(jsonb_agg(to_jsonb(h) - 'account_id' || jsonb_build_object('user_id', a.user_id, 'currency', a.currency)), '[]')
             FROM payment_holds h JOIN accounts a USING (account_id) JOIN u USING (user_id) WHERE true/*changed:h*/"
        ),
        write: Write::Sql(
            "INSERT INTO payment_holds (payment_id, account_id, amount, created_at, released_at, released_by)
             SELECT x.payment_id, a.account_id, x.amount, x.created_at, x.released_at, x.released_by
             FROM jsonb_to_recordset($1) AS x(payment_id uuid, user_id text, currency text, amount numeric,
                  created_at timestamptz, released_at timestamptz, released_by text)
             JOIN accounts a ON a.user_id = x.user_id AND a.currency = x.currency
             ON CONFLICT (payment_id) DO UPDATE SET released_at = EXCLUDED.released_at, released_by = EXCLUDED.released_by",
        ),
    },
    Table {
        name: "payment_events",
        read: of_users!(
            "SELECT coalesce(jsonb_agg(to_jsonb(ev)), '[]') FROM payment_events ev
             WHERE ev.payment_id IN (SELECT payment_id FROM payments p JOIN u USING (user_id))/*changed:ev*/"
        ),
        write: Write::Keep("gateway, event_id"),
    },
];

/// The tables a fence reads on its second connection to the source (`read_on`): the
/// keys (a scan of each user's whole history, filtered by `xmin` row by row) and the
/// small tables; `transfers`, as long to read as the keys, stays on the first with the
/// ledger's tables, so the two lanes take about as long.
const SECOND_LANE: &[&str] = &["idempotency_keys", "tcc_barriers", "payments", "payment_holds", "payment_events"];

/// Reads every row of `buckets` on the source (`since: None`), or only the rows written
/// since the snapshot `since` describes: a superset of what changed after it. Run inside the fence, after the
/// buckets' rows are locked: every write to them has committed, and none can begin.
pub async fn read(
    source: &impl GenericClient,
    buckets: &[u32],
    since: Option<&Since>,
) -> Result<Snapshot, tokio_postgres::Error> {
    read_on(&[source], buckets, since).await
}

/// `read` over one or two connections to the source, both at once (a fence's reads
/// are one server's work, and two backends get two cores). Inside a fence a second
/// connection in READ COMMITTED sees what the fence's own does: every write to the
/// buckets committed before their locks were granted, and none can begin.
pub async fn read_on<C: GenericClient>(
    sources: &[&C],
    buckets: &[u32],
    since: Option<&Since>,
) -> Result<Snapshot, tokio_postgres::Error> {
    let bucket = as_param(buckets);
    let lane = |table: &Table| usize::from(sources.len() > 1 && SECOND_LANE.contains(&table.name));
    let sqls: Vec<String> = TABLES.iter().map(|table| with_changed(table.read, since.is_some())).collect();
    // One statement per table, pipelined: one round trip for all (the fence waits for
    // each round trip, and under load a round trip is a scheduling delay).
    // Cached on the connection: a fence's reads are parsed once per connection, not once
    // per fence (a Parse of twelve statements is a round trip and CPU on a busy server).
    let statements = futures::future::try_join_all(
        TABLES.iter().zip(&sqls).map(|(table, sql)| sources[lane(table)].prepare_cached(sql)),
    )
    .await?;
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = match since {
        Some(since) => vec![&bucket, &since.xid, &since.floors],
        None => vec![&bucket],
    };
    // Each read names only the parameters it uses.
    let results = futures::future::try_join_all(
        TABLES
            .iter()
            .zip(&statements)
            .map(|(table, statement)| sources[lane(table)].query_one(statement, &params[..statement.params().len()])),
    )
    .await?;
    let mut snapshot = Snapshot::default();
    for (table, row) in TABLES.iter().zip(results) {
        let rows: serde_json::Value = row.get(0);
        snapshot.rows += rows.as_array().map_or(0, |a| a.len() as u64);
        snapshot.tables.push((table, rows));
    }
    Ok(snapshot)
}

/// What a catch-up needs of the snapshot the copy was read in (`since`).
pub struct Since {
    /// The oldest transaction still running in the snapshot (as the 32-bit xid that
    /// rows carry in `xmin`): a row with an older `xmin` was written before the
    /// snapshot and is in it; one written after has a newer `xmin` (an update writes a
    /// new row version).
    xid: i64,
    /// Each of the buckets' wallets' newest entry (`seq`) in the snapshot, by account id.
    /// A wallet's entries are written under its row lock (a posting updates the balance
    /// of every wallet it has a leg on, in the statement that inserts the legs), so an
    /// entry the snapshot did not see has a higher `seq` than every entry it saw on that
    /// wallet: the catch-up finds the new postings by index from there, instead of
    /// looking at every posting of the buckets. (Were that ever not so, the fence's
    /// digests would differ and the fence would copy in full.)
    floors: Json<serde_json::Value>,
}

/// `Since` of a snapshot transaction, for the buckets' rows it read.
pub async fn since(snapshot_tx: &impl GenericClient, buckets: &[u32]) -> Result<Since, tokio_postgres::Error> {
    let row = snapshot_tx
        .query_one(
            of_users!(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint % 4294967296,
                        (SELECT coalesce(jsonb_object_agg(a.account_id::text,
                                    (SELECT max(e.seq) FROM entries e WHERE e.account_id = a.account_id)), '{}')
                         FROM accounts a JOIN u USING (user_id))"
            ),
            &[&as_param(buckets)],
        )
        .await?;
    Ok(Since { xid: row.get(0), floors: Json(row.get(1)) })
}

/// Fills the `/*changed:ALIAS*/` marks of a read: nothing (every row), or a condition on
/// the row's `xmin` (wraparound-safe within 2^31 transactions).
fn with_changed(sql: &str, delta: bool) -> String {
    let changed =
        |alias: &str| format!(" AND ((({alias}.xmin::text::bigint) - $2 + 4294967296) % 4294967296) < 2147483648");
    let mut out = sql.to_string();
    if delta {
        // Entries come with their posting (a posting's legs are written together).
        // Only the postings written since (their legs come with them): each looked up
        // by its key before its legs are read.
        let posting = format!(
            ", LATERAL (SELECT 1 FROM postings p WHERE p.posting_id = bp.posting_id{} OFFSET 0) changed",
            changed("p")
        );
        out = out.replace("/*changed-posting*/", &posting);
        out = out.replace("/*after-floor*/", " AND e.seq > coalesce(($3::jsonb ->> a.account_id::text)::bigint, 0)");
    } else {
        out = out.replace("/*changed-posting*/", "").replace("/*after-floor*/", "");
    }
    while let Some(start) = out.find("/*changed:") {
        let end = out[start..].find("*/").map_or(out.len(), |e| start + e + 2);
        let alias = out[start + "/*changed:".len()..end - 2].to_string();
        let condition = if delta { changed(&alias) } else { String::new() };
        out.replace_range(start..end, &condition);
    }
    out
}

/// The columns of the tables whose rows a copy replaces (state that moves on), read
/// once per mover run: a catch-up's write then needs no catalog query, which inside a
/// fence was a round trip of its own.
#[derive(Debug, Default)]
pub struct Columns(std::collections::HashMap<String, Vec<String>>);

impl Columns {
    pub async fn of(client: &impl GenericClient) -> Result<Self, tokio_postgres::Error> {
        let tables: Vec<&str> =
            TABLES.iter().filter(|t| matches!(t.write, Write::Replace(_))).map(|t| t.name).collect();
        let rows = client
            .cached_query(
                "SELECT c.relname::text, array_agg(a.attname::text ORDER BY a.attnum)
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                 WHERE c.relname = ANY($1) AND c.relnamespace = current_schema()::regnamespace
                   AND a.attnum > 0 AND NOT a.attisdropped
                 GROUP BY c.relname",
                &[&tables],
            )
            .await?;
        Ok(Self(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
    }
}

/// A snapshot's writes, prepared on the target's connection and not yet sent.
pub struct Prepared<'a> {
    statements: Vec<(Statement, &'a serde_json::Value)>,
    rows: u64,
}

/// Prepares the writes of `snapshot` (from the connection's statement cache: no round
/// trip once a fence has written the same tables on it).
pub async fn prepare_write<'a>(
    target: &impl GenericClient,
    snapshot: &'a Snapshot,
    columns: &Columns,
) -> Result<Prepared<'a>, tokio_postgres::Error> {
    let mut sqls: Vec<(String, &serde_json::Value)> = Vec::new();
    for (table, rows) in snapshot.tables.iter().filter(|(_, rows)| !rows.as_array().is_some_and(|a| a.is_empty())) {
        match &table.write {
            Write::Keep(key) => sqls.push((
                format!(
                    "INSERT INTO {0} SELECT * FROM jsonb_populate_recordset(NULL::{0}, $1) ON CONFLICT ({key}) DO NOTHING",
                    table.name
                ),
                rows,
            )),
            Write::Replace(key) => {
                let columns = columns.0.get(table.name).map(Vec::as_slice).unwrap_or_default();
                sqls.push((
                    format!(
                        "INSERT INTO {0} SELECT * FROM jsonb_populate_recordset(NULL::{0}, $1)
                         ON CONFLICT ({key}) DO UPDATE SET ({cols}) = ROW({excluded})",
                        table.name,
                        cols = columns.join(", "),
                        excluded = columns.iter().map(|c| format!("EXCLUDED.{c}")).collect::<Vec<_>>().join(", "),
                    ),
                    rows,
                ))
            }
            Write::Sql(sql) => sqls.extend(sql.split(";\n").map(|statement| (statement.to_string(), rows))),
        }
    }
    let statements = futures::future::try_join_all(sqls.iter().map(|(sql, _)| target.prepare_cached(sql))).await?;
    Ok(Prepared {
        statements: statements.into_iter().zip(sqls.into_iter().map(|(_, rows)| rows)).collect(),
        rows: snapshot.rows,
    })
}

impl Prepared<'_> {
    /// Sends the writes, in table order, all on this future's first poll
    /// (tokio-postgres queues a request when it is first polled, and the server runs a
    /// connection's requests in the order they arrive): statements polled after it on
    /// the same connection run after the writes and see them, in the same round trip.
    /// Returns the rows sent.
    pub async fn send(self, target: &impl GenericClient) -> Result<u64, tokio_postgres::Error> {
        futures::future::try_join_all(
            self.statements
                .iter()
                .map(|(statement, rows)| async move { target.execute(statement, &[&Json(*rows)]).await }),
        )
        .await?;
        Ok(self.rows)
    }
}

/// Writes the snapshot on the target, over whatever an earlier, interrupted run left
/// (every write is an upsert). Returns the rows sent.
pub async fn write(
    target: &impl GenericClient,
    snapshot: &Snapshot,
    columns: &Columns,
) -> Result<u64, tokio_postgres::Error> {
    prepare_write(target, snapshot, columns).await?.send(target).await
}

/// The target's tables a copy writes, for `ANALYZE`.
pub const WRITTEN_TABLES: &str = "users, accounts, postings, entries, transfers, holds, incoming_transfers, \
     tcc_barriers, idempotency_keys, payments, payment_holds, payment_events";

/// Refreshes the statistics of the tables a copy writes or a cleanup deletes from,
/// from a small sample (3,000 rows a table instead of 30,000): the plans the mover
/// needs only have to know how large the tables are and that a bucket's rows are few,
/// and a full `ANALYZE` took up to 1.7 s of a busy server's CPU. Autovacuum's next
/// `ANALYZE` brings the full statistics back.
pub fn quick_analyze() -> String {
    format!("BEGIN; SET LOCAL default_statistics_target = 10; ANALYZE {WRITTEN_TABLES}; COMMIT")
}

/// For the mover's transactions: the planner's default cost of a random page read
/// (4, for spinning disks) makes it scan whole tables for a few users' rows; a bucket's
/// rows are found by index. Set per transaction.
pub const PLANNER: &str = "SET LOCAL random_page_cost = 1.1";

/// `$1`'s buckets' users (`u`) and wallets (`w`): the sets a fence's key lookups and
/// hashes are taken over, and the first of `digest_sets`.
macro_rules! of_wallets {
    ($($sql:tt)+) => {
        concat!(
            "WITH u AS (SELECT user_id FROM users WHERE bucket = ANY($1)),
                  w AS (SELECT a.* FROM accounts a JOIN u USING (user_id))",
            $($sql)+
        )
    };
}

/// The sets a digest is taken over, for `$1`'s buckets: their users (`u`), wallets
/// (`w`), transfers (`t`: sent, and same-shard ones received from another bucket),
/// incoming transfers (`i`) and payments (`p`).
macro_rules! digest_sets {
    ($($sql:tt)+) => {
        of_wallets!(
            ",
                  t AS (SELECT t1.* FROM transfers t1 JOIN u ON u.user_id = t1.from_user
                        UNION ALL
                        SELECT t2.* FROM transfers t2 JOIN u ON u.user_id = t2.to_user
                        WHERE t2.route = 'local' AND t2.from_user NOT IN (SELECT user_id FROM u)),
                  i AS (SELECT * FROM incoming_transfers WHERE to_user IN (SELECT user_id FROM u)),
                  p AS (SELECT * FROM payments WHERE user_id IN (SELECT user_id FROM u)) ",
            $($sql)+
        )
    };
}

/// `digest_sets`, the users counted and every wallet hashed, then the digest's other parts.
macro_rules! digest_of {
    ($parts:literal) => {
        digest_sets!(
            "SELECT ARRAY[
                 (SELECT count(*) FROM u)::text,
                 (SELECT count(*) || ' ' || coalesce(sum(hashtextextended(user_id || ' ' || currency || ' ' || balance || ' ' || held, 0)), 0) FROM w),",
            $parts
        )
    };
}

/// What both sides must agree on before the switch: row counts per table, each wallet's
/// balance and held, and digests of the entries, transfers and payments. A digest is the
/// sum of a 64-bit hash of each row's fields: independent of order, so neither side
/// sorts or builds a string of the whole history. The same SQL runs on source and target.
pub async fn digest(client: &impl GenericClient, buckets: &[u32]) -> Result<Vec<String>, tokio_postgres::Error> {
    let bucket = as_param(buckets);
    let row = client
        .cached_query_one(
            digest_of!("
                 (SELECT count(*) || ' ' || coalesce(sum(hashtextextended(e.entry_id || ' ' || e.amount || ' ' || coalesce(e.balance_after::text, '-'), 0)), 0)
                    FROM w, LATERAL (SELECT * FROM entries e WHERE e.account_id = w.account_id OFFSET 0) e),
                 (SELECT count(*) || ' ' || coalesce(sum(hashtextextended(transfer_id || ' ' || state || ' ' || amount, 0)), 0) FROM t),
                 (SELECT count(*) || ' ' || coalesce(sum(hashtextextended(h.transfer_id || ' ' || h.amount || ' ' || coalesce(h.released_by, '-'), 0)), 0)
                    FROM holds h JOIN w USING (account_id)),
                 (SELECT count(*) || ' ' || coalesce(sum(hashtextextended(transfer_id || ' ' || state, 0)), 0) FROM i),
                 (SELECT count(*) FROM tcc_barriers WHERE transfer_id IN (SELECT transfer_id FROM i))::text,
                 ((SELECT count(*) FROM idempotency_keys k WHERE k.bucket = ANY($1))
                  + (SELECT count(*) FROM idempotency_keys k JOIN u ON u.user_id = k.caller WHERE k.bucket IS NULL))::text,
                 (SELECT count(*) || ' ' || coalesce(sum(hashtextextended(payment_id || ' ' || state || ' ' || amount, 0)), 0) FROM p),
                 (SELECT count(*) FROM payment_holds h JOIN w USING (account_id))::text,
                 (SELECT count(*) FROM payment_events WHERE payment_id IN (SELECT payment_id FROM p))::text]"),
            &[&bucket],
        )
        .await?;
    Ok(row.get(0))
}

/// The keys of a snapshot's rows by table (composite keys joined by a NUL), for the
/// tables whose rows a fence counts by key: read once from the copy before the fence,
/// so that the fence tells the catch-up's new rows from rows the copy already holds.
pub struct KeySets(std::collections::HashMap<&'static str, std::collections::HashSet<String>>);

/// The tables counted by key in a fence, in `DIGEST_PARTS` order from "entries".
const KEYED: [&str; 9] = [
    "entries",
    "transfers",
    "holds",
    "incoming_transfers",
    "tcc_barriers",
    "idempotency_keys",
    "payments",
    "payment_holds",
    "payment_events",
];

/// A row's key in its table as text, for the tables of `KEYED`.
fn row_key(table: &str, row: &serde_json::Value) -> Option<String> {
    let field = |name: &str| row.get(name)?.as_str();
    let pair = |a: &str, b: &str| Some(format!("{}\0{}", field(a)?, field(b)?));
    match table {
        "entries" => field("entry_id").map(str::to_string),
        "transfers" | "holds" | "incoming_transfers" => field("transfer_id").map(str::to_string),
        "payments" | "payment_holds" => field("payment_id").map(str::to_string),
        "tcc_barriers" => pair("transfer_id", "branch"),
        "idempotency_keys" => pair("caller", "key"),
        "payment_events" => pair("gateway", "event_id"),
        _ => None,
    }
}

fn keys_of<'a>(snapshot: &'a Snapshot, table: &'a str) -> impl Iterator<Item = String> + 'a {
    snapshot
        .tables
        .iter()
        .filter(move |(t, _)| t.name == table)
        .filter_map(|(_, rows)| rows.as_array())
        .flatten()
        .filter_map(move |row| row_key(table, row))
}

impl KeySets {
    pub fn of(snapshot: &Snapshot) -> Self {
        Self(KEYED.iter().map(|&table| (table, keys_of(snapshot, table).collect())).collect())
    }
}

/// The keys of a catch-up's rows: every row's, for the hashes (`hashes`), and the new
/// rows' (not in the copy before the fence), for the target's count
/// (`counts_after_catch_up`).
pub struct Keys {
    entries: Vec<uuid::Uuid>,
    transfers: Vec<uuid::Uuid>,
    holds: Vec<uuid::Uuid>,
    incoming: Vec<uuid::Uuid>,
    payments: Vec<uuid::Uuid>,
    /// By `KEYED` table: the catch-up's keys that the copy did not hold.
    new: Vec<Vec<String>>,
}

impl Keys {
    pub fn of(delta: &Snapshot, copied: &KeySets) -> Self {
        let ids = |table: &str| -> Vec<uuid::Uuid> { keys_of(delta, table).filter_map(|k| k.parse().ok()).collect() };
        let new = KEYED
            .iter()
            .map(|&table| {
                let known = copied.0.get(table);
                keys_of(delta, table).filter(|k| known.is_none_or(|known| !known.contains(k))).collect()
            })
            .collect();
        Self {
            entries: ids("entries"),
            transfers: ids("transfers"),
            holds: ids("holds"),
            incoming: ids("incoming_transfers"),
            payments: ids("payments"),
            new,
        }
    }

    fn new_ids(&self, table: &str) -> Vec<uuid::Uuid> {
        self.new_keys(table).iter().filter_map(|k| k.parse().ok()).collect()
    }

    fn new_keys(&self, table: &str) -> &[String] {
        KEYED.iter().position(|&t| t == table).map_or(&[], |i| &self.new[i])
    }

    /// A composite key's two columns, as two arrays.
    fn new_pairs(&self, table: &str) -> (Vec<String>, Vec<String>) {
        self.new_keys(table)
            .iter()
            .filter_map(|k| k.split_once('\0'))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .unzip()
    }

    /// The new barriers' keys: transfer ids and branches, pair by pair.
    fn new_barriers(&self) -> (Vec<uuid::Uuid>, Vec<String>) {
        let (ids, branches) = self.new_pairs("tcc_barriers");
        ids.iter().zip(branches).filter_map(|(id, branch)| Some((id.parse::<uuid::Uuid>().ok()?, branch))).unzip()
    }
}

/// Every part's row count of `buckets`, in `DIGEST_PARTS` order: a scan of the buckets'
/// whole history, the only one a fence makes (on the source, while it reads the
/// catch-up; the target's are taken before the fence, `counts_after_catch_up` adds the
/// catch-up's).
pub async fn counts(client: &impl GenericClient, buckets: &[u32]) -> Result<Vec<i64>, tokio_postgres::Error> {
    let row = client
        .cached_query_one(
            digest_sets!(
                "SELECT ARRAY[
                     (SELECT count(*) FROM u),
                     (SELECT count(*) FROM w),
                     (SELECT count(*) FROM w, LATERAL (SELECT 1 FROM entries e WHERE e.account_id = w.account_id OFFSET 0) e),
                     (SELECT count(*) FROM t),
                     (SELECT count(*) FROM holds h JOIN w USING (account_id)),
                     (SELECT count(*) FROM i),
                     (SELECT count(*) FROM tcc_barriers WHERE transfer_id IN (SELECT transfer_id FROM i)),
                     (SELECT count(*) FROM idempotency_keys k WHERE k.bucket = ANY($1))
                      + (SELECT count(*) FROM idempotency_keys k JOIN u ON u.user_id = k.caller WHERE k.bucket IS NULL),
                     (SELECT count(*) FROM p),
                     (SELECT count(*) FROM payment_holds h JOIN w USING (account_id)),
                     (SELECT count(*) FROM payment_events WHERE payment_id IN (SELECT payment_id FROM p))]"
            ),
            &[&as_param(buckets)],
        )
        .await?;
    Ok(row.get(0))
}

/// The target's counts inside a fence, from `counts` taken before it (`before`: the copy
/// as committed) and the rows its catch-up added: each part's rows whose key the copy
/// did not hold, looked up by key. Users and wallets, few, are counted whole. Nothing
/// but the mover writes or deletes an incoming bucket's rows on the target: requests
/// are refused there (`sharding::ownership`), and pruning waits while any bucket is
/// incoming (`nothing_incoming!`). A row of the copy lost since `before` and written
/// again by the catch-up is not counted as new: the counts then differ, and the fence
/// copies in full.
pub async fn counts_after_catch_up(
    client: &impl GenericClient,
    buckets: &[u32],
    keys: &Keys,
    before: &[i64],
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let (barrier_ids, barrier_branches) = keys.new_barriers();
    let (key_callers, key_keys) = keys.new_pairs("idempotency_keys");
    let (event_gateways, event_ids) = keys.new_pairs("payment_events");
    let row = client
        .cached_query_one(
            of_wallets!(
                " SELECT ARRAY[
                     (SELECT count(*) FROM u),
                     (SELECT count(*) FROM w),
                     (SELECT count(*) FROM entries e WHERE e.entry_id = ANY($2) AND e.account_id IN (SELECT account_id FROM w)),
                     (SELECT count(*) FROM transfers x WHERE x.transfer_id = ANY($3)
                         AND (x.from_user IN (SELECT user_id FROM u)
                              OR (x.to_user IN (SELECT user_id FROM u) AND x.route = 'local'
                                  AND x.from_user NOT IN (SELECT user_id FROM u)))),
                     (SELECT count(*) FROM holds h WHERE h.transfer_id = ANY($4) AND h.account_id IN (SELECT account_id FROM w)),
                     (SELECT count(*) FROM incoming_transfers x WHERE x.transfer_id = ANY($5) AND x.to_user IN (SELECT user_id FROM u)),
                     (SELECT count(*) FROM tcc_barriers b JOIN unnest($6::uuid[], $7::text[]) AS n(transfer_id, branch) USING (transfer_id, branch)
                      WHERE EXISTS (SELECT 1 FROM incoming_transfers x
                                    WHERE x.transfer_id = b.transfer_id AND x.to_user IN (SELECT user_id FROM u))),
                     (SELECT count(*) FROM idempotency_keys k JOIN unnest($8::text[], $9::text[]) AS n(caller, key) USING (caller, key)
                      WHERE k.bucket = ANY($1) OR (k.bucket IS NULL AND k.caller IN (SELECT user_id FROM u))),
                     (SELECT count(*) FROM payments x WHERE x.payment_id = ANY($10) AND x.user_id IN (SELECT user_id FROM u)),
                     (SELECT count(*) FROM payment_holds h WHERE h.payment_id = ANY($11) AND h.account_id IN (SELECT account_id FROM w)),
                     (SELECT count(*) FROM payment_events ev JOIN unnest($12::text[], $13::text[]) AS n(gateway, event_id) USING (gateway, event_id)
                      WHERE EXISTS (SELECT 1 FROM payments x WHERE x.payment_id = ev.payment_id AND x.user_id IN (SELECT user_id FROM u)))]"
            ),
            &[
                &as_param(buckets),
                &keys.new_ids("entries"),
                &keys.new_ids("transfers"),
                &keys.new_ids("holds"),
                &keys.new_ids("incoming_transfers"),
                &barrier_ids,
                &barrier_branches,
                &key_callers,
                &key_keys,
                &keys.new_ids("payments"),
                &keys.new_ids("payment_holds"),
                &event_gateways,
                &event_ids,
            ],
        )
        .await?;
    let added: Vec<i64> = row.get(0);
    // Users and wallets are counted whole; every other part adds to its count before.
    Ok(added
        .iter()
        .enumerate()
        .map(|(part, &n)| if part < 2 { n } else { n + before.get(part).copied().unwrap_or(0) })
        .collect())
}

/// The parts' hashes inside a fence, the same SQL on both sides: every wallet's balance
/// and held, and the rows the catch-up wrote (`keys`: ids travel unchanged); empty for
/// the parts only counted. Entries are append-only, and a row changed since the copy's
/// snapshot is in the catch-up (its `xmin` is newer), so equal counts, equal wallets and
/// equal hashes of the catch-up's rows, after the copy's own full digest matched outside
/// the fence, mean equal buckets: the fence hashes what changed, not the history.
pub async fn hashes(
    client: &impl GenericClient,
    buckets: &[u32],
    keys: &Keys,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let row = client
        .cached_query_one(
            of_wallets!(
                " SELECT ARRAY[
                     '',
                     (SELECT coalesce(sum(hashtextextended(user_id || ' ' || currency || ' ' || balance || ' ' || held, 0)), 0) FROM w)::text,
                     (SELECT coalesce(sum(hashtextextended(e.entry_id || ' ' || e.amount || ' ' || coalesce(e.balance_after::text, '-'), 0)), 0)
                      FROM entries e WHERE e.entry_id = ANY($2) AND e.account_id IN (SELECT account_id FROM w))::text,
                     (SELECT coalesce(sum(hashtextextended(x.transfer_id || ' ' || x.state || ' ' || x.amount, 0)), 0)
                      FROM transfers x WHERE x.transfer_id = ANY($3))::text,
                     (SELECT coalesce(sum(hashtextextended(h.transfer_id || ' ' || h.amount || ' ' || coalesce(h.released_by, '-'), 0)), 0)
                      FROM holds h WHERE h.transfer_id = ANY($4) AND h.account_id IN (SELECT account_id FROM w))::text,
                     (SELECT coalesce(sum(hashtextextended(x.transfer_id || ' ' || x.state, 0)), 0)
                      FROM incoming_transfers x WHERE x.transfer_id = ANY($5))::text,
                     '',
                     '',
                     (SELECT coalesce(sum(hashtextextended(x.payment_id || ' ' || x.state || ' ' || x.amount, 0)), 0)
                      FROM payments x WHERE x.payment_id = ANY($6))::text,
                     '',
                     '']"
            ),
            &[&as_param(buckets), &keys.entries, &keys.transfers, &keys.holds, &keys.incoming, &keys.payments],
        )
        .await?;
    Ok(row.get(0))
}

/// A fence's digest, one text per part of `DIGEST_PARTS` (its count, and its hash where
/// it has one), as `refuse_if_different` compares them.
pub fn fence_digest(counts: &[i64], hashes: &[String]) -> Vec<String> {
    debug_assert_eq!((counts.len(), hashes.len()), (DIGEST_PARTS.len(), DIGEST_PARTS.len()));
    counts
        .iter()
        .zip(hashes)
        .map(|(count, hash)| if hash.is_empty() { count.to_string() } else { format!("{count} {hash}") })
        .collect()
}

/// Each bucket's history, as the entries of its wallets (by index, outside any fence):
/// what a fence's counts grow with, for the mover's pacing (`mover::Pace`). Buckets
/// without users are left out.
pub async fn history(
    client: &impl GenericClient,
    buckets: &[u32],
) -> Result<std::collections::HashMap<u32, u64>, tokio_postgres::Error> {
    let rows = client
        .cached_query(
            "SELECT u.bucket, count(*) FROM users u JOIN accounts a USING (user_id),
                    LATERAL (SELECT 1 FROM entries e WHERE e.account_id = a.account_id OFFSET 0) e
             WHERE u.bucket = ANY($1) GROUP BY u.bucket",
            &[&as_param(buckets)],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1) as u64)).collect())
}

/// The names of `digest`'s parts, for the refusal message.
pub const DIGEST_PARTS: [&str; 11] = [
    "users",
    "wallet balances",
    "entries",
    "transfers",
    "holds",
    "incoming transfers",
    "barriers",
    "idempotency keys",
    "payments",
    "payment holds",
    "payment events",
];

/// Postings of the bucket that do not sum to zero (none may, after a write).
pub async fn unbalanced(client: &impl GenericClient, buckets: &[u32]) -> Result<i64, tokio_postgres::Error> {
    let bucket = as_param(buckets);
    let sql = of_postings!(
        "SELECT count(*) FROM bp WHERE (SELECT sum(amount) FROM entries x WHERE x.posting_id = bp.posting_id) <> 0"
    );
    Ok(client.cached_query_one(sql, &[&bucket]).await?.get(0))
}

/// `unbalanced` over the postings of `snapshot` only (a catch-up's): entries are
/// append-only and a posting's legs are written together, so a copy found balanced
/// before the fence stays so, and the fence checks only what it adds.
pub async fn unbalanced_of(client: &impl GenericClient, snapshot: &Snapshot) -> Result<i64, tokio_postgres::Error> {
    let Some(postings) = snapshot.tables.iter().find(|(t, _)| t.name == "postings").map(|(_, rows)| rows) else {
        return Ok(0);
    };
    if postings.as_array().is_none_or(|a| a.is_empty()) {
        return Ok(0);
    }
    let row = client
        .cached_query_one(
            "SELECT count(*) FROM jsonb_to_recordset($1) AS p(posting_id uuid)
             WHERE (SELECT sum(amount) FROM entries x WHERE x.posting_id = p.posting_id) <> 0",
            &[&Json(postings)],
        )
        .await?;
    Ok(row.get(0))
}

fn as_param(buckets: &[u32]) -> Vec<i32> {
    buckets.iter().map(|&b| b as i32).collect()
}
