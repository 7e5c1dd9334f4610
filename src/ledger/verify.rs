//! The audit: on each shard (one REPEATABLE READ snapshot), every wallet's balance
//! equals the sum of its entries, `held` equals its open holds, every posting sums to
//! zero, every open hold belongs to a transfer or payment in flight, and each finished
//! transfer or payment has the legs it should (payments against their gateway's
//! clearing account); over all shards, the total per currency is zero (gateway clearing
//! accounts included: they carry what entered or left through the gateway).
use std::collections::BTreeMap;

use num_bigint::BigInt;
use num_traits::Zero;
use serde::Serialize;

use super::{accounts::parse_numeric, Result};
use crate::sharding::Router;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub shards: Vec<ShardReport>,
    /// Per currency, the sum of every account on every shard: must be zero.
    pub totals: BTreeMap<String, String>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardReport {
    pub shard: String,
    pub wallets: i64,
    pub postings: i64,
    pub entries: i64,
    /// Per currency and account kind ("wallets", "held", system account names).
    pub totals: BTreeMap<String, BTreeMap<String, String>>,
    pub problems: Vec<String>,
}

/// Checks run on one shard; each returns rows of one text column describing a problem.
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
        "open hold of a transfer not in flight",
        "SELECT format('hold of transfer %s is open but the transfer is %s', h.transfer_id, t.state)
         FROM holds h JOIN transfers t USING (transfer_id)
         WHERE h.released_at IS NULL AND t.state <> 'trying'",
    ),
    (
        "transfer legs do not match its state",
        "SELECT format('transfer %s is %s (%s) but has %s debit posting(s)', t.transfer_id, t.state, t.route, count(p.*))
         FROM transfers t LEFT JOIN postings p
              ON p.reference = t.transfer_id AND p.kind IN ('transfer', 'transfer_debit')
         GROUP BY t.transfer_id, t.state, t.route
         HAVING count(p.*) <> CASE WHEN t.state IN ('completed', 'confirming') THEN 1 ELSE 0 END",
    ),
    (
        "incoming transfer legs do not match its state",
        "SELECT format('incoming transfer %s is %s but has %s credit posting(s)', i.transfer_id, i.state, count(p.*))
         FROM incoming_transfers i LEFT JOIN postings p ON p.reference = i.transfer_id AND p.kind = 'transfer_credit'
         GROUP BY i.transfer_id, i.state
         HAVING count(p.*) <> CASE WHEN i.state = 'confirmed' THEN 1 ELSE 0 END",
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

pub async fn run(router: &Router) -> Result<Report> {
    let mut shards = Vec::new();
    let mut grand: BTreeMap<String, BigInt> = BTreeMap::new();
    let mut problems = Vec::new();
    for shard in router.shards() {
        let mut client = shard.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let mut report = ShardReport {
            shard: shard.name.clone(),
            wallets: 0,
            postings: 0,
            entries: 0,
            totals: BTreeMap::new(),
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
        tx.commit().await?;
        problems.extend(report.problems.iter().map(|p| format!("{}: {p}", report.shard)));
        shards.push(report);
    }
    for (currency, total) in &grand {
        if !total.is_zero() {
            problems.push(format!("{currency}: the accounts of all shards sum to {total}, not 0"));
        }
    }
    Ok(Report {
        ok: problems.is_empty(),
        shards,
        totals: grand.into_iter().map(|(c, t)| (c, t.to_string())).collect(),
        problems,
    })
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.shards {
            writeln!(f, "shard {}: {} wallets, {} postings, {} entries", s.shard, s.wallets, s.postings, s.entries)?;
            for (currency, kinds) in &s.totals {
                let parts: Vec<String> = kinds.iter().map(|(k, v)| format!("{k} {v}")).collect();
                writeln!(f, "  {currency}: {}", parts.join(", "))?;
            }
            for p in &s.problems {
                writeln!(f, "  PROBLEM {p}")?;
            }
        }
        for (currency, total) in &self.totals {
            writeln!(f, "total {currency} over all shards: {total}")?;
        }
        if self.ok {
            write!(f, "verify: OK")
        } else {
            write!(f, "verify: {} problem(s) found", self.problems.len())
        }
    }
}
