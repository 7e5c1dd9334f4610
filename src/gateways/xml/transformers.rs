//! Gateway B's wire types (SOAP-style XML via quick-xml) and their mapping to ours.
//!
//! ```xml
//! <Envelope><Body><PaymentRequest><Operation>deposit</Operation>
//!   <MerchantReference>{payment_id}</MerchantReference><Amount>1000</Amount>
//!   <Currency>EUR</Currency><InstrumentType>card</InstrumentType>
//!   <InstrumentNumber>…</InstrumentNumber><CallbackUrl>…</CallbackUrl>
//! </PaymentRequest></Body></Envelope>
//! ```
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::super::{CallbackEvent, PaymentRequest};
use crate::gateways::Outcome;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename = "Envelope")]
pub struct Envelope<B> {
    #[serde(rename = "Body")]
    pub body: B,
}

impl<B> Envelope<B> {
    pub fn new(body: B) -> Self {
        Self { body }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaymentBody {
    #[serde(rename = "PaymentRequest")]
    pub request: PaymentRequestXml,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaymentRequestXml {
    /// `deposit` or `payout`.
    #[serde(rename = "Operation")]
    pub operation: String,
    #[serde(rename = "MerchantReference")]
    pub merchant_reference: Uuid,
    #[serde(rename = "Amount")]
    pub amount: String,
    #[serde(rename = "Currency")]
    pub currency: String,
    #[serde(rename = "InstrumentType")]
    pub instrument_type: String,
    #[serde(rename = "InstrumentNumber")]
    pub instrument_number: String,
    #[serde(rename = "CallbackUrl", default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

impl PaymentRequestXml {
    pub fn new(operation: &str, req: &PaymentRequest<'_>) -> Self {
        Self {
            operation: operation.into(),
            merchant_reference: req.payment_id,
            amount: req.amount.into(),
            currency: req.currency.into(),
            instrument_type: req.method.kind().into(),
            instrument_number: req.method.secret().into(),
            callback_url: Some(req.callback_url.into()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusBody {
    #[serde(rename = "StatusRequest")]
    pub request: StatusRequest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusRequest {
    #[serde(rename = "MerchantReference")]
    pub merchant_reference: Uuid,
}

/// A reply: a result or a fault.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplyBody {
    #[serde(rename = "PaymentResponse", default, skip_serializing_if = "Option::is_none")]
    pub response: Option<PaymentResponse>,
    #[serde(rename = "Fault", default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaymentResponse {
    #[serde(rename = "TransactionId")]
    pub transaction_id: String,
    /// `APPROVED`, `DECLINED` or `PENDING`.
    #[serde(rename = "Result")]
    pub result: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    /// `NotFound`, `Server`, `Client`.
    #[serde(rename = "Code")]
    pub code: String,
    #[serde(rename = "Message")]
    pub message: String,
}

pub fn outcome(result: &str, reference: Option<String>) -> Result<Outcome, String> {
    Ok(match result {
        "APPROVED" => Outcome::Approved { reference },
        "DECLINED" | "FAILED" => Outcome::Declined { reason: "declined".into(), reference },
        "PENDING" => Outcome::Pending { reference },
        other => return Err(format!("unknown result '{other}'")),
    })
}

impl TryFrom<PaymentResponse> for Outcome {
    type Error = String;
    fn try_from(r: PaymentResponse) -> Result<Self, String> {
        outcome(&r.result, Some(r.transaction_id))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotificationBody {
    #[serde(rename = "Notification")]
    pub notification: Notification,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    #[serde(rename = "EventId")]
    pub event_id: String,
    #[serde(rename = "MerchantReference")]
    pub merchant_reference: Uuid,
    #[serde(rename = "TransactionId")]
    pub transaction_id: String,
    #[serde(rename = "Result")]
    pub result: String,
}

impl TryFrom<Notification> for CallbackEvent {
    type Error = String;
    fn try_from(n: Notification) -> Result<Self, String> {
        Ok(CallbackEvent {
            outcome: outcome(&n.result, Some(n.transaction_id))?,
            event_id: n.event_id,
            payment_id: n.merchant_reference,
        })
    }
}

pub fn to_xml<T: Serialize>(value: &T) -> Result<String, String> {
    quick_xml::se::to_string(value).map_err(|e| e.to_string())
}

pub fn from_xml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    quick_xml::de::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        let reply = Envelope::new(ReplyBody {
            response: Some(PaymentResponse { transaction_id: "B-1".into(), result: "PENDING".into() }),
            fault: None,
        });
        let text = to_xml(&reply).unwrap();
        assert!(text.starts_with("<Envelope><Body><PaymentResponse>"), "{text}");
        let back: Envelope<ReplyBody> = from_xml(&text).unwrap();
        let outcome = Outcome::try_from(back.body.response.unwrap()).unwrap();
        assert_eq!(outcome, Outcome::Pending { reference: Some("B-1".into()) });
        let fault = to_xml(&Envelope::new(ReplyBody {
            response: None,
            fault: Some(Fault { code: "NotFound".into(), message: "no such payment".into() }),
        }))
        .unwrap();
        let back: Envelope<ReplyBody> = from_xml(&fault).unwrap();
        assert_eq!(back.body.fault.unwrap().code, "NotFound");
    }
}
