//! Ledger rules that complete inside one shard transaction: operator adjustments,
//! same-shard transfers and reversals.
use crate::storage::Cached;
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use num_bigint::BigInt;
use uuid::Uuid;

use super::{
    accounts::{self, parse_numeric},
    posting::{self, Account, Kind, Leg, PostedEntry, Posting, System},
    queries::{TransferView, TRANSFER_COLUMNS},
    Error, Result,
};
use crate::domain::{transfer_state::state_sql, Amount, Currency, RoutableId, UserId};

/// The read models derive their OpenAPI schema here, so the document cannot drift from
/// what is serialised (a derive only: the ledger knows nothing of HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Credit,
    Debit,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AdjustmentView {
    pub entry_id: Uuid,
    pub posting_id: Uuid,
    pub user_id: String,
    pub currency: String,
    pub amount: String,
    pub direction: Direction,
    pub balance_after: Option<String>,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

fn signed(amount: &Amount) -> BigInt {
    BigInt::from(amount.value().clone())
}

/// Credits or debits a wallet against the shard's adjustments account.
#[tracing::instrument(skip(tx, amount))]
pub async fn adjust(
    tx: &Transaction<'_>,
    bucket: u16,
    user: &UserId,
    currency: &Currency,
    amount: &Amount,
    direction: Direction,
    reason: &str,
) -> Result<AdjustmentView> {
    let wallet = match accounts::lock_wallets(tx, &[user], currency).await?.pop() {
        Some(w) => w,
        None => return Err(accounts::missing_wallet_error(tx, user).await?),
    };
    let delta = match direction {
        Direction::Credit => signed(amount),
        Direction::Debit if wallet.available() >= signed(amount) => -signed(amount),
        Direction::Debit => return Err(Error::InsufficientFunds),
    };
    let (posting_id, entries) = posting::post(
        tx,
        Posting {
            kind: Kind::Adjustment,
            reference: None,
            reverses: None,
            description: Some(reason),
            bucket,
            currency: currency.as_str(),
            legs: vec![
                Leg { account: Account::Id(wallet.account_id), amount: delta.clone() },
                Leg { account: Account::System(System::Adjustments), amount: -delta },
            ],
        },
    )
    .await?;
    let entry = wallet_entry(&entries, wallet.account_id)?;
    Ok(AdjustmentView {
        entry_id: entry.entry_id,
        posting_id,
        user_id: user.to_string(),
        currency: currency.to_string(),
        amount: amount.to_string(),
        direction,
        balance_after: entry.balance_after.clone(),
        reason: reason.to_string(),
        created_at: entry.created_at,
    })
}

fn wallet_entry(entries: &[PostedEntry], account_id: i64) -> Result<&PostedEntry> {
    entries
        .iter()
        .find(|e| e.account_id == account_id)
        .ok_or_else(|| Error::Invariant("posting lost its wallet leg".into()))
}

pub struct TransferRequest<'a> {
    pub transfer_id: RoutableId,
    pub from: &'a UserId,
    pub to: &'a UserId,
    pub currency: &'a Currency,
    pub amount: &'a Amount,
    pub description: Option<&'a str>,
}

