//! The audit: on each shard (one REPEATABLE READ snapshot), every wallet's balance
//! equals the sum of its entries, `held` equals its open holds, every posting sums to
//! zero, every open hold belongs to a transfer or payment in flight, and each finished
//! transfer or payment has the legs it should (payments against their gateway's
//! clearing account, cross-shard legs between the right wallet and transit for the
//! transfer's amount), and the shard's transit account holds what it sent minus what it
//! received; over all shards, the total per currency is zero (gateway clearing
//! accounts included: they carry what entered or left through the gateway), and both
//! sides of every cross-shard transfer agree (`cross`).
use std::collections::{BTreeMap, HashMap};

mod cross;
pub use cross::CrossShardReport;

use num_bigint::BigInt;
use num_traits::Zero;
use serde::Serialize;

use super::{accounts::parse_numeric, Result};
use crate::{
    domain::transfer_state::{state_sql, states_sql},
    sharding::{ownership::SWITCH_LOCK, Router},
    storage,
};

// The OpenAPI schemas (`AuditReport`, `ShardAudit`, `TransitAudit`) are derived on
// these types, so the document shows what is sent.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = AuditReport)]
pub struct Report {
    pub ok: bool,
    pub shards: Vec<ShardReport>,
    /// Per currency, the sum of every account on every shard: must be zero.
    pub totals: BTreeMap<String, String>,
    pub problems: Vec<String>,
    /// Both sides of cross-shard transfers joined over the shards.
    pub cross_shard: CrossShardReport,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = ShardAudit)]
pub struct ShardReport {
    pub shard: String,
    pub wallets: i64,
    pub postings: i64,
    pub entries: i64,
    /// Per currency and account kind ("wallets", "held", system account names).
    pub totals: BTreeMap<String, BTreeMap<String, String>>,
    /// Per currency, the transit account and what explains it (`balance = sent - received`).
    pub transit: BTreeMap<String, Transit>,
    pub problems: Vec<String>,
}

/// A shard's transit account in one currency: the sender's leg of each of its outgoing
/// cross-shard transfers that is `confirming` or `completed` credits it, the receiver's
/// leg of each incoming one it has `confirmed` debits it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = TransitAudit)]
pub struct Transit {
    pub balance: String,
    /// Amounts of this shard's outgoing transfers that are `confirming` or `completed`.
    pub sent: String,
    /// Amounts of incoming transfers this shard has `confirmed` (credited).
    pub received: String,
}

/// Checks run on one shard; each returns rows of one text column describing a problem.
/// Per posting of `kind` (a cross-shard leg): how many entries, in how many currencies,
/// how much on a wallet (and whose) and how much on transit.
macro_rules! legs_of {
    ($kind:literal) => {
        concat!(
            "WITH legs AS (
             SELECT e.posting_id, count(*) AS n, count(DISTINCT a.currency) AS currencies, min(a.currency) AS currency,
                    count(*) FILTER (WHERE a.user_id IS NOT NULL) AS wallets, min(a.user_id) AS wallet_user,
                    sum(e.amount) FILTER (WHERE a.user_id IS NOT NULL) AS wallet_amount,
                    sum(e.amount) FILTER (WHERE a.system_name = 'transit') AS transit_amount
             FROM postings p JOIN entries e USING (posting_id) JOIN accounts a USING (account_id)
             WHERE p.kind = '",
            $kind,
            "' GROUP BY e.posting_id)"
        )
    };
}

