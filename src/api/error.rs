//! Every error becomes an `application/problem+json` response here, and only here.
//! Each has a stable machine `code`; internal details go to the log, never the client.
use axum::{
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::ledger;

/// An RFC 9457 problem (`application/problem+json`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `/problems/<code>`.
    #[serde(rename = "type")]
    #[schema(example = "/problems/insufficient_funds")]
    pub kind: String,
    #[schema(value_type = String, example = "Unprocessable Entity")]
    pub title: &'static str,
    #[schema(example = 422)]
    pub status: u16,
    pub detail: String,
    /// The stable machine code to branch on.
    #[schema(value_type = ProblemCode)]
    pub code: &'static str,
}

/// Every stable `code` a problem response can carry.
#[derive(utoipa::ToSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    InvalidRequest,
    InvalidAmount,
    Unauthorized,
    Forbidden,
    NotFound,
    UserNotFound,
    WalletNotFound,
    TransferNotFound,
    UserExists,
    WalletExists,
    AlreadyReversed,
    NotReversible,
    InsufficientFunds,
    CurrencyMismatch,
    SameAccount,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    IdempotencyRequestInProgress,
    MethodNotAllowed,
    RateLimited,
    ShardUnavailable,
    Busy,
    /// 503: the user's bucket is being moved to another shard right now (Retry-After);
    /// the request was not stored under its Idempotency-Key.
    BucketMoving,
    /// 503 on POST /v1/transfers: too many cross-shard transfers in flight (Retry-After).
    Overloaded,
    /// 422 on POST /v1/transfers/batch with `atomic: true`: the senders are on more than
    /// one shard.
    BatchSpansShards,
    /// 400 on deposits and withdrawals: not a valid card number or IBAN.
    InvalidPaymentMethod,
    /// 422 when a payment names an unknown gateway; 404 on a callback path.
    GatewayNotFound,
    /// 503 on deposits and withdrawals: the gateway's circuit breaker is open (Retry-After).
    GatewayUnavailable,
    /// 401 on gateway callbacks: missing, malformed, wrong or stale signature.
    InvalidSignature,
    PaymentNotFound,
    /// 409 on POST /v1/admin/payments/{payment_id}/resolve: the payment is already final.
    PaymentFinal,
    /// 409 on POST /v1/admin/transfers/{transfer_id}/redrive: nothing left to send.
    TransferFinal,
    /// 413 on gateway callbacks: a body over 64 KiB.
    PayloadTooLarge,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    Problem { status: StatusCode, code: &'static str, detail: String },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::Problem { status, code, detail: detail.into() }
    }
    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", detail)
    }
    pub fn invalid_amount(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_amount", detail)
    }
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    /// The status and problem body (for idempotent storage and replay).
    pub fn problem(&self) -> (StatusCode, Problem) {
        let (status, code, detail) = match self {
            ApiError::Problem { status, code, detail } => (*status, *code, detail.clone()),
            ApiError::Unexpected(e) => {
                tracing::error!(error = ?e, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "an internal error occurred; it has been logged".into())
            }
        };
        let title = status.canonical_reason().unwrap_or("Error");
        (status, Problem { kind: format!("/problems/{code}"), title, status: status.as_u16(), detail, code })
    }

    pub fn is_internal(&self) -> bool {
        matches!(self, ApiError::Unexpected(_))
    }
}

pub fn problem_response(status: StatusCode, body: Vec<u8>) -> Response {
    let content_type = if status.is_client_error() || status.is_server_error() {
        "application/problem+json"
    } else {
        "application/json"
    };
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, problem) = self.problem();
        let mut response = problem_response(status, serde_json::to_vec(&problem).unwrap_or_default());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Every 503 is a "come back later" (a shard down or busy): say when. Callers
            // with a better estimate (`with_retry_after`) overwrite it.
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(1u64));
        }
        response
    }
}

/// The codes of deposits, withdrawals and gateway callbacks.
impl ApiError {
    pub fn invalid_payment_method(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_payment_method", detail)
    }
    /// 422 when a payment names it, 404 for a callback path.
    pub fn gateway_not_found(status: StatusCode, gateway: &str) -> Self {
        Self::new(status, "gateway_not_found", format!("no payment gateway named '{gateway}'"))
    }
    pub fn invalid_signature() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_signature", "missing, malformed, wrong or stale signature")
    }
    pub fn payment_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "payment_not_found", "payment not found")
    }
    /// 413 on gateway callbacks.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("the body exceeds {limit} bytes"))
    }
}

/// `d` in whole seconds, rounded up.
pub fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_nanos().div_ceil(1_000_000_000) as u64
}

impl ApiError {
    /// The problem with a `Retry-After` header: `wait` in whole seconds, rounded up, at
    /// least 1 (503 `overloaded`, `gateway_unavailable`; 429 `rate_limited`).
    pub fn with_retry_after(self, wait: std::time::Duration) -> Response {
        let mut response = self.into_response();
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(ceil_secs(wait).max(1)));
        response
    }
}

