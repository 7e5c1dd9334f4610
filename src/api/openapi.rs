//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations
//! and the schemas, served at `/openapi.json`; Swagger UI at `/docs` from assets vendored
//! in `assets/swagger-ui/` (npm `swagger-ui-dist`), so it works with no network.
//!
//! Adding an endpoint is one line in `paths(...)` below plus its annotation. Errors
//! every operation can answer (401 with a token, 429, 500, 503) are added here by
//! [`CommonErrors`], and every problem response gets the `Problem` schema, so an
//! annotation lists only its success bodies and its own 4xx statuses.
pub mod schemas;

use axum::{
    http::header,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use utoipa::{
    openapi::{
        content::ContentBuilder,
        header::HeaderBuilder,
        response::ResponseBuilder,
        schema::{ObjectBuilder, Type},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
        RefOr,
    },
    Modify, OpenApi,
};

use super::{
    batch, callbacks,
    error::{Problem, ProblemCode},
    health, payments, transfers, users,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "shardwallet",
        description = "A wallet and double-entry ledger over PostgreSQL shards, with Try/Confirm/Cancel \
                       transfers between shards. Amounts are integers in minor units, sent and returned as \
                       strings. Errors are `application/problem+json` with a stable `code`.",
        license(name = "Apache-2.0")
    ),
    paths(
        health::health,
        health::ready,
        users::create_user,
        users::get_user,
        users::create_wallet,
        users::list_wallets,
        users::get_wallet,
        users::entries,
        transfers::list_for_user,
        transfers::create,
        batch::create,
        transfers::get,
        users::reverse_entry,
        payments::deposit,
        payments::withdraw,
        payments::get,
        payments::list_for_user,
        callbacks::receive,
        users::adjust,
        health::audit,
        health::dead_letters,
        health::shards,
        payments::admin_gateways,
        transfers::admin_list,
        transfers::admin_redrive,
        payments::admin_list,
        payments::admin_resolve,
        super::http_metrics::scrape,
    ),
    components(schemas(Problem, ProblemCode, batch::BatchProblem)),
    modifiers(&CommonErrors),
    tags(
        (name = "operations", description = "health, readiness, metrics"),
        (name = "users", description = "users and wallets"),
        (name = "transfers", description = "money between users"),
        (name = "payments", description = "deposits and withdrawals through payment gateways, and their callbacks"),
        (name = "admin", description = "operators: adjustments, reversals, audit, dead letters, gateways"),
    )
)]
pub struct ApiDoc;

pub const BEARER: &str = "bearer";

/// Adds the bearer scheme, the errors common to every operation, and the `Problem`
/// body of every 4xx/5xx response that does not name a body of its own.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 JWT with `sub` (user id), `role` (`user` or `admin`), and the configured `iss` and `aud`",
                    ))
                    .build(),
            ),
        );
        let builder = |description: &str| {
            ResponseBuilder::new().description(description).content(
                "application/problem+json",
                ContentBuilder::new().schema(Some(utoipa::openapi::Ref::from_schema_name("Problem"))).build(),
            )
        };
        let problem = |description: &str| -> RefOr<utoipa::openapi::Response> { builder(description).build().into() };
        let limited = |description: &str| -> RefOr<utoipa::openapi::Response> {
            let seconds = |text: &str| {
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0.0)))
                    .description(Some(text))
                    .build()
            };
            builder(description)
                .header("Retry-After", seconds("seconds until a retry can succeed"))
                .header("RateLimit-Limit", seconds("requests allowed at once (the burst)"))
                .header("RateLimit-Remaining", seconds("requests left now: 0"))
                .header("RateLimit-Reset", seconds("seconds until the burst is whole again"))
                .build()
                .into()
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            let operations = [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
            for op in operations.into_iter().flatten() {
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let responses = &mut op.responses.responses;
                for (status, response) in responses.iter_mut() {
                    if let RefOr::T(r) = response {
                        if r.content.is_empty() && (status.starts_with('4') || status.starts_with('5')) {
                            // Headers the annotation names (Retry-After) stay.
                            let headers = std::mem::take(&mut r.headers);
                            let mut with_body = builder(&r.description.clone()).build();
                            with_body.headers = headers;
                            *response = with_body.into();
                        }
                    }
                }
                let mut add = |status: &str, description: &str| {
                    responses.entry(status.to_string()).or_insert_with(|| problem(description));
                };
                if secured {
                    add("401", "unauthorized: missing, malformed, expired or forged bearer token");
                }
                if path.starts_with("/v1/") {
                    add("400", "invalid_request: a malformed parameter or body");
                    add("503", "shard_unavailable or busy: retry later (with the same Idempotency-Key)");
                    add("500", "internal: an unexpected error (logged)");
                    let description = "rate_limited: too many requests from this caller; see Retry-After";
                    responses.entry("429".to_string()).or_insert_with(|| limited(description));
                }
            }
        }
    }
}

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// `/openapi.json` and `/docs` (Swagger UI).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/openapi.json", get(|| async { Json(document()) }))
        .route("/docs", get(|| async { asset("text/html; charset=utf-8", INDEX.as_bytes()) }))
        .route("/docs/", get(|| async { asset("text/html; charset=utf-8", INDEX.as_bytes()) }))
        .route("/docs/swagger-ui.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/docs/swagger-ui-bundle.js", get(|| async { asset("text/javascript; charset=utf-8", BUNDLE) }))
        .route("/docs/swagger-initializer.js", get(|| async { asset("text/javascript; charset=utf-8", INIT) }))
}