const CHECKS: &[(&str, &str)] = &[
    (
        "wallet balance differs from its entries",
        "SELECT format('wallet %s/%s: balance %s, entries sum to %s', a.user_id, a.currency, a.balance, coalesce(s.total, 0))
         FROM accounts a LEFT JOIN (SELECT account_id, sum(amount) AS total FROM entries GROUP BY account_id) s USING (account_id)
         WHERE a.user_id IS NOT NULL AND a.balance <> coalesce(s.total, 0)",
    ),
    (
        "wallet held differs from its open holds",
        "SELECT format('wallet %s/%s: held %s, open holds sum to %s', a.user_id, a.currency, a.held, coalesce(h.total, 0))
         FROM accounts a LEFT JOIN (
                  SELECT account_id, sum(amount) AS total FROM (
                      SELECT account_id, amount FROM holds WHERE released_at IS NULL
                      UNION ALL
                      SELECT account_id, amount FROM payment_holds WHERE released_at IS NULL) open
                  GROUP BY account_id) h
              USING (account_id)
         WHERE a.held <> coalesce(h.total, 0)",
    ),
    (
        "posting does not balance",
        "SELECT format('posting %s (%s): entries sum to %s', p.posting_id, p.kind, coalesce(sum(e.amount), 0))
         FROM postings p LEFT JOIN entries e USING (posting_id)
         GROUP BY p.posting_id, p.kind HAVING coalesce(sum(e.amount), 0) <> 0 OR count(e.*) < 2",
    ),
    (
        // The schema's foreign keys from entries left with V14; every writer inserts a
        // posting with its entries in one statement.
        "entry without its posting or account",
        "SELECT format('entry %s names posting %s and account %s; %s is not on this shard', e.entry_id, e.posting_id,
                       e.account_id, CASE WHEN p.posting_id IS NULL THEN 'the posting' ELSE 'the account' END)
         FROM entries e LEFT JOIN postings p USING (posting_id) LEFT JOIN accounts a USING (account_id)
         WHERE p.posting_id IS NULL OR a.account_id IS NULL",
    ),
    (
        "open hold of a transfer not in flight",
        concat!(
            "SELECT format('hold of transfer %s is open but the transfer is %s', h.transfer_id, t.state)
         FROM holds h JOIN transfers t USING (transfer_id)
         WHERE h.released_at IS NULL AND t.state <> ",
            state_sql!(Sender::Trying)
        ),
    ),
    (
        "transfer legs do not match its state",
        concat!(
            "SELECT format('transfer %s is %s (%s) but has %s debit posting(s)', t.transfer_id, t.state, t.route, count(p.*))
         FROM transfers t LEFT JOIN postings p
              ON p.reference = t.transfer_id AND p.kind IN ('transfer', 'transfer_debit')
         GROUP BY t.transfer_id, t.state, t.route
         HAVING count(p.*) <> CASE WHEN t.state IN ",
            states_sql!(Sender::Completed, Sender::Confirming),
            " THEN 1 ELSE 0 END"
        ),
    ),
    (
        "incoming transfer legs do not match its state",
        concat!(
            "SELECT format('incoming transfer %s is %s but has %s credit posting(s)', i.transfer_id, i.state, count(p.*))
         FROM incoming_transfers i LEFT JOIN postings p ON p.reference = i.transfer_id AND p.kind = 'transfer_credit'
         GROUP BY i.transfer_id, i.state
         HAVING count(p.*) <> CASE WHEN i.state = ",
            state_sql!(Receiver::Confirmed),
            " THEN 1 ELSE 0 END"
        ),
    ),
    (
        "cross-shard debit does not match its transfer",
        concat!(
            legs_of!("transfer_debit"),
            "
         SELECT CASE WHEN t.transfer_id IS NULL
             THEN format('debit posting %s names transfer %s, which is no cross-shard transfer of this shard',
                         p.posting_id, p.reference)
             ELSE format('transfer %s: debit posting %s (%s entries, %s) moves %s on wallet %s and %s on transit; the transfer is %s %s from %s',
                         t.transfer_id, p.posting_id, l.n, l.currency, coalesce(l.wallet_amount::text, 'nothing'),
                         coalesce(l.wallet_user, 'none'), coalesce(l.transit_amount::text, 'nothing'),
                         t.amount, t.currency, t.from_user) END
         FROM postings p JOIN legs l USING (posting_id)
              LEFT JOIN transfers t ON t.transfer_id = p.reference AND t.route = 'cross_shard'
         WHERE t.transfer_id IS NULL OR l.n <> 2 OR l.currencies <> 1 OR l.wallets <> 1
            OR l.wallet_user IS DISTINCT FROM t.from_user OR l.currency <> t.currency
            OR l.wallet_amount IS DISTINCT FROM -t.amount OR l.transit_amount IS DISTINCT FROM t.amount"),
    ),
    (
        "cross-shard credit does not match its incoming transfer",
        concat!(
            legs_of!("transfer_credit"),
            "
         SELECT CASE WHEN i.transfer_id IS NULL
             THEN format('transfer %s: credit posting %s has no incoming transfer record', p.reference, p.posting_id)
             ELSE format('transfer %s: credit posting %s (%s entries, %s) moves %s on wallet %s and %s on transit; the incoming transfer is %s %s to %s',
                         i.transfer_id, p.posting_id, l.n, l.currency, coalesce(l.wallet_amount::text, 'nothing'),
                         coalesce(l.wallet_user, 'none'), coalesce(l.transit_amount::text, 'nothing'),
                         i.amount, i.currency, i.to_user) END
         FROM postings p JOIN legs l USING (posting_id)
              LEFT JOIN incoming_transfers i ON i.transfer_id = p.reference
         WHERE i.transfer_id IS NULL OR l.n <> 2 OR l.currencies <> 1 OR l.wallets <> 1
            OR l.wallet_user IS DISTINCT FROM i.to_user OR l.currency <> i.currency
            OR l.wallet_amount IS DISTINCT FROM i.amount OR l.transit_amount IS DISTINCT FROM -i.amount"),
    ),
    (
        "open hold of a payment not in flight",
        "SELECT format('hold of payment %s is open but the payment is %s', h.payment_id, p.state)
         FROM payment_holds h JOIN payments p USING (payment_id)
         WHERE h.released_at IS NULL AND p.state NOT IN ('created', 'submitted', 'needs_review')",
    ),
    (
        "withdrawal in flight without its hold",
        "SELECT format('withdrawal %s is %s but holds nothing', p.payment_id, p.state)
         FROM payments p LEFT JOIN payment_holds h ON h.payment_id = p.payment_id AND h.released_at IS NULL
         WHERE p.kind = 'withdrawal' AND p.state IN ('created', 'submitted', 'needs_review') AND h.payment_id IS NULL",
    ),
    (
        "payment legs do not match its state",
        "SELECT format('payment %s (%s) is %s but has %s posting(s)', p.payment_id, p.kind, p.state, count(po.*))
         FROM payments p LEFT JOIN postings po ON po.reference = p.payment_id AND po.kind = p.kind
         GROUP BY p.payment_id, p.kind, p.state
         HAVING count(po.*) <> CASE WHEN p.state = 'succeeded' THEN 1 ELSE 0 END",
    ),
    (
        "payment posting not against its gateway's clearing account",
        "SELECT format('payment %s posts to %s, not clearing:%s', p.payment_id, a.system_name, p.gateway)
         FROM payments p JOIN postings po ON po.reference = p.payment_id AND po.kind = p.kind
              JOIN entries e ON e.posting_id = po.posting_id JOIN accounts a ON a.account_id = e.account_id
         WHERE a.user_id IS NULL AND a.system_name <> 'clearing:' || p.gateway",
    ),
    (
        "final payment still keeps its sealed payment method",
        "SELECT format('payment %s is %s but its payment method is still stored', payment_id, state)
         FROM payments WHERE state IN ('succeeded', 'failed') AND method_sealed IS NOT NULL",
    ),
];

/// A read-only REPEATABLE READ transaction: every statement in it sees the snapshot
/// taken by its first one.
/// One snapshot of a shard, seeing only what the shard owns (`owned_only`). The
/// transaction only reads the ledger; it is rolled back, which drops its views.
async fn snapshot<'a>(
    client: &'a mut deadpool_postgres::Object,
    switching: &[i32],
) -> Result<deadpool_postgres::Transaction<'a>> {
    let tx = client.build_transaction().isolation_level(tokio_postgres::IsolationLevel::RepeatableRead).start().await?;
    owned_only(&tx, switching).await?;
    Ok(tx)
}

