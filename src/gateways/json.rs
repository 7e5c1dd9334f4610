//! Gateway A: JSON over HTTP. Charges are POST /v1/deposits and /v1/payouts with an
//! `Idempotency-Key` header; status is GET /v1/payments/{key}; callbacks are JSON
//! signed in the `Gateway-Signature` header.
pub mod transformers;

use async_trait::async_trait;
use axum::http::HeaderMap;
use uuid::Uuid;

use super::{signature, CallbackError, CallbackEvent, Gateway, GatewayError, PaymentRequest};
use crate::gateways::Outcome;
use transformers::{ChargeReply, ChargeRequest, Notification};

pub const SIGNATURE_HEADER: &str = "gateway-signature";

pub struct GatewayA {
    http: reqwest::Client,
    base: String,
    /// Callback keys: the current one, then the previous one if any.
    secrets: Vec<Vec<u8>>,
}

impl GatewayA {
    pub fn new(http: reqwest::Client, base: String, secrets: Vec<Vec<u8>>) -> Self {
        Self { http, base, secrets }
    }

    #[tracing::instrument(name = "gateway_a", skip(self, req), fields(payment_id = %req.payment_id))]
    async fn charge(&self, path: &str, req: &PaymentRequest<'_>) -> Result<Outcome, GatewayError> {
        let body = ChargeRequest::from(req);
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Idempotency-Key", req.payment_id.to_string())
            .json(&body)
            .send()
            .await
            .map_err(GatewayError::from_http)?;
        if !response.status().is_success() {
            return Err(GatewayError::from_status(response.status()));
        }
        let reply: ChargeReply = response.json().await.map_err(|e| GatewayError::Unclear(e.to_string()))?;
        Outcome::try_from(reply).map_err(GatewayError::Unclear)
    }
}

#[async_trait]
impl Gateway for GatewayA {
    async fn deposit(&self, req: &PaymentRequest<'_>) -> Result<Outcome, GatewayError> {
        self.charge("/v1/deposits", req).await
    }

    async fn withdraw(&self, req: &PaymentRequest<'_>) -> Result<Outcome, GatewayError> {
        self.charge("/v1/payouts", req).await
    }

    #[tracing::instrument(name = "gateway_a_query", skip(self))]
    async fn query(&self, payment_id: Uuid) -> Result<Option<Outcome>, GatewayError> {
        let response = self
            .http
            .get(format!("{}/v1/payments/{payment_id}", self.base))
            .send()
            .await
            .map_err(GatewayError::from_http)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            // Only the gateway's own "no such payment" counts as never received: a 404
            // from a proxy or a wrong path says nothing about the payment.
            let text = response.text().await.map_err(GatewayError::from_http)?;
            return match serde_json::from_str::<transformers::NotFoundReply>(&text) {
                Ok(_) => Ok(None),
                Err(_) => Err(GatewayError::Unclear(format!("404 without the gateway's not-found body: {text:.200}"))),
            };
        }
        if !response.status().is_success() {
            return Err(GatewayError::from_status(response.status()));
        }
        let reply: ChargeReply = response.json().await.map_err(|e| GatewayError::Unclear(e.to_string()))?;
        Outcome::try_from(reply).map(Some).map_err(GatewayError::Unclear)
    }

    fn verify_callback(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<CallbackEvent, CallbackError> {
        let header = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
        if !signature::verify(&self.secrets, header, body, now) {
            return Err(CallbackError::InvalidSignature);
        }
        let n: Notification = serde_json::from_slice(body).map_err(|e| CallbackError::Malformed(e.to_string()))?;
        CallbackEvent::try_from(n).map_err(CallbackError::Malformed)
    }
}