const INDEX: &str = include_str!("../../assets/swagger-ui/index.html");
const INIT: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-initializer.js");
const CSS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css");
const BUNDLE: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js");

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=3600")], body).into_response()
}

#[cfg(test)]
mod tests {
    /// Bodies keep their required fields and the one id and currency pattern; views
    /// derived elsewhere are registered.
    #[test]
    fn bodies_require_their_fields_with_the_shared_patterns() {
        let doc = serde_json::to_value(super::document()).expect("json");
        let schemas = &doc["components"]["schemas"];
        let transfer = &schemas["NewTransfer"];
        for field in ["from_user_id", "to_user_id", "currency", "amount"] {
            assert!(transfer["required"].as_array().expect("required").iter().any(|f| f == field), "{field}");
        }
        let pattern = |schema: &serde_json::Value, field: &str| schema["properties"][field]["pattern"].clone();
        assert_eq!(pattern(transfer, "from_user_id"), super::schemas::USER_ID_PATTERN);
        assert_eq!(pattern(transfer, "currency"), super::schemas::CURRENCY_PATTERN);
        assert_eq!(pattern(&schemas["NewPayment"], "user_id"), super::schemas::USER_ID_PATTERN);
        // Derived on the ledger's view, not mirrored: the fields are the serialised ones.
        let adjustment = &schemas["AdjustmentView"]["properties"];
        for field in ["entry_id", "posting_id", "direction", "balance_after", "reason", "created_at"] {
            assert!(adjustment[field].is_object(), "AdjustmentView.{field}: {adjustment}");
        }
        assert_eq!(schemas["Direction"]["enum"], serde_json::json!(["credit", "debit"]));
    }

    /// The component names clients generate types from stay, now that the schemas are
    /// derived on the serialised types (`as = ...` where the Rust name differs), and
    /// every `$ref` names a registered component.
    #[test]
    fn derived_schemas_keep_their_public_names_and_every_reference_resolves() {
        let doc = serde_json::to_value(super::document()).expect("json");
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for name in [
            "User",
            "UserWithWallets",
            "Wallet",
            "WalletList",
            "Entry",
            "EntryKind",
            "EntryPage",
            "Transfer",
            "TransferPage",
            "Reversal",
            "ReversalEntry",
            "AuditReport",
            "ShardAudit",
            "TransitAudit",
            "CrossShardAudit",
            "DeadLetters",
            "Health",
            "Readiness",
            "CheckState",
            "Payment",
            "PaymentKind",
            "PaymentStatus",
            "PaymentState",
            "PaymentMethodInput",
            "MaskedPaymentMethod",
            "PaymentPage",
            "PaymentResolution",
            "ResolutionOutcome",
            "CallbackAck",
            "Circuit",
            "GatewayHealth",
            "GatewayList",
        ] {
            assert!(schemas.contains_key(name), "component {name}: {:?}", schemas.keys().collect::<Vec<_>>());
        }
        fn refs(value: &serde_json::Value, out: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(r)) = map.get("$ref") {
                        out.push(r.clone());
                    }
                    map.values().for_each(|v| refs(v, out));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 50, "{} references", found.len());
        for r in found {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or(&r);
            assert!(schemas.contains_key(name), "{r} is not a component");
        }
        // Enums typed on the real types keep their wire spellings.
        assert_eq!(schemas["EntryKind"]["enum"][2], "transfer_debit");
        assert_eq!(schemas["PaymentState"]["enum"][2], "needs_review");
        assert_eq!(schemas["Circuit"]["enum"], serde_json::json!(["closed", "open", "half_open"]));
        assert_eq!(schemas["MaskedPaymentMethod"]["properties"]["type"]["enum"], serde_json::json!(["card", "iban"]));
    }
}