/// A transfer between two users of this shard: one transaction, completed at once.
#[tracing::instrument(skip_all, fields(transfer_id = %req.transfer_id))]
pub async fn transfer(tx: &Transaction<'_>, req: &TransferRequest<'_>) -> Result<TransferView> {
    if req.from == req.to {
        return Err(Error::SameAccount);
    }
    let wallets = accounts::lock_wallets(tx, &[req.from, req.to], req.currency).await?;
    let find = |user: &UserId| wallets.iter().find(|w| w.user_id == user.as_str());
    let Some(sender) = find(req.from) else {
        return Err(accounts::missing_wallet_error(tx, req.from).await?);
    };
    let Some(receiver) = find(req.to) else {
        return Err(match accounts::missing_wallet_error(tx, req.to).await? {
            Error::WalletNotFound => Error::CurrencyMismatch,
            other => other,
        });
    };
    let amount = signed(req.amount);
    if sender.available() < amount {
        return Err(Error::InsufficientFunds);
    }
    let id = req.transfer_id.uuid();
    let posting = posting::post(
        tx,
        Posting {
            kind: Kind::Transfer,
            reference: Some(id),
            reverses: None,
            description: req.description,
            bucket: req.transfer_id.bucket(),
            currency: req.currency.as_str(),
            legs: vec![
                Leg { account: Account::Id(sender.account_id), amount: -amount.clone() },
                Leg { account: Account::Id(receiver.account_id), amount },
            ],
        },
    );
    let sql = format!(
        "INSERT INTO transfers (transfer_id, from_user, to_user, currency, amount, description, route, state, completed_at)
         VALUES ($1, $2, $3, $4, $5::text::numeric, $6, 'local', {}, now())
         RETURNING {TRANSFER_COLUMNS}",
        state_sql!(Sender::Completed)
    );
    let amount_text = req.amount.to_string();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
        [&id, &req.from.as_str(), &req.to.as_str(), &req.currency.as_str(), &amount_text, &req.description];
    // Both statements are sent before either answer is awaited: one round trip saved.
    let (_, row) = futures::try_join!(posting, async { Ok(tx.cached_query_one(&sql, &params).await?) })?;
    Ok(TransferView::from_row(&row))
}

/// What an idempotent request stores beside its effect: its key and fingerprint, and the
/// answer a retry replays (`api::idempotency`).
pub struct StoredAnswer<'a> {
    pub caller: &'a str,
    pub key: &'a str,
    pub request_hash: &'a [u8],
    pub status: u16,
    pub body: &'a [u8],
    /// The bucket the request routed by, recorded unless `own` finds it through the caller.
    pub bucket: u32,
    pub own: bool,
}

/// The transfer `transfer_in_one_call` records, as the API shows it, completed at `at`
/// (microseconds, as the server stores time).
pub fn completed_view(req: &TransferRequest<'_>, at: DateTime<Utc>) -> TransferView {
    use super::queries::{TransferRoute, TransferStatus};
    TransferView {
        transfer_id: req.transfer_id.uuid(),
        status: TransferStatus::Completed,
        state: crate::domain::SenderState::Completed.as_str().to_string(),
        from_user_id: req.from.to_string(),
        to_user_id: req.to.to_string(),
        currency: req.currency.to_string(),
        amount: req.amount.to_string(),
        description: req.description.map(str::to_string),
        route: TransferRoute::Local,
        reason: None,
        created_at: at,
        updated_at: at,
        completed_at: Some(at),
        stuck_at: None,
    }
}

/// A same-shard transfer and its stored answer in one statement (V13): true when it
/// committed. False when it wrote nothing because it could not simply complete (the
/// shard does not own a bucket, a wallet is missing, funds are short, or the key was
/// taken): the general path (`transfer` in a transaction of the caller's) decides then.
/// `answer` must be `completed_view(req, at)` as the API serialises it.
#[tracing::instrument(skip_all, fields(transfer_id = %req.transfer_id))]
pub async fn transfer_in_one_call(
    client: &impl GenericClient,
    req: &TransferRequest<'_>,
    receiver_bucket: u32,
    at: DateTime<Utc>,
    answer: &StoredAnswer<'_>,
) -> Result<bool> {
    if req.from == req.to {
        return Ok(false);
    }
    let bucket = req.transfer_id.bucket();
    let ids = [RoutableId::new(bucket).uuid(), RoutableId::new(bucket).uuid(), RoutableId::new(bucket).uuid()];
    let amount = req.amount.to_string();
    let outcome = client
        .cached_query_one(
            "SELECT transfer_in_one_call($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::numeric, $11, $12,
                                         $13, $14, $15, $16, $17, $18, $19)",
            &[
                &(answer.bucket as i32),
                &(receiver_bucket as i32),
                &req.transfer_id.uuid(),
                &ids[0],
                &ids[1],
                &ids[2],
                &req.from.as_str(),
                &req.to.as_str(),
                &req.currency.as_str(),
                &amount,
                &req.description,
                &at,
                &answer.caller,
                &answer.key,
                &answer.request_hash,
                &(answer.status as i16),
                &answer.body,
                &(answer.bucket as i32),
                &answer.own,
            ],
        )
        .await;
    one_call_outcome(outcome, "completed")
}

