//! Gateway B: SOAP-style XML over HTTP. Every call is POST /soap with a `SOAPAction`
//! header (`Payment` or `Status`); callbacks are XML signed in `X-Signature`.
pub mod transformers;

use async_trait::async_trait;
use axum::http::HeaderMap;
use uuid::Uuid;

use super::{signature, CallbackError, CallbackEvent, Gateway, GatewayError, PaymentRequest};
use crate::gateways::Outcome;
use transformers::{
    from_xml, to_xml, Envelope, NotificationBody, PaymentBody, PaymentRequestXml, ReplyBody, StatusBody, StatusRequest,
};

pub const SIGNATURE_HEADER: &str = "x-signature";

pub struct GatewayB {
    http: reqwest::Client,
    base: String,
    /// Callback keys: the current one, then the previous one if any.
    secrets: Vec<Vec<u8>>,
}

impl GatewayB {
    pub fn new(http: reqwest::Client, base: String, secrets: Vec<Vec<u8>>) -> Self {
        Self { http, base, secrets }
    }

    /// One SOAP call; `Ok(None)` for a NotFound fault.
    async fn call(&self, action: &str, body: String) -> Result<Option<Outcome>, GatewayError> {
        let response = self
            .http
            .post(format!("{}/soap", self.base))
            .header("SOAPAction", action)
            .header("Content-Type", "text/xml; charset=utf-8")
            .body(body)
            .send()
            .await
            .map_err(GatewayError::from_http)?;
        let status = response.status();
        let text = response.text().await.map_err(GatewayError::from_http)?;
        if status.is_server_error() {
            return Err(GatewayError::from_status(status));
        }
        let reply: Envelope<ReplyBody> = from_xml(&text).map_err(GatewayError::Unclear)?;
        match (reply.body.response, reply.body.fault) {
            (Some(r), _) => Outcome::try_from(r).map(Some).map_err(GatewayError::Unclear),
            (None, Some(f)) if f.code == "NotFound" => Ok(None),
            (None, Some(f)) if f.code == "Server" => Err(GatewayError::Transient(f.message)),
            (None, Some(f)) => Err(GatewayError::Unclear(format!("{}: {}", f.code, f.message))),
            (None, None) => Err(GatewayError::Unclear("empty SOAP body".into())),
        }
    }

    #[tracing::instrument(name = "gateway_b", skip(self, req), fields(payment_id = %req.payment_id))]
    async fn pay(&self, operation: &str, req: &PaymentRequest<'_>) -> Result<Outcome, GatewayError> {
        let body = to_xml(&Envelope::new(PaymentBody { request: PaymentRequestXml::new(operation, req) }))
            .map_err(GatewayError::NotSent)?;
        self.call("Payment", body)
            .await?
            .ok_or_else(|| GatewayError::Unclear("payment request answered with NotFound".into()))
    }
}

#[async_trait]
impl Gateway for GatewayB {
    async fn deposit(&self, req: &PaymentRequest<'_>) -> Result<Outcome, GatewayError> {
        self.pay("deposit", req).await
    }

    async fn withdraw(&self, req: &PaymentRequest<'_>) -> Result<Outcome, GatewayError> {
        self.pay("payout", req).await
    }

    #[tracing::instrument(name = "gateway_b_query", skip(self))]
    async fn query(&self, payment_id: Uuid) -> Result<Option<Outcome>, GatewayError> {
        let body = to_xml(&Envelope::new(StatusBody { request: StatusRequest { merchant_reference: payment_id } }))
            .map_err(GatewayError::NotSent)?;
        self.call("Status", body).await
    }

    fn verify_callback(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<CallbackEvent, CallbackError> {
        let header = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
        if !signature::verify(&self.secrets, header, body, now) {
            return Err(CallbackError::InvalidSignature);
        }
        let text = std::str::from_utf8(body).map_err(|e| CallbackError::Malformed(e.to_string()))?;
        let n: Envelope<NotificationBody> = from_xml(text).map_err(CallbackError::Malformed)?;
        CallbackEvent::try_from(n.body.notification).map_err(CallbackError::Malformed)
    }
}
