//! Response bodies as the OpenAPI document shows them. The read models live in
//! `ledger` (which knows nothing of HTTP); these mirror their JSON field for field, and
//! `make fuzz` (Schemathesis) checks every response the service sends against them.
#![allow(dead_code)]
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub const USER_ID_PATTERN: &str = "^[A-Za-z0-9_.-]{1,64}$";
pub const CURRENCY_PATTERN: &str = "^[A-Z]{3}$";
pub const AMOUNT_PATTERN: &str = "^[1-9][0-9]{0,35}$";

fn text(pattern: &str, example: &str, description: &str) -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .pattern(Some(pattern))
            .examples([serde_json::json!(example)])
            .description(Some(description))
            .build(),
    )
}

/// A user id, wherever one is accepted.
pub fn user_id() -> utoipa::openapi::schema::Schema {
    text(USER_ID_PATTERN, "alice", "1-64 characters of `[A-Za-z0-9_.-]`")
}

/// A currency code, wherever one is accepted.
pub fn currency() -> utoipa::openapi::schema::Schema {
    text(CURRENCY_PATTERN, "EUR", "three upper-case letters")
}

/// An amount in minor units: a string of 1-36 digits without leading zero, or a
/// positive JSON integer up to 2^64-1. Responses always use the string form.
pub fn amount_input() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
    let text = ObjectBuilder::new().schema_type(SchemaType::Type(Type::String)).pattern(Some(AMOUNT_PATTERN)).build();
    let integer = ObjectBuilder::new().schema_type(SchemaType::Type(Type::Integer)).minimum(Some(1.0)).build();
    Schema::OneOf(
        OneOfBuilder::new()
            .item(text)
            .item(integer)
            .description(Some("minor units: a digit string (up to 36 digits, no leading zero) or a positive integer"))
            .build(),
    )
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserPath {
    /// The user id (1-64 characters of `[A-Za-z0-9_.-]`).
    #[param(schema_with = user_id)]
    pub user_id: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CurrencyPath {
    /// Three upper-case letters.
    #[param(schema_with = currency)]
    pub currency: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TransferPath {
    /// A transfer id as returned by `POST /v1/transfers`.
    pub transfer_id: Uuid,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EntryPath {
    /// An entry id as listed in a wallet's entries.
    pub entry_id: Uuid,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyHeader {
    /// 1-255 visible ASCII characters, unique per intended effect. A retry with the
    /// same key and request replays the first response (`Idempotent-Replayed: true`);
    /// the same key with another request is `422 idempotency_key_reused`.
    #[param(rename = "Idempotency-Key", min_length = 1, max_length = 255, pattern = "^[!-~]{1,255}$")]
    pub idempotency_key: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct User {
    pub user_id: String,
    pub created_at: DateTime<Utc>,
}

#[derive(ToSchema)]
pub struct UserWithWallets {
    pub user_id: String,
    pub created_at: DateTime<Utc>,
    pub wallets: Vec<Wallet>,
}

#[derive(ToSchema)]
pub struct Wallet {
    pub user_id: String,
    pub currency: String,
    /// Minor units, as a string.
    #[schema(example = "5000")]
    pub balance: String,
    /// Held for cross-shard transfers in flight.
    pub held: String,
    /// `balance - held`.
    pub available: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(ToSchema)]
pub struct WalletList {
    pub data: Vec<Wallet>,
}

#[derive(ToSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Adjustment,
    Transfer,
    TransferDebit,
    TransferCredit,
    Reversal,
    /// A deposit through a payment gateway, credited when the gateway confirms it.
    Deposit,
    /// A withdrawal through a payment gateway, debited when the gateway confirms it.
    Withdrawal,
}

#[derive(ToSchema)]
pub struct Entry {
    pub entry_id: Uuid,
    pub kind: EntryKind,
    /// Signed minor units: negative for a debit.
    #[schema(example = "-1000")]
    pub amount: String,
    pub balance_after: Option<String>,
    /// The transfer id, for transfer entries; the payment id, for deposit and
    /// withdrawal entries.
    pub reference: Option<Uuid>,
    pub posting_id: Uuid,
    pub created_at: DateTime<Utc>,
}

#[derive(ToSchema)]
pub struct EntryPage {
    pub data: Vec<Entry>,
    /// Pass back as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TransferStateQuery {
    /// `stuck` (default), `trying`, `confirming`, `completed` or `cancelled`.
    #[param(pattern = "^(stuck|trying|confirming|completed|cancelled)$")]
    pub state: Option<String>,
}

#[derive(ToSchema)]
pub struct TransferPage {
    pub data: Vec<crate::ledger::TransferView>,
    pub next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct Reversal {
    pub posting_id: Uuid,
    pub reverses_entry_id: Uuid,
    pub reverses_posting_id: Uuid,
    pub entries: Vec<ReversalEntry>,
}

#[derive(ToSchema)]
pub struct ReversalEntry {
    pub entry_id: Uuid,
    pub amount: String,
    pub balance_after: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(ToSchema)]
pub struct AuditReport {
    pub ok: bool,
    pub shards: Vec<ShardAudit>,
    /// Per currency, the sum of every account on every shard: must be zero.
    pub totals: BTreeMap<String, String>,
    pub problems: Vec<String>,
    /// Both sides of every cross-shard transfer joined over the shards.
    pub cross_shard: CrossShardAudit,
}

#[derive(ToSchema)]
pub struct ShardAudit {
    pub shard: String,
    pub wallets: i64,
    pub postings: i64,
    pub entries: i64,
    pub totals: BTreeMap<String, BTreeMap<String, String>>,
    /// Per currency: the transit account, `balance = sent - received`.
    pub transit: BTreeMap<String, TransitAudit>,
    pub problems: Vec<String>,
}

#[derive(ToSchema)]
pub struct TransitAudit {
    pub balance: String,
    /// Outgoing cross-shard transfers debited (`confirming` or `completed`).
    pub sent: String,
    /// Incoming cross-shard transfers credited (`confirmed`).
    pub received: String,
}

#[derive(ToSchema)]
pub struct CrossShardAudit {
    pub debited: i64,
    pub credited: i64,
    /// Per currency, debited transfers whose credit was not seen yet.
    pub in_flight: BTreeMap<String, String>,
    pub rechecked: i64,
    pub problems: Vec<String>,
}

#[derive(ToSchema)]
pub struct DeadLetters {
    pub topic: String,
    pub total: i64,
    pub pending: i64,
}

#[derive(ToSchema)]
pub struct Health {
    #[schema(example = "alive")]
    pub status: String,
}

#[derive(ToSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    Up,
    Down,
}

#[derive(ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: String,
    /// What did not answer.
    pub down: Vec<String>,
    /// Per shard name and `broker`.
    pub checks: BTreeMap<String, CheckState>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PaymentPath {
    /// A payment id as returned by `POST /v1/deposits` or `POST /v1/withdrawals`.
    pub payment_id: Uuid,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct GatewayPath {
    /// A configured gateway's name.
    #[param(example = "gateway_a")]
    pub gateway: String,
}

/// The signature headers of gateway callbacks: gateway A (`json`) signs with
/// `Gateway-Signature`, gateway B (`xml`) with `X-Signature`; both
/// `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "{t}.{raw body}")>`.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct CallbackSignature {
    /// Gateway A's signature.
    #[param(rename = "Gateway-Signature", example = "t=1700000000,v1=5f2b0c9e")]
    pub gateway_signature: Option<String>,
    /// Gateway B's signature.
    #[param(rename = "X-Signature", example = "t=1700000000,v1=5f2b0c9e")]
    pub x_signature: Option<String>,
}

/// A card (12-19 digits passing the Luhn check; spaces are ignored) or an IBAN
/// (passing its mod-97 check; spaces are ignored).
#[derive(ToSchema, serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PaymentMethodInput {
    Card {
        #[schema(example = "4242 4242 4242 4242")]
        number: String,
    },
    Iban {
        #[schema(example = "DE89 3704 0044 0532 0130 00")]
        iban: String,
    },
}

/// The payment method as responses show it: its type and last four characters.
#[derive(ToSchema, serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MaskedPaymentMethod {
    Card {
        #[schema(example = "4242")]
        last4: String,
    },
    Iban {
        #[schema(example = "3000")]
        last4: String,
    },
}

#[derive(ToSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentKind {
    Deposit,
    Withdrawal,
}

#[derive(ToSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Pending,
    Succeeded,
    Failed,
}