/// What a one-statement effect with its stored answer (V13, V16) did: true when it
/// answered `done` (committed); false when it wrote nothing, a key another request
/// stored first included (SQLSTATE `KEY_TAKEN`, everything rolled back).
pub(super) fn one_call_outcome(
    outcome: std::result::Result<tokio_postgres::Row, tokio_postgres::Error>,
    done: &str,
) -> Result<bool> {
    match outcome {
        Ok(row) => Ok(row.get::<_, &str>(0) == done),
        Err(e) if e.code().is_some_and(|c| c.code() == KEY_TAKEN) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// V13's SQLSTATE for a key another request stored first (everything rolled back).
const KEY_TAKEN: &str = "SW001";

/// One item of `transfer_batch`: the transfer, the receiver's bucket and the answer a
/// completion stores beside it (`completed_view` as the API serialises it, with its
/// status).
pub struct BatchItem<'a> {
    pub req: TransferRequest<'a>,
    pub receiver_bucket: u32,
    pub answer: StoredAnswer<'a>,
}

/// What `transfer_batch` did with an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Written with its key and `answer`.
    Completed,
    /// Refused for want of funds; its key was stored with the `refusal` given.
    InsufficientFunds,
    /// Nothing written (a bucket not owned here, a wallet missing, one user on both
    /// sides, the key taken): the caller sends it the general way, which decides.
    NotDone,
}

