//! The cross-shard join: every cross-shard transfer its sender calls `completed` has
//! exactly one receiver credit (a `transfer_credit` posting) of the same amount,
//! currency and users, and every receiver credit has a sender transfer that is
//! `confirming` or `completed`.
//!
//! There is no snapshot over all shards, so the reads are ordered by the protocol's
//! happens-before (sender debit commits → receiver credit commits → sender completed
//! commits; each step starts only after the previous one's commit):
//! 1. every shard's senders (in its audit snapshot, `Senders::read`);
//! 2. then every shard's credits: a sender seen `completed` in step 1 had its credit
//!    committed before, so step 2 sees it: a missing credit is never a transfer in flight;
//! 3. then, once more, the sender of each credit step 1 did not see debited: a credit
//!    commits after its sender's debit, so step 3 sees that debit, which is never undone
//!    (`confirming` only moves to `completed`). Missing credits are read again too.
//!
//! What is still wrong in step 3 is reported; nothing in flight can be. The argument
//! in full: docs/ARCHITECTURE.md, "Auditing cross-shard transfers".
use std::collections::{BTreeMap, HashMap};

use num_bigint::BigInt;
use serde::Serialize;
use uuid::Uuid;

use crate::{
    domain::{transfer_state::states_sql, SenderState},
    ledger::{accounts::parse_numeric, Result},
    sharding::Router,
};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = CrossShardAudit)]
pub struct CrossShardReport {
    /// Outgoing cross-shard transfers debited (`confirming` or `completed`) on all shards.
    pub debited: usize,
    /// Receiver credits (`transfer_credit` postings) on all shards.
    pub credited: usize,
    /// Per currency, debited transfers whose credit the audit did not see yet (in flight).
    pub in_flight: BTreeMap<String, String>,
    /// Transfers read once more because one side was not seen at first.
    pub rechecked: usize,
    pub problems: Vec<String>,
}

/// What a sender shard says about a transfer it debited.
#[derive(Debug, Clone)]
struct Debit {
    shard: String,
    state: String,
    from: String,
    to: String,
    currency: String,
    amount: BigInt,
}

/// The sender side of every debited cross-shard transfer.
#[derive(Debug, Default)]
pub struct Senders {
    debited: HashMap<Uuid, Debit>,
}

const SENDERS: &str = concat!(
    "SELECT transfer_id, state, from_user, to_user, currency, amount::text FROM transfers
     WHERE route = 'cross_shard' AND state IN ",
    states_sql!(Sender::Confirming, Sender::Completed)
);

impl Senders {
    /// Reads the debited transfers of one shard inside its audit snapshot.
    #[tracing::instrument(skip(self, tx))]
    pub async fn read(&mut self, tx: &deadpool_postgres::Transaction<'_>, shard: &str) -> Result<()> {
        for row in tx.query(SENDERS, &[]).await? {
            let debit = Debit {
                shard: shard.to_string(),
                state: row.get(1),
                from: row.get(2),
                to: row.get(3),
                currency: row.get(4),
                amount: parse_numeric(row.get(5))?,
            };
            self.debited.insert(row.get(0), debit);
        }
        Ok(())
    }
}

/// A receiver credit: the wallet leg of a `transfer_credit` posting.
#[derive(Debug, Clone)]
struct Credit {
    shard: String,
    /// From the receiver's incoming record (none when it is missing, which the shard's
    /// own checks report).
    from: Option<String>,
    to: String,
    currency: String,
    amount: BigInt,
}

/// The receiver credits of every shard (of `only` these transfers when given), each
/// shard read by one statement, so in one snapshot.
#[tracing::instrument(skip_all)]
async fn read_credits(
    router: &Router,
    switching: &super::Switching,
    only: Option<&[Uuid]>,
) -> Result<HashMap<Uuid, Vec<Credit>>> {
    let mut credits: HashMap<Uuid, Vec<Credit>> = HashMap::new();
    for shard in router.shards() {
        let mut client = shard.client().await?;
        let tx = client.transaction().await?;
        super::owned_only(&tx, switching.of(&shard.name)).await?;
        let rows = tx
            .query(
                "SELECT p.reference, i.from_user, a.user_id, a.currency, e.amount::text
                 FROM postings p JOIN entries e USING (posting_id) JOIN accounts a USING (account_id)
                      LEFT JOIN incoming_transfers i ON i.transfer_id = p.reference
                 WHERE p.kind = 'transfer_credit' AND a.user_id IS NOT NULL
                   AND ($1::uuid[] IS NULL OR p.reference = ANY($1))",
                &[&only],
            )
            .await?;
        for row in rows {
            // A credit naming no transfer is reported by the shard's own checks.
            let Some(id) = row.get::<_, Option<Uuid>>(0) else { continue };
            credits.entry(id).or_default().push(Credit {
                shard: shard.name.clone(),
                from: row.get(1),
                to: row.get(2),
                currency: row.get(3),
                amount: parse_numeric(row.get(4))?,
            });
        }
    }
    Ok(credits)
}