/// The internal state: `created`, `submitted` and `needs_review` are all `pending`.
/// `needs_review`: the deadline passed while the gateway may hold the payment; the hold
/// is kept until the gateway answers or an operator resolves it.
#[derive(ToSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentState {
    Created,
    Submitted,
    NeedsReview,
    Succeeded,
    Failed,
}

/// `POST /v1/admin/payments/{payment_id}/resolve`: an operator's decision.
#[derive(ToSchema)]
pub struct PaymentResolution {
    pub outcome: ResolutionOutcome,
    /// Why (kept with the payment), 1-1000 characters.
    #[schema(example = "confirmed paid in the gateway's dashboard")]
    pub note: String,
}

#[derive(ToSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolutionOutcome {
    Succeeded,
    Failed,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PaymentStateQuery {
    /// Only payments in this state (default `needs_review`).
    #[param(inline)]
    pub state: Option<PaymentState>,
}

#[derive(ToSchema)]
pub struct Payment {
    pub payment_id: Uuid,
    pub kind: PaymentKind,
    pub user_id: String,
    pub currency: String,
    /// Minor units, as a string.
    #[schema(example = "5000")]
    pub amount: String,
    #[schema(example = "gateway_a")]
    pub gateway: String,
    pub status: PaymentStatus,
    pub state: PaymentState,
    /// Why it failed (the gateway's decline reason, `expired`, `resolved_failed`, ...).
    pub reason: Option<String>,
    /// The gateway's id for the payment, once it has one.
    pub gateway_reference: Option<String>,
    pub payment_method: MaskedPaymentMethod,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The operator who resolved it by hand (the token's subject), and their note.
    pub resolved_by: Option<String>,
    pub resolution_note: Option<String>,
}

#[derive(ToSchema)]
pub struct PaymentPage {
    pub data: Vec<Payment>,
    /// Pass back as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// What became of a callback: `duplicate` when this gateway event id was recorded
/// before; `applied` false when it changes nothing or contradicts a final state.
#[derive(ToSchema)]
pub struct CallbackAck {
    pub recorded: bool,
    pub duplicate: bool,
    pub applied: bool,
}

#[derive(ToSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    Closed,
    Open,
    HalfOpen,
}

#[derive(ToSchema)]
pub struct GatewayHealth {
    #[schema(example = "gateway_a")]
    pub gateway: String,
    /// `json` (gateway A's protocol) or `xml` (gateway B's).
    #[schema(example = "json")]
    pub protocol: String,
    pub circuit: Circuit,
    /// Failed share of the recent calls, 0 to 1 (0 with no calls).
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub recent_error_rate: f64,
    /// How many recent calls the rate is over (at most 50).
    pub recent_calls: u64,
    /// Payments of this gateway not final yet, over every shard.
    pub in_flight: i64,
}

#[derive(ToSchema)]
pub struct GatewayList {
    pub data: Vec<GatewayHealth>,
}