/// Same-shard transfers of one caller in one transaction of the caller's (`tx`, on the
/// shard the caller's map names for every item), decided in request order under locks
/// taken once: every bucket's claim in bucket order, then every wallet in account order,
/// so concurrent batches cannot deadlock. The decisions are made here, on the locked
/// balances; the writes are one statement per table for the whole batch (a wallet's row
/// is updated once, whatever number of items it is in). `refusal` is the body a 422
/// `insufficient_funds` stores under an item's key.
///
/// `Ok(None)`: a key the batch found free was taken by a request in flight meanwhile;
/// the caller must roll back and send the items one by one.
#[tracing::instrument(skip_all, fields(items = items.len()))]
pub async fn transfer_batch(
    tx: &Transaction<'_>,
    items: &[BatchItem<'_>],
    at: DateTime<Utc>,
    caller: &str,
    refusal: &[u8],
) -> Result<Option<Vec<BatchOutcome>>> {
    if items.iter().any(|i| i.answer.caller != caller) {
        return Err(Error::Invariant("a batch stores every key under one caller".into()));
    }
    let buckets: Vec<u32> = items.iter().flat_map(|i| [i.answer.bucket, i.receiver_bucket]).collect();
    let owned = crate::sharding::ownership::claim_owned(tx, &buckets).await?;
    let users: Vec<&str> = items.iter().flat_map(|i| [i.req.from.as_str(), i.req.to.as_str()]).collect();
    let currencies: Vec<&str> = items.iter().map(|i| i.req.currency.as_str()).collect();
    let keys: Vec<&str> = items.iter().map(|i| i.answer.key).collect();
    let wallet_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&users, &currencies];
    let key_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&caller, &keys];
    let caller_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&caller];
    let (locked, taken, known) = futures::try_join!(
        tx.cached_query(
            "SELECT account_id, user_id, currency, balance::text, held::text FROM accounts
             WHERE user_id = ANY($1) AND currency = ANY($2) ORDER BY account_id FOR UPDATE",
            &wallet_params,
        ),
        tx.cached_query("SELECT key FROM idempotency_keys WHERE caller = $1 AND key = ANY($2)", &key_params),
        tx.cached_query_one("SELECT EXISTS (SELECT 1 FROM users WHERE user_id = $1)", &caller_params),
    )?;
    let caller_known: bool = known.get(0);
    let mut wallets = std::collections::HashMap::with_capacity(locked.len());
    for row in &locked {
        let balance = parse_numeric(row.get(3))?;
        let available = &balance - parse_numeric(row.get(4))?;
        let id: i64 = row.get(0);
        wallets.insert(
            (row.get::<_, &str>(1), row.get::<_, &str>(2)),
            BatchWallet { id, balance, available, touched: false },
        );
    }
    let mut taken: std::collections::HashSet<&str> = taken.iter().map(|r| r.get::<_, &str>(0)).collect();
    let mut outcomes = Vec::with_capacity(items.len());
    let mut writes = BatchWrites::default();
    for item in items {
        let (req, answer) = (&item.req, &item.answer);
        let currency = req.currency.as_str();
        let usable = req.from != req.to
            && owned.contains(&answer.bucket)
            && owned.contains(&item.receiver_bucket)
            && wallets.contains_key(&(req.from.as_str(), currency))
            && wallets.contains_key(&(req.to.as_str(), currency))
            && !taken.contains(answer.key);
        if !usable {
            outcomes.push(BatchOutcome::NotDone);
            continue;
        }
        // A later item with this key finds it taken, as a later request would.
        taken.insert(answer.key);
        let amount = signed(req.amount);
        let sender = &wallets[&(req.from.as_str(), currency)];
        let outcome = if sender.available < amount { BatchOutcome::InsufficientFunds } else { BatchOutcome::Completed };
        let (status, body) = match outcome {
            BatchOutcome::Completed => (answer.status as i16, answer.body),
            _ => (422, refusal),
        };
        writes.keys.push(answer.key);
        writes.hashes.push(answer.request_hash);
        writes.statuses.push(status);
        writes.bodies.push(body);
        writes.key_buckets.push((!(answer.own && caller_known)).then_some(answer.bucket as i32));
        outcomes.push(outcome);
        if outcome != BatchOutcome::Completed {
            continue;
        }
        let bucket = req.transfer_id.bucket();
        let posting = RoutableId::new(bucket).uuid();
        for (user, delta) in [(req.from, -amount.clone()), (req.to, amount.clone())] {
            let wallet =
                wallets.get_mut(&(user.as_str(), currency)).ok_or_else(|| Error::Invariant("wallet lost".into()))?;
            wallet.balance += &delta;
            wallet.available += &delta;
            wallet.touched = true;
            writes.entry_ids.push(RoutableId::new(bucket).uuid());
            writes.entry_postings.push(posting);
            writes.entry_accounts.push(wallet.id);
            writes.entry_amounts.push(delta.to_string());
            writes.entry_balances.push(wallet.balance.to_string());
        }
        writes.postings.push(posting);
        writes.transfers.push(req.transfer_id.uuid());
        writes.froms.push(req.from.as_str());
        writes.tos.push(req.to.as_str());
        writes.currencies.push(currency);
        writes.amounts.push(req.amount.to_string());
        writes.descriptions.push(req.description);
    }
    if writes.keys.is_empty() {
        return Ok(Some(outcomes));
    }
    let stored = tx
        .cached_execute(
            "INSERT INTO idempotency_keys (caller, key, request_hash, status_code, response_body, bucket)
             SELECT $1, k.key, k.hash, k.status, k.body, k.bucket
             FROM unnest($2::text[], $3::bytea[], $4::smallint[], $5::bytea[], $6::integer[]) AS k(key, hash, status, body, bucket)
             ON CONFLICT DO NOTHING",
            &[&caller, &writes.keys, &writes.hashes, &writes.statuses, &writes.bodies, &writes.key_buckets],
        )
        .await?;
    if stored != writes.keys.len() as u64 {
        return Ok(None);
    }
    if writes.transfers.is_empty() {
        return Ok(Some(outcomes));
    }
    let (ids, balances): (Vec<i64>, Vec<String>) =
        wallets.values().filter(|w| w.touched).map(|w| (w.id, w.balance.to_string())).unzip();
    tx.cached_execute(
        "WITH moved AS (
             UPDATE accounts a SET balance = w.balance, updated_at = now()
             FROM unnest($1::bigint[], $2::text[]::numeric[]) AS w(id, balance) WHERE a.account_id = w.id
         ), legs AS (
             INSERT INTO entries (entry_id, posting_id, account_id, amount, balance_after)
             SELECT * FROM unnest($3::uuid[], $4::uuid[], $5::bigint[], $6::text[]::numeric[], $7::text[]::numeric[])
         ), posted AS (
             INSERT INTO postings (posting_id, kind, reference, description)
             SELECT p.id, 'transfer', p.reference, p.description FROM unnest($8::uuid[], $9::uuid[], $10::text[]) AS p(id, reference, description)
         )
         INSERT INTO transfers (transfer_id, from_user, to_user, currency, amount, description, route, state,
                                created_at, updated_at, completed_at)
         SELECT t.id, t.from_user, t.to_user, t.currency, t.amount, t.description, 'local', 'completed', $15, $15, $15
         FROM unnest($9::uuid[], $11::text[], $12::text[], $13::text[], $14::text[]::numeric[], $10::text[])
              AS t(id, from_user, to_user, currency, amount, description)",
        &[
            &ids,
            &balances,
            &writes.entry_ids,
            &writes.entry_postings,
            &writes.entry_accounts,
            &writes.entry_amounts,
            &writes.entry_balances,
            &writes.postings,
            &writes.transfers,
            &writes.descriptions,
            &writes.froms,
            &writes.tos,
            &writes.currencies,
            &writes.amounts,
            &at,
        ],
    )
    .await?;
    Ok(Some(outcomes))
}

