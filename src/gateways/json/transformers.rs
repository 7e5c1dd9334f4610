//! Gateway A's wire types (JSON) and their mapping to and from ours.
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::super::{CallbackEvent, PaymentRequest};
use crate::gateways::Outcome;

/// The method as gateway A takes it (full number: only ever sent over the wire).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Method {
    #[serde(rename = "type")]
    pub kind: String,
    pub number: String,
}

/// POST /v1/deposits and /v1/payouts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChargeRequest {
    pub idempotency_key: Uuid,
    pub amount: String,
    pub currency: String,
    pub method: Method,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

impl From<&PaymentRequest<'_>> for ChargeRequest {
    fn from(req: &PaymentRequest<'_>) -> Self {
        Self {
            idempotency_key: req.payment_id,
            amount: req.amount.to_string(),
            currency: req.currency.to_string(),
            method: Method { kind: req.method.kind().into(), number: req.method.secret().into() },
            callback_url: Some(req.callback_url.to_string()),
        }
    }
}

/// The reply to a charge, and to GET /v1/payments/{idempotency_key}.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChargeReply {
    pub id: String,
    /// `approved`, `declined` or `pending`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_reason: Option<String>,
}

/// The body of gateway A's 404 for a payment it never received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotFoundReply {
    pub error: String,
}

/// Maps a status word; anything else (`processing`, a status added later) is no answer
/// we may act on.
pub fn outcome(status: &str, reference: Option<String>) -> Result<Outcome, String> {
    Ok(match status {
        "approved" => Outcome::Approved { reference },
        "declined" | "failed" => Outcome::Declined { reason: "declined".into(), reference },
        "pending" => Outcome::Pending { reference },
        other => return Err(format!("unknown status '{other}'")),
    })
}

impl TryFrom<ChargeReply> for Outcome {
    type Error = String;
    fn try_from(reply: ChargeReply) -> Result<Self, String> {
        outcome(&reply.status, Some(reply.id))
    }
}

/// What gateway A posts to our callback URL.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    pub event_id: String,
    pub idempotency_key: Uuid,
    pub id: String,
    pub status: String,
}

impl TryFrom<Notification> for CallbackEvent {
    type Error = String;
    fn try_from(n: Notification) -> Result<Self, String> {
        Ok(CallbackEvent {
            outcome: outcome(&n.status, Some(n.id))?,
            event_id: n.event_id,
            payment_id: n.idempotency_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_and_notifications_map_to_outcomes() {
        let reply: ChargeReply =
            serde_json::from_str(r#"{"id":"A-1","status":"declined","decline_reason":"x"}"#).unwrap();
        let declined = Outcome::Declined { reason: "declined".into(), reference: Some("A-1".into()) };
        assert_eq!(Outcome::try_from(reply).unwrap(), declined);
        let bad: ChargeReply = serde_json::from_str(r#"{"id":"A-2","status":"maybe"}"#).unwrap();
        assert!(Outcome::try_from(bad).is_err());
        let key = Uuid::new_v4();
        let n =
            Notification { event_id: "e".into(), idempotency_key: key, id: "A-3".into(), status: "approved".into() };
        let event = CallbackEvent::try_from(n).unwrap();
        assert_eq!((event.payment_id, event.outcome), (key, Outcome::Approved { reference: Some("A-3".into()) }));
    }
}