/// The sender transfers with these ids, in any state and on any shard.
#[tracing::instrument(skip_all)]
async fn read_senders(
    router: &Router,
    switching: &super::Switching,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, (Debit, String)>> {
    let mut found = HashMap::new();
    for shard in router.shards() {
        let mut client = shard.client().await?;
        let tx = client.transaction().await?;
        super::owned_only(&tx, switching.of(&shard.name)).await?;
        let rows = tx
            .query(
                "SELECT transfer_id, state, from_user, to_user, currency, amount::text, route FROM transfers
                 WHERE transfer_id = ANY($1)",
                &[&ids],
            )
            .await?;
        for row in rows {
            let debit = Debit {
                shard: shard.name.clone(),
                state: row.get(1),
                from: row.get(2),
                to: row.get(3),
                currency: row.get(4),
                amount: parse_numeric(row.get(5))?,
            };
            found.insert(row.get(0), (debit, row.get(6)));
        }
    }
    Ok(found)
}

/// The first comparison of both sides: problems that are certain at once, and the
/// suspects that must be read again.
#[derive(Debug, Default)]
struct Joined {
    problems: Vec<String>,
    /// Credits whose sender was not seen debited.
    without_sender: Vec<Uuid>,
    /// Completed senders whose credit was not seen.
    without_credit: Vec<Uuid>,
    in_flight: BTreeMap<String, BigInt>,
}

fn join(senders: &Senders, credits: &HashMap<Uuid, Vec<Credit>>) -> Joined {
    let mut joined = Joined::default();
    for (id, list) in credits {
        if list.len() > 1 {
            let shards: Vec<&str> = list.iter().map(|c| c.shard.as_str()).collect();
            joined.problems.push(format!("transfer {id}: credited {} times (on {})", list.len(), shards.join(", ")));
        }
        match senders.debited.get(id) {
            Some(debit) => joined.problems.extend(list.iter().filter_map(|c| mismatch(id, debit, c))),
            None => joined.without_sender.push(*id),
        }
    }
    for (id, debit) in &senders.debited {
        if credits.contains_key(id) {
            continue;
        }
        if debit.state == SenderState::Completed.as_str() {
            joined.without_credit.push(*id);
        } else {
            *joined.in_flight.entry(debit.currency.clone()).or_default() += &debit.amount;
        }
    }
    joined
}

/// Joins the senders read in every shard's snapshot with the credits read after them.
#[tracing::instrument(skip_all)]
pub async fn audit(router: &Router, senders: Senders, switching: &super::Switching) -> Result<CrossShardReport> {
    let credits = read_credits(router, switching, None).await?;
    let Joined { mut problems, without_sender, without_credit, in_flight } = join(&senders, &credits);
    if !without_sender.is_empty() {
        let found = read_senders(router, switching, &without_sender).await?;
        for id in &without_sender {
            for credit in &credits[id] {
                let credited = format!(
                    "transfer {id}: {} credited {} {} to {}",
                    credit.shard, credit.amount, credit.currency, credit.to
                );
                match found.get(id) {
                    Some((debit, _)) if debit_state(&debit.state) => problems.extend(mismatch(id, debit, credit)),
                    Some((debit, route)) => problems.push(format!(
                        "{credited}, but its sender transfer on {} is {} ({route})",
                        debit.shard, debit.state
                    )),
                    None => problems.push(format!("{credited}, but no shard has a sender transfer with this id")),
                }
            }
        }
    }
    if !without_credit.is_empty() {
        let found = read_credits(router, switching, Some(&without_credit)).await?;
        for id in &without_credit {
            let debit = &senders.debited[id];
            match found.get(id) {
                Some(list) => problems.extend(list.iter().filter_map(|c| mismatch(id, debit, c))),
                None => problems.push(format!(
                    "transfer {id}: the sender on {} is completed ({} {} from {} to {}), but no shard credited the receiver",
                    debit.shard, debit.amount, debit.currency, debit.from, debit.to
                )),
            }
        }
    }
    problems.sort();
    Ok(CrossShardReport {
        debited: senders.debited.len(),
        credited: credits.values().map(Vec::len).sum(),
        in_flight: in_flight.into_iter().map(|(c, a)| (c, a.to_string())).collect(),
        rechecked: without_sender.len() + without_credit.len(),
        problems,
    })
}

fn debit_state(state: &str) -> bool {
    matches!(SenderState::parse(state), Some(SenderState::Confirming | SenderState::Completed))
}

/// A problem when the credit is not the transfer the sender debited.
fn mismatch(id: &Uuid, debit: &Debit, credit: &Credit) -> Option<String> {
    let same = credit.to == debit.to
        && credit.currency == debit.currency
        && credit.amount == debit.amount
        && credit.from.as_ref().is_none_or(|from| *from == debit.from);
    (!same).then(|| {
        format!(
            "transfer {id}: {} credited {} {} to {} from {}, but the sender on {} debited {} {} from {} to {}",
            credit.shard,
            credit.amount,
            credit.currency,
            credit.to,
            credit.from.as_deref().unwrap_or("an unrecorded sender"),
            debit.shard,
            debit.amount,
            debit.currency,
            debit.from,
            debit.to
        )
    })
}

impl std::fmt::Display for CrossShardReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cross-shard: {} transfer(s) debited, {} credit(s), {} read again",
            self.debited, self.credited, self.rechecked
        )?;
        for (currency, amount) in &self.in_flight {
            write!(f, "; in flight {currency} {amount}")?;
        }
        for p in &self.problems {
            write!(f, "\n  PROBLEM {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debit(state: SenderState, amount: u32) -> Debit {
        Debit {
            shard: "shard-1".into(),
            state: state.as_str().into(),
            from: "alice".into(),
            to: "bob".into(),
            currency: "EUR".into(),
            amount: amount.into(),
        }
    }

    fn credit(shard: &str, amount: u32) -> Credit {
        Credit {
            shard: shard.into(),
            from: Some("alice".into()),
            to: "bob".into(),
            currency: "EUR".into(),
            amount: amount.into(),
        }
    }

    fn ids() -> [Uuid; 6] {
        std::array::from_fn(|_| Uuid::new_v4())
    }

    #[test]
    fn only_what_cannot_be_in_flight_is_certain_at_once() {
        let [settled, in_flight, confirmed, no_credit, no_sender, twice] = ids();
        let mut senders = Senders::default();
        senders.debited.insert(settled, debit(SenderState::Completed, 30));
        senders.debited.insert(in_flight, debit(SenderState::Confirming, 7));
        senders.debited.insert(confirmed, debit(SenderState::Confirming, 5));
        senders.debited.insert(no_credit, debit(SenderState::Completed, 40));
        senders.debited.insert(twice, debit(SenderState::Completed, 9));
        let credits = HashMap::from([
            (settled, vec![credit("shard-2", 30)]),
            (confirmed, vec![credit("shard-2", 5)]),
            (no_sender, vec![credit("shard-2", 1_000_000)]),
            (twice, vec![credit("shard-2", 9), credit("shard-3", 9)]),
        ]);
        let joined = join(&senders, &credits);
        assert_eq!(joined.problems, vec![format!("transfer {twice}: credited 2 times (on shard-2, shard-3)")]);
        assert_eq!(joined.without_sender, vec![no_sender]);
        assert_eq!(joined.without_credit, vec![no_credit]);
        assert_eq!(joined.in_flight, BTreeMap::from([("EUR".to_string(), BigInt::from(7))]));
    }

    #[test]
    fn a_credit_that_is_not_what_the_sender_debited_is_a_problem() {
        let id = Uuid::new_v4();
        let sent = debit(SenderState::Completed, 30);
        assert_eq!(mismatch(&id, &sent, &credit("shard-2", 30)), None);
        assert_eq!(mismatch(&id, &sent, &Credit { from: None, ..credit("shard-2", 30) }), None);
        for wrong in [
            credit("shard-2", 31),
            Credit { to: "carol".into(), ..credit("shard-2", 30) },
            Credit { currency: "USD".into(), ..credit("shard-2", 30) },
            Credit { from: Some("mallory".into()), ..credit("shard-2", 30) },
        ] {
            let problem = mismatch(&id, &sent, &wrong).expect("a mismatch");
            assert!(problem.starts_with(&format!("transfer {id}: shard-2 credited")), "{problem}");
        }
    }
}