struct BatchWallet {
    id: i64,
    balance: BigInt,
    available: BigInt,
    touched: bool,
}

/// The rows a batch writes, a column per array (`unnest`).
#[derive(Default)]
struct BatchWrites<'a> {
    keys: Vec<&'a str>,
    hashes: Vec<&'a [u8]>,
    statuses: Vec<i16>,
    bodies: Vec<&'a [u8]>,
    key_buckets: Vec<Option<i32>>,
    entry_ids: Vec<Uuid>,
    entry_postings: Vec<Uuid>,
    entry_accounts: Vec<i64>,
    entry_amounts: Vec<String>,
    entry_balances: Vec<String>,
    postings: Vec<Uuid>,
    transfers: Vec<Uuid>,
    froms: Vec<&'a str>,
    tos: Vec<&'a str>,
    currencies: Vec<&'a str>,
    amounts: Vec<String>,
    descriptions: Vec<Option<&'a str>>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Reversal)]
pub struct ReversalView {
    pub posting_id: Uuid,
    pub reverses_entry_id: Uuid,
    pub reverses_posting_id: Uuid,
    pub entries: Vec<ReversalEntry>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ReversalEntry {
    pub entry_id: Uuid,
    pub amount: String,
    pub balance_after: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Compensates the posting an entry belongs to with its mirror image. Nothing is
/// deleted; a posting is reversed at most once (a unique key guarantees it).
#[tracing::instrument(skip(tx))]
pub async fn reverse(tx: &Transaction<'_>, entry_id: &RoutableId) -> Result<ReversalView> {
    let row = tx
        .cached_query_opt(
            "SELECT p.posting_id, p.kind, a.currency FROM entries e
             JOIN postings p USING (posting_id) JOIN accounts a USING (account_id)
             WHERE e.entry_id = $1",
            &[&entry_id.uuid()],
        )
        .await?
        .ok_or(Error::EntryNotFound)?;
    let (original, kind, currency): (Uuid, String, String) = (row.get(0), row.get(1), row.get(2));
    match Kind::parse(&kind) {
        Some(Kind::Adjustment | Kind::Transfer) => {}
        Some(Kind::Reversal) => return Err(Error::NotReversible("a reversal cannot itself be reversed")),
        _ => {
            return Err(Error::NotReversible(
                "a cross-shard transfer leg is settled by its transfer; send a new transfer to move the money back",
            ))
        }
    }
    // Lock the wallets first (fixed order), then decide: a concurrent reversal of the
    // same posting waits here and then sees the first one.
    let legs = tx
        .cached_query(
            "SELECT a.account_id, e.amount::text, a.balance::text, a.held::text
             FROM entries e JOIN accounts a USING (account_id)
             WHERE e.posting_id = $1 ORDER BY a.account_id FOR UPDATE OF a",
            &[&original],
        )
        .await?;
    // A posting split by a bucket move has legs on two shards; reversing it here would
    // undo one side only. Split: a leg stands for legs that left (`resharding`), or a
    // leg is a wallet's whose bucket left (until cleanup replaces it with a stand-in).
    let split = tx
        .cached_query_one(
            "SELECT EXISTS (SELECT 1 FROM entries e JOIN accounts a USING (account_id)
                                 LEFT JOIN users u ON u.user_id = a.user_id
                                 LEFT JOIN bucket_owners o ON o.bucket = u.bucket
                            WHERE e.posting_id = $1 AND (a.system_name = 'resharding' OR o.state = 'moved'))",
            &[&original],
        )
        .await?;
    if split.get::<_, bool>(0) {
        return Err(Error::NotReversible(
            "its users are on different shards now; send a new transfer to move the money back",
        ));
    }
    // The reversal writes every wallet of the posting, and this shard must own them all
    // (a transfer's receiver may be in another bucket, moved away since).
    let buckets = tx
        .cached_query(
            "SELECT DISTINCT u.bucket FROM entries e JOIN accounts a USING (account_id)
             JOIN users u ON u.user_id = a.user_id WHERE e.posting_id = $1 AND u.bucket IS NOT NULL",
            &[&original],
        )
        .await?;
    for row in buckets {
        let bucket: i32 = row.get(0);
        crate::sharding::ownership::check_write(tx, bucket as u32).await?;
    }
    if tx.cached_query_opt("SELECT 1 FROM postings WHERE reverses = $1", &[&original]).await?.is_some() {
        return Err(Error::AlreadyReversed);
    }
    let mut mirror = Vec::with_capacity(legs.len());
    for leg in &legs {
        let amount = parse_numeric(leg.get(1))?;
        let balance: Option<&str> = leg.get(2);
        if let Some(balance) = balance {
            let available = parse_numeric(balance)? - parse_numeric(leg.get(3))?;
            if amount > BigInt::from(0) && available < amount {
                return Err(Error::InsufficientFunds);
            }
        }
        mirror.push(Leg { account: Account::Id(leg.get(0)), amount: -amount });
    }
    // The locks above serialise reversals that take them; one that committed without
    // them is only found by the unique key, after the check. A failed statement aborts
    // the whole transaction, and the caller still has to store the refusal with its
    // Idempotency-Key: the savepoint keeps the transaction usable.
    tx.batch_execute("SAVEPOINT reversal").await?;
    let result = posting::post(
        tx,
        Posting {
            kind: Kind::Reversal,
            reference: Some(original),
            reverses: Some(original),
            description: Some("reversal"),
            bucket: entry_id.bucket(),
            currency: &currency,
            legs: mirror,
        },
    )
    .await;
    let (posting_id, entries) = match result {
        Err(Error::Db(e)) if is_second_reversal(&e) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT reversal").await?;
            return Err(Error::AlreadyReversed);
        }
        other => other?,
    };
    Ok(ReversalView {
        posting_id,
        reverses_entry_id: entry_id.uuid(),
        reverses_posting_id: original,
        entries: entries
            .into_iter()
            .map(|e| ReversalEntry {
                entry_id: e.entry_id,
                amount: e.amount.to_string(),
                balance_after: e.balance_after,
                created_at: e.created_at,
            })
            .collect(),
    })
}

fn is_second_reversal(e: &tokio_postgres::Error) -> bool {
    crate::storage::is_unique_violation(e)
        && e.as_db_error().and_then(|d| d.constraint()) == Some("postings_reverses_key")
}
