//! What the OpenAPI document needs that has no other Rust type: the shared user-id,
//! currency and amount patterns, the path, query and header parameters (the handlers
//! read those as plain strings), and the responses several operations share. Request and response bodies derive their
//! schemas on the types that are (de)serialised, beside their handlers or in the
//! layers below, so the document cannot drift from what is sent.
use utoipa::{IntoParams, IntoResponses};
use uuid::Uuid;

use crate::payments::state::State as PaymentState;

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

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TransferStateQuery {
    /// `stuck` (default), `trying`, `confirming`, `completed` or `cancelled`.
    #[param(pattern = "^(stuck|trying|confirming|completed|cancelled)$")]
    pub state: Option<String>,
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

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PaymentStateQuery {
    /// Only payments in this state (default `needs_review`).
    #[param(inline)]
    pub state: Option<PaymentState>,
}

/// The `403` of an operation only admins may call.
#[derive(IntoResponses)]
#[response(status = 403, description = "forbidden: admins only")]
pub struct AdminsOnly;

/// The `403` of a user's data read by another user.
#[derive(IntoResponses)]
#[response(status = 403, description = "forbidden: another user's data")]
pub struct OthersData;

/// The `503` of a new payment while its gateway's circuit is open.
#[derive(IntoResponses)]
#[response(status = 503, description = "gateway_unavailable: the gateway's circuit is open, retry after Retry-After; \
                                        or shard_unavailable / busy: retry later (with the same Idempotency-Key)",
    headers(("Retry-After" = u64, description = "with gateway_unavailable: seconds until a retry can succeed")))]
pub struct GatewayUnavailable;