/// Per shard, the buckets it counts though it no longer owns them: those a mover left
/// between the two commits of their switch (it stopped there and has not been re-run).
/// The shard gave them away (`moved`, naming the target) while the target still holds
/// them `incoming` for a move from this shard. The source's rows are the authoritative
/// ones until the target's commit: no write has changed them since the source's (it refuses
/// their writes), and the target's copy may lack the fence's catch-up.
#[derive(Debug, Default)]
pub(crate) struct Switching(HashMap<String, Vec<i32>>);

impl Switching {
    pub(crate) async fn read(router: &Router) -> Result<Self> {
        let shards = router.shards();
        let mut given: HashMap<(String, String), Vec<i32>> = HashMap::new();
        for shard in &shards {
            for row in shard
                .client()
                .await?
                .query("SELECT bucket, owner FROM bucket_owners WHERE state = 'moved' AND owner <> $1", &[&shard.name])
                .await?
            {
                given.entry((shard.name.clone(), row.get(1))).or_default().push(row.get(0));
            }
        }
        let mut switching = Self::default();
        for ((source, target), buckets) in given {
            let Some(target_shard) = shards.iter().find(|s| s.name == target) else { continue };
            // 'copying', 'fenced': resharding::moves::MoveState, a move in progress.
            let taking: Vec<i32> = target_shard
                .client()
                .await?
                .query(
                    "SELECT o.bucket FROM bucket_owners o JOIN bucket_moves m USING (bucket)
                     WHERE o.bucket = ANY($1) AND o.state = 'incoming'
                       AND m.state IN ('copying', 'fenced') AND m.source = $2",
                    &[&buckets, &source],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !taking.is_empty() {
                switching.0.entry(source).or_default().extend(taking);
            }
        }
        Ok(switching)
    }

    pub(crate) fn of(&self, shard: &str) -> &[i32] {
        self.0.get(shard).map_or(&[], Vec::as_slice)
    }
}

/// Shadows, for this transaction only, the tables the audit reads with views of what
/// the shard owns: a bucket that moved away (its copy not yet cleaned up) is audited on
/// its new owner alone, and one being received only on its source, so no bucket is
/// audited twice or not at all. Postings whose every wallet leg left are left out; in
/// a split posting the legs that left are, their `resharding` leg stands for them (the
/// one cleanup will write, counted here until it has: `standins_pending`, V11).
/// Temporary relations come first in the search path, so the checks' SQL is unchanged.
pub(crate) async fn owned_only(tx: &deadpool_postgres::Transaction<'_>, switching: &[i32]) -> Result<()> {
    // Nothing to leave out on a shard that never gave nor is receiving a bucket.
    let moved: bool =
        tx.query_one("SELECT EXISTS (SELECT 1 FROM bucket_owners WHERE state <> 'owned')", &[]).await?.get(0);
    if !moved {
        return Ok(());
    }
    // The views test membership in the (small) sets of what left, so each stays one
    // scan of its table.
    // What this shard counts: what it owns, and what it takes at a switch cut in two.
    let counted = format!(
        "(SELECT bucket FROM public.bucket_owners WHERE state = 'owned' OR bucket = ANY(ARRAY[{}]::int[]))",
        switching.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
    );
    let views = "CREATE TEMP VIEW stale_users AS SELECT u.user_id FROM public.users u
             WHERE u.bucket IS NOT NULL
               AND u.bucket NOT IN COUNTED;
         CREATE TEMP VIEW stale_accounts AS SELECT a.account_id FROM public.accounts a
             WHERE a.user_id IN (SELECT user_id FROM pg_temp.stale_users);
         CREATE TEMP VIEW left_postings AS SELECT DISTINCT e.posting_id FROM public.entries e
             WHERE e.account_id IN (SELECT account_id FROM pg_temp.stale_accounts)
               AND NOT EXISTS (SELECT 1 FROM public.entries o JOIN public.accounts a USING (account_id)
                               WHERE o.posting_id = e.posting_id AND a.user_id IS NOT NULL
                                 AND a.account_id NOT IN (SELECT account_id FROM pg_temp.stale_accounts));
         CREATE TEMP VIEW users AS SELECT u.* FROM public.users u
             WHERE u.user_id NOT IN (SELECT user_id FROM pg_temp.stale_users);
         CREATE TEMP VIEW accounts AS SELECT a.* FROM public.accounts a
             WHERE a.account_id NOT IN (SELECT account_id FROM pg_temp.stale_accounts);
         CREATE TEMP VIEW postings AS SELECT p.* FROM public.postings p
             WHERE p.posting_id NOT IN (SELECT posting_id FROM pg_temp.left_postings);
         CREATE TEMP VIEW entries AS SELECT e.* FROM public.entries e
             WHERE e.account_id NOT IN (SELECT account_id FROM pg_temp.stale_accounts)
               AND e.posting_id NOT IN (SELECT posting_id FROM pg_temp.left_postings)
             UNION ALL
             SELECT -min(e.seq), resharding_leg_id(min(e.entry_id::text)::uuid, 0), e.posting_id, r.account_id,
                    sum(e.amount), NULL::numeric, min(e.created_at)
             FROM public.entries e JOIN public.accounts a ON a.account_id = e.account_id
                  JOIN public.users u ON u.user_id = a.user_id
                  JOIN public.bucket_owners o ON o.bucket = u.bucket AND o.state = 'moved' AND o.standins_pending
                  JOIN public.accounts r ON r.system_name = 'resharding' AND r.currency = a.currency
             WHERE e.account_id IN (SELECT account_id FROM pg_temp.stale_accounts)
               AND e.posting_id NOT IN (SELECT posting_id FROM pg_temp.left_postings)
             GROUP BY e.posting_id, r.account_id
             HAVING sum(e.amount) <> 0;
         CREATE TEMP VIEW transfers AS SELECT t.* FROM public.transfers t
             WHERE id_bucket(t.transfer_id) IN COUNTED;
         CREATE TEMP VIEW holds AS SELECT h.* FROM public.holds h
             WHERE h.account_id NOT IN (SELECT account_id FROM pg_temp.stale_accounts);
         CREATE TEMP VIEW incoming_transfers AS SELECT i.* FROM public.incoming_transfers i
             WHERE i.to_user NOT IN (SELECT user_id FROM pg_temp.stale_users);
         CREATE TEMP VIEW payments AS SELECT p.* FROM public.payments p
             WHERE p.user_id NOT IN (SELECT user_id FROM pg_temp.stale_users);
         CREATE TEMP VIEW payment_holds AS SELECT h.* FROM public.payment_holds h
             WHERE h.account_id NOT IN (SELECT account_id FROM pg_temp.stale_accounts);";
    tx.batch_execute(&views.replace("COUNTED", &counted)).await?;
    Ok(())
}

pub async fn run(router: &Router) -> Result<Report> {
    // No bucket changes owner while the shards are read one after the other (the mover
    // waits between fences); the session, out of the pool, ends with the audit.
    let Some(first) = router.layout().shards.first().cloned() else {
        return Err(super::Error::Invariant("the shard map has no shard".into()));
    };
    let lock = deadpool_postgres::Object::take(first.client().await?);
    storage::holding(&lock, SWITCH_LOCK, storage::LockMode::Shared, audit(router)).await
}

async fn audit(router: &Router) -> Result<Report> {
    let switching = Switching::read(router).await?;
    let mut shards = Vec::new();
    let mut grand: BTreeMap<String, BigInt> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut senders = cross::Senders::default();
    for shard in router.shards() {
        let mut client = shard.client().await?;
        let tx = snapshot(&mut client, switching.of(&shard.name)).await?;
        let mut report = ShardReport {
            shard: shard.name.clone(),
            wallets: 0,
            postings: 0,
            entries: 0,
            totals: BTreeMap::new(),
            transit: BTreeMap::new(),
            problems: Vec::new(),
        };
        let counts = tx
            .query_one(
                "SELECT (SELECT count(*) FROM accounts WHERE user_id IS NOT NULL),
                        (SELECT count(*) FROM postings), (SELECT count(*) FROM entries)",
                &[],
            )
            .await?;
        (report.wallets, report.postings, report.entries) = (counts.get(0), counts.get(1), counts.get(2));
        for (what, sql) in CHECKS {
            for row in tx.query(*sql, &[]).await? {
                report.problems.push(format!("{what}: {}", row.get::<_, String>(0)));
            }
        }
        let rows = tx
            .query(
                "SELECT a.currency, coalesce(a.system_name, 'wallets'), coalesce(sum(e.amount), 0)::text
                 FROM accounts a LEFT JOIN entries e USING (account_id)
                 GROUP BY 1, 2
                 UNION ALL
                 SELECT currency, 'held', sum(held)::text FROM accounts WHERE user_id IS NOT NULL GROUP BY 1
                 ORDER BY 1, 2",
                &[],
            )
            .await?;
        for row in rows {
            let (currency, kind, total): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            if kind != "held" {
                *grand.entry(currency.clone()).or_default() += parse_numeric(&total)?;
            }
            report.totals.entry(currency).or_default().insert(kind, total);
        }
        check_transit(&tx, &mut report).await?;
        // The sender side of the cross-shard join, read in this shard's snapshot before
        // any receiver side is read (see `cross`).
        senders.read(&tx, &shard.name).await?;
        tx.rollback().await?;
        problems.extend(report.problems.iter().map(|p| format!("{}: {p}", report.shard)));
        shards.push(report);
    }
    for (currency, total) in &grand {
        if !total.is_zero() {
            problems.push(format!("{currency}: the accounts of all shards sum to {total}, not 0"));
        }
    }
    let cross_shard = cross::audit(router, senders, &switching).await?;
    problems.extend(cross_shard.problems.iter().map(|p| format!("cross-shard: {p}")));
    Ok(Report {
        ok: problems.is_empty(),
        shards,
        totals: grand.into_iter().map(|(c, t)| (c, t.to_string())).collect(),
        problems,
        cross_shard,
    })
}

/// The transit identity of one shard, per currency: the sender's leg of a cross-shard
/// transfer credits the sender shard's transit account at `confirming` and the
/// receiver's leg debits the receiver shard's at `confirmed`, and nothing else touches
/// transit, so `balance = sent - received` in every snapshot.
#[tracing::instrument(skip_all, fields(shard = %report.shard))]
async fn check_transit(tx: &deadpool_postgres::Transaction<'_>, report: &mut ShardReport) -> Result<()> {
    let rows = tx
        .query(
            concat!(
                "SELECT currency, sum(balance)::text, sum(sent)::text, sum(received)::text FROM (
                     SELECT a.currency, e.amount AS balance, 0 AS sent, 0 AS received
                     FROM accounts a JOIN entries e USING (account_id) WHERE a.system_name = 'transit'
                     UNION ALL
                     SELECT currency, 0, amount, 0 FROM transfers
                     WHERE route = 'cross_shard' AND state IN ",
                states_sql!(Sender::Confirming, Sender::Completed),
                " UNION ALL
                     SELECT currency, 0, 0, amount FROM incoming_transfers WHERE state = ",
                state_sql!(Receiver::Confirmed),
                ") legs GROUP BY currency ORDER BY currency"
            ),
            &[],
        )
        .await?;
    for row in rows {
        let (currency, balance, sent, received): (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let expected = parse_numeric(&sent)? - parse_numeric(&received)?;
        if parse_numeric(&balance)? != expected {
            report.problems.push(format!(
                "transit {currency}: balance {balance}, but outgoing transfers debited ({sent}) minus incoming \
                 ones credited ({received}) is {expected}"
            ));
        }
        report.transit.insert(currency, Transit { balance, sent, received });
    }
    Ok(())
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.shards {
            writeln!(f, "shard {}: {} wallets, {} postings, {} entries", s.shard, s.wallets, s.postings, s.entries)?;
            for (currency, kinds) in &s.totals {
                let parts: Vec<String> = kinds.iter().map(|(k, v)| format!("{k} {v}")).collect();
                writeln!(f, "  {currency}: {}", parts.join(", "))?;
            }
            for (currency, t) in &s.transit {
                writeln!(f, "  transit {currency}: {} = sent {} - received {}", t.balance, t.sent, t.received)?;
            }
            for p in &s.problems {
                writeln!(f, "  PROBLEM {p}")?;
            }
        }
        for (currency, total) in &self.totals {
            writeln!(f, "total {currency} over all shards: {total}")?;
        }
        writeln!(f, "{}", self.cross_shard)?;
        if self.ok {
            write!(f, "verify: OK")
        } else {
            write!(f, "verify: {} problem(s) found", self.problems.len())
        }
    }
}
