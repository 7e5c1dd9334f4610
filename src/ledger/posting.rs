//! The one writer of ledger entries.
use crate::storage::Cached;
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use num_bigint::BigInt;
use num_traits::Zero;
use uuid::Uuid;

use super::{Error, Result};
use crate::domain::RoutableId;

/// One leg of a posting: a signed amount on one account (credit > 0).
#[derive(Debug, Clone)]
pub struct Leg {
    pub account: Account,
    pub amount: BigInt,
}

/// An account by id (a wallet, usually), or one of the shard's system accounts in the posting's currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    Id(i64),
    System(System),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// Counterpart of operator adjustments (money entering or leaving the system).
    Adjustments,
    /// Money in flight between shards: credited by the sender's shard on confirm,
    /// debited by the receiver's shard when it credits the receiver.
    Transit,
    /// A payment gateway's clearing account (`clearing:<gateway>`): debited by
    /// deposits, credited by withdrawals. Created on first use (`payments::ledger`).
    Clearing(&'static str),
    /// Where a posting is split by a bucket move: the legs of a same-shard transfer whose
    /// two users now live on different shards balance here, on both shards (see
    /// docs/ARCHITECTURE.md "Resharding"); over the cluster these accounts sum to zero.
    Resharding,
}

impl System {
    pub const ALL: [System; 2] = [System::Adjustments, System::Transit];

    pub fn as_str(self) -> &'static str {
        match self {
            System::Adjustments => "adjustments",
            System::Transit => "transit",
            System::Clearing(account) => account,
            System::Resharding => "resharding",
        }
    }

    /// The clearing account of `gateway`. Names are interned: one small allocation per
    /// distinct gateway name for the life of the process.
    pub fn clearing(gateway: &str) -> System {
        use std::{
            collections::HashSet,
            sync::{Mutex, OnceLock},
        };
        static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
        let account = format!("clearing:{gateway}");
        let mut names = NAMES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        let name = match names.get(account.as_str()) {
            Some(name) => *name,
            None => {
                let leaked: &'static str = Box::leak(account.into_boxed_str());
                names.insert(leaked);
                leaked
            }
        };
        System::Clearing(name)
    }
}

// Entries show their posting's kind: the API's `EntryKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = EntryKind)]
pub enum Kind {
    Adjustment,
    Transfer,
    TransferDebit,
    TransferCredit,
    Reversal,
    /// A deposit through a payment gateway (clearing -> wallet), credited when the
    /// gateway confirms it.
    Deposit,
    /// A withdrawal through a payment gateway (wallet -> clearing), debited when the
    /// gateway confirms it.
    Withdrawal,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Adjustment => "adjustment",
            Kind::Transfer => "transfer",
            Kind::TransferDebit => "transfer_debit",
            Kind::TransferCredit => "transfer_credit",
            Kind::Reversal => "reversal",
            Kind::Deposit => "deposit",
            Kind::Withdrawal => "withdrawal",
        }
    }

    pub const ALL: [Kind; 7] = [
        Kind::Adjustment,
        Kind::Transfer,
        Kind::TransferDebit,
        Kind::TransferCredit,
        Kind::Reversal,
        Kind::Deposit,
        Kind::Withdrawal,
    ];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

pub struct Posting<'a> {
    pub kind: Kind,
    /// The transfer or adjustment this posting belongs to.
    pub reference: Option<Uuid>,
    /// For a reversal, the posting it compensates (unique: at most one reversal).
    pub reverses: Option<Uuid>,
    pub description: Option<&'a str>,
    /// Entry ids route to this bucket (any bucket the shard owns).
    pub bucket: u16,
    pub currency: &'a str,
    pub legs: Vec<Leg>,
}

#[derive(Debug, Clone)]
pub struct PostedEntry {
    pub entry_id: Uuid,
    pub account_id: i64,
    pub amount: BigInt,
    pub balance_after: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Inserts a balanced posting and moves the wallet snapshots of its legs, in one
/// statement. Callers have locked the wallets (see `accounts::lock_wallets`) and
/// checked funds; the schema's CHECKs are the last line of defence.
#[tracing::instrument(skip_all, fields(kind = posting.kind.as_str()))]
pub async fn post(tx: &Transaction<'_>, posting: Posting<'_>) -> Result<(Uuid, Vec<PostedEntry>)> {
    let sum: BigInt = posting.legs.iter().map(|l| &l.amount).sum();
    if !sum.is_zero() || posting.legs.len() < 2 || posting.legs.iter().any(|l| l.amount.is_zero()) {
        return Err(Error::Invariant(format!("unbalanced posting {:?}", posting.legs)));
    }
    let posting_id = RoutableId::new(posting.bucket).uuid();
    let entry_ids: Vec<Uuid> = posting.legs.iter().map(|_| RoutableId::new(posting.bucket).uuid()).collect();
    let wallets: Vec<Option<i64>> = posting
        .legs
        .iter()
        .map(|l| match l.account {
            Account::Id(id) => Some(id),
            Account::System(_) => None,
        })
        .collect();
    let systems: Vec<Option<&str>> = posting
        .legs
        .iter()
        .map(|l| match l.account {
            Account::Id(_) => None,
            Account::System(s) => Some(s.as_str()),
        })
        .collect();
    let amounts: Vec<String> = posting.legs.iter().map(|l| l.amount.to_string()).collect();
    let rows = tx
        .cached_query(
            "WITH legs AS (
                 SELECT l.entry_id, l.amount,
                        coalesce(l.wallet_id, (SELECT account_id FROM accounts
                                               WHERE system_name = l.system_name AND currency = $10)) AS account_id
                 FROM unnest($1::uuid[], $2::bigint[], $9::text[], $3::text[]) AS l(entry_id, wallet_id, system_name, amount)
             ), moved AS (
                 UPDATE accounts a SET balance = a.balance + l.amount::numeric, updated_at = now()
                 FROM legs l WHERE a.account_id = l.account_id AND a.balance IS NOT NULL
                 RETURNING a.account_id, a.balance
             ), posting AS (
                 INSERT INTO postings (posting_id, kind, reference, reverses, description)
                 VALUES ($4, $5, $6, $7, $8)
             )
             INSERT INTO entries (entry_id, posting_id, account_id, amount, balance_after)
             SELECT l.entry_id, $4, l.account_id, l.amount::numeric, m.balance
             FROM legs l LEFT JOIN moved m USING (account_id)
             RETURNING entry_id, account_id, amount::text, balance_after::text, created_at",
            &[
                &entry_ids,
                &wallets,
                &amounts,
                &posting_id,
                &posting.kind.as_str(),
                &posting.reference,
                &posting.reverses,
                &posting.description,
                &systems,
                &posting.currency,
            ],
        )
        .await?;
    let entries = rows
        .iter()
        .map(|r| {
            let amount: String = r.get(2);
            Ok(PostedEntry {
                entry_id: r.get(0),
                account_id: r.get(1),
                amount: amount.parse().map_err(|_| Error::Invariant(format!("amount {amount}")))?,
                balance_after: r.get(3),
                created_at: r.get(4),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((posting_id, entries))
}

#[cfg(test)]
mod tests {
    use super::Kind;

    /// An entry's `kind` in the API is the string stored in `postings.kind`.
    #[test]
    fn kinds_serialise_as_they_are_stored() {
        for kind in Kind::ALL {
            assert_eq!(serde_json::to_value(kind).expect("json"), kind.as_str());
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
    }
}