/// 503 `gateway_unavailable` with `Retry-After`: the gateway's circuit breaker is open.
pub fn gateway_unavailable(gateway: &str, retry_after: std::time::Duration) -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "gateway_unavailable",
        format!("gateway '{gateway}' is failing; retry later"),
    )
    .with_retry_after(retry_after)
}

impl From<ledger::Error> for ApiError {
    fn from(e: ledger::Error) -> Self {
        use ledger::Error as L;
        use StatusCode as S;
        let (status, code) = match &e {
            L::UserNotFound => (S::NOT_FOUND, "user_not_found"),
            L::WalletNotFound => (S::NOT_FOUND, "wallet_not_found"),
            L::TransferNotFound => (S::NOT_FOUND, "transfer_not_found"),
            L::EntryNotFound => (S::NOT_FOUND, "not_found"),
            L::UserExists => (S::CONFLICT, "user_exists"),
            L::WalletExists => (S::CONFLICT, "wallet_exists"),
            L::AlreadyReversed => (S::CONFLICT, "already_reversed"),
            L::NotReversible(_) => (S::UNPROCESSABLE_ENTITY, "not_reversible"),
            L::InsufficientFunds => (S::UNPROCESSABLE_ENTITY, "insufficient_funds"),
            L::CurrencyMismatch => (S::UNPROCESSABLE_ENTITY, "currency_mismatch"),
            L::SameAccount => (S::UNPROCESSABLE_ENTITY, "same_account"),
            L::Shard(crate::sharding::Error::Unavailable { .. }) => (S::SERVICE_UNAVAILABLE, "shard_unavailable"),
            L::Shard(shard) if shard.is_moved() => {
                tracing::info!(error = %e, "request refused: bucket moving");
                return ApiError::new(
                    S::SERVICE_UNAVAILABLE,
                    "bucket_moving",
                    "this user's data is being moved between shards; retry shortly with the same Idempotency-Key",
                );
            }
            L::Db(db) if crate::storage::is_unavailable(db) => (S::SERVICE_UNAVAILABLE, "shard_unavailable"),
            L::Db(db) if crate::storage::is_lock_timeout(db) || crate::storage::is_conflict(db) => {
                (S::SERVICE_UNAVAILABLE, "busy")
            }
            L::Shard(_) | L::Db(_) | L::Invariant(_) => return ApiError::Unexpected(e.into()),
        };
        if status == S::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %e, "request refused: dependency unavailable");
            return ApiError::new(status, code, "a shard is unavailable or busy; retry with the same Idempotency-Key");
        }
        ApiError::new(status, code, e.to_string())
    }
}

impl crate::sharding::MaybeMoved for ApiError {
    fn is_moved(&self) -> bool {
        matches!(self, ApiError::Problem { code: "bucket_moving", .. })
    }
}

impl From<crate::transfer::Error> for ApiError {
    fn from(e: crate::transfer::Error) -> Self {
        use crate::transfer::Error as T;
        match e {
            T::TransferFinal => ApiError::new(StatusCode::CONFLICT, "transfer_final", e.to_string()),
            T::Invariant(_) => ApiError::Unexpected(e.into()),
            T::Ledger(e) => e.into(),
        }
    }
}

impl From<crate::payments::Error> for ApiError {
    fn from(e: crate::payments::Error) -> Self {
        use crate::payments::Error as P;
        match e {
            P::PaymentNotFound => ApiError::new(StatusCode::NOT_FOUND, "payment_not_found", e.to_string()),
            P::PaymentFinal => ApiError::new(StatusCode::CONFLICT, "payment_final", e.to_string()),
            P::Invariant(_) => ApiError::Unexpected(e.into()),
            P::Ledger(e) => e.into(),
        }
    }
}

impl From<crate::sharding::Error> for ApiError {
    fn from(e: crate::sharding::Error) -> Self {
        ledger::Error::from(e).into()
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        ledger::Error::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{payments, transfer};

    fn answer(e: impl Into<ApiError>) -> (u16, &'static str) {
        let (status, problem) = e.into().problem();
        (status.as_u16(), problem.code)
    }

    /// Each layer's errors keep the status and code they had when the ledger's error was
    /// everyone's; a lower layer's error carried by a higher one is answered as its own.
    #[test]
    fn every_layers_errors_keep_their_problem_codes() {
        assert_eq!(answer(transfer::Error::TransferFinal), (409, "transfer_final"));
        assert_eq!(answer(transfer::Error::Invariant("x".into())), (500, "internal"));
        assert_eq!(answer(transfer::Error::from(ledger::Error::InsufficientFunds)), (422, "insufficient_funds"));
        assert_eq!(answer(transfer::Error::from(ledger::Error::TransferNotFound)), (404, "transfer_not_found"));
        assert_eq!(answer(payments::Error::PaymentNotFound), (404, "payment_not_found"));
        assert_eq!(answer(payments::Error::PaymentFinal), (409, "payment_final"));
        assert_eq!(answer(payments::Error::Invariant("x".into())), (500, "internal"));
        assert_eq!(answer(payments::Error::from(ledger::Error::WalletNotFound)), (404, "wallet_not_found"));
        let unknown = crate::sharding::Error::UnknownBucket(7);
        assert_eq!(answer(payments::Error::from(unknown)), (500, "internal"));
    }
}
