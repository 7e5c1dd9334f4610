//! Mock gateways: real HTTP servers speaking gateway A's JSON or gateway B's XML, for
//! `make run`, docker-compose and the tests (`shardwallet mock-gateway`).
//!
//! The amount's last two digits pick the behaviour (deposits and withdrawals alike):
//! `01` declined; `02` pending, then a success callback; `03` pending, then a failure
//! callback; `04` 5xx for the first two attempts, then approved; `05` pending, never
//! calls back (a status query finds it succeeded); `06` approved and the success
//! callback delivered twice; `07` answers 2xx with the status `processing` (no status
//! we know), then approves by callback ~2 s later; `08` executes the payment (approved)
//! but every reply to the payment request comes only after `slow_reply` (longer than
//! the client's timeout), while status queries answer at once; `09` executes it
//! (approved) but answers 5xx, and its status endpoint answers 5xx too, for `flaky_for`
//! (60 s by default), then tells the truth; anything else approved at once. Callbacks
//! are signed like a real gateway's. Calls are counted per idempotency key: GET
//! /_mock/calls/{key} answers `{calls, charges, callbacks, status}`; `charges` counts
//! how many times the payment was actually processed, which must never exceed one.
use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::json;
use uuid::Uuid;

use super::{json as a, signature, xml as b};

pub use crate::config::GatewayProtocol as Protocol;

#[derive(Debug, Clone)]
pub struct MockConfig {
    pub protocol: Protocol,
    pub secret: Vec<u8>,
    /// Where to send callbacks when the request names no callback URL.
    pub callback_url: Option<String>,
    pub callback_delay: Duration,
    /// How long `08` takes to answer a payment request.
    pub slow_reply: Duration,
    /// How long `09` answers 5xx after executing a payment.
    pub flaky_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Approved,
    Declined,
    Pending,
    /// Not a status our clients know: they must treat it as no answer.
    Processing,
}

struct Record {
    calls: u32,
    charges: u32,
    callbacks: u32,
    reply: Status,
    settled: Status,
    settle_at: Instant,
    silent: bool,
    /// `08`: every reply to the payment request is late.
    slow: bool,
    /// `09`: 5xx to everything about this payment until then.
    flaky_until: Option<Instant>,
    reference: String,
}

impl Record {
    fn flaky(&self) -> bool {
        self.flaky_until.is_some_and(|until| Instant::now() < until)
    }
}

/// A payment request's answer: `None` is a 5xx; sent after `delay`.
struct Reply {
    answer: Option<(Status, String)>,
    delay: Duration,
}

/// What a status query finds.
enum Lookup {
    NotFound,
    ServerError,
    Found(Status, String),
}

#[derive(Clone)]
struct Mock {
    config: Arc<MockConfig>,
    records: Arc<Mutex<HashMap<Uuid, Record>>>,
    http: reqwest::Client,
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: MockConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mock = Mock {
        config: Arc::new(config),
        records: Arc::default(),
        http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?,
    };
    let routes = Router::new()
        .route("/v1/deposits", post(json_charge))
        .route("/v1/payouts", post(json_charge))
        .route("/v1/payments/{key}", get(json_query))
        .route("/soap", post(soap))
        .route("/_mock/calls/{key}", get(calls))
        .route("/health", get(|| async { "ok" }))
        .with_state(mock);
    axum::serve(listener, routes).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

impl Mock {
    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Processes one payment request.
    fn charge(&self, key: Uuid, amount: &str, callback_url: Option<String>) -> Reply {
        let magic = &amount[amount.len().saturating_sub(2)..];
        let slow = if magic == "08" { self.config.slow_reply } else { Duration::ZERO };
        let reply = |answer| Reply { answer, delay: slow };
        let mut records = self.records();
        let record = records.entry(key).or_insert_with(|| {
            let (reply, settled) = match magic {
                "01" => (Status::Declined, Status::Declined),
                "02" | "05" => (Status::Pending, Status::Approved),
                "03" => (Status::Pending, Status::Declined),
                "07" => (Status::Processing, Status::Approved),
                _ => (Status::Approved, Status::Approved),
            };
            Record {
                calls: 0,
                charges: 0,
                callbacks: 0,
                reply,
                settled,
                settle_at: Instant::now() + self.config.callback_delay,
                silent: magic == "05",
                slow: magic == "08",
                flaky_until: None,
                reference: format!("mock-{}", Uuid::new_v4().simple()),
            }
        });
        record.calls += 1;
        if magic == "04" && record.calls <= 2 {
            return reply(None);
        }
        if record.charges > 0 {
            // The same idempotency key again: the stored answer, no second charge.
            let answer = (!record.flaky()).then(|| (record.reply, record.reference.clone()));
            return reply(answer);
        }
        record.charges = 1;
        let callback_delay = if magic == "07" { Duration::from_secs(2) } else { self.config.callback_delay };
        record.settle_at = Instant::now() + callback_delay;
        if magic == "09" {
            record.flaky_until = Some(Instant::now() + self.config.flaky_for);
        }
        let answer = (!record.flaky()).then(|| (record.reply, record.reference.clone()));
        let deliveries = match magic {
            "02" | "03" | "07" => 1,
            "06" => 2,
            _ => 0,
        };
        drop(records);
        if let Some(url) = callback_url.or_else(|| self.config.callback_url.clone()).filter(|_| deliveries > 0) {
            let mock = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(callback_delay).await;
                for _ in 0..deliveries {
                    mock.deliver(key, &url).await;
                }
            });
        }
        reply(answer)
    }

    /// What a status query sees: the settled status once the callback delay passed.
    fn status(&self, key: Uuid) -> Lookup {
        let records = self.records();
        let Some(r) = records.get(&key).filter(|r| r.charges > 0) else { return Lookup::NotFound };
        if r.flaky() {
            return Lookup::ServerError;
        }
        // `05` settles silently at once; the others when their callback is due.
        let due = r.silent || r.slow || Instant::now() >= r.settle_at;
        let status = if due { r.settled } else { r.reply };
        Lookup::Found(status, r.reference.clone())
    }

    async fn deliver(&self, key: Uuid, url: &str) {
        let (settled, reference) = {
            let records = self.records();
            let Some(r) = records.get(&key) else { return };
            (r.settled, r.reference.clone())
        };
        let event_id = format!("evt-{}", key.simple());
        let (body, header) = match self.config.protocol {
            Protocol::Json => {
                let n = a::transformers::Notification {
                    event_id,
                    idempotency_key: key,
                    id: reference,
                    status: json_status(settled).into(),
                };
                (serde_json::to_vec(&n).unwrap_or_default(), a::SIGNATURE_HEADER)
            }
            Protocol::Xml => {
                let n = b::transformers::Envelope::new(b::transformers::NotificationBody {
                    notification: b::transformers::Notification {
                        event_id,
                        merchant_reference: key,
                        transaction_id: reference,
                        result: xml_status(settled).into(),
                    },
                });
                (b::transformers::to_xml(&n).unwrap_or_default().into_bytes(), b::SIGNATURE_HEADER)
            }
        };
        for _ in 0..10 {
            let t = chrono::Utc::now().timestamp();
            let sent = self
                .http
                .post(url)
                .header(header, signature::sign(&self.config.secret, t, &body))
                .body(body.clone())
                .send()
                .await;
            if matches!(&sent, Ok(r) if r.status().is_success()) {
                if let Some(r) = self.records().get_mut(&key) {
                    r.callbacks += 1;
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tracing::warn!(%key, "mock gateway gave up delivering a callback");
    }
}

fn json_status(s: Status) -> &'static str {
    match s {
        Status::Approved => "approved",
        Status::Declined => "declined",
        Status::Pending => "pending",
        Status::Processing => "processing",
    }
}

fn xml_status(s: Status) -> &'static str {
    match s {
        Status::Approved => "APPROVED",
        Status::Declined => "DECLINED",
        Status::Pending => "PENDING",
        Status::Processing => "PROCESSING",
    }
}

async fn json_charge(State(mock): State<Mock>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<a::transformers::ChargeRequest>(&body) else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "bad request"}))).into_response();
    };
    let reply = mock.charge(req.idempotency_key, &req.amount, req.callback_url);
    tokio::time::sleep(reply.delay).await;
    match reply.answer {
        None => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "try again"}))).into_response(),
        Some((status, id)) => {
            let reply = a::transformers::ChargeReply {
                id,
                status: json_status(status).into(),
                decline_reason: (status == Status::Declined).then(|| "do_not_honor".into()),
            };
            Json(reply).into_response()
        }
    }
}

async fn json_query(State(mock): State<Mock>, Path(key): Path<Uuid>) -> Response {
    match mock.status(key) {
        Lookup::NotFound => {
            (StatusCode::NOT_FOUND, Json(a::transformers::NotFoundReply { error: "no such payment".into() }))
                .into_response()
        }
        Lookup::ServerError => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "try again"}))).into_response(),
        Lookup::Found(status, id) => {
            Json(a::transformers::ChargeReply { id, status: json_status(status).into(), decline_reason: None })
                .into_response()
        }
    }
}

fn soap_reply(status: StatusCode, body: b::transformers::ReplyBody) -> Response {
    let text = b::transformers::to_xml(&b::transformers::Envelope::new(body)).unwrap_or_default();
    (status, [("content-type", "text/xml; charset=utf-8")], text).into_response()
}

fn fault(status: StatusCode, code: &str, message: &str) -> Response {
    let f = b::transformers::Fault { code: code.into(), message: message.into() };
    soap_reply(status, b::transformers::ReplyBody { response: None, fault: Some(f) })
}

async fn soap(State(mock): State<Mock>, headers: HeaderMap, body: Bytes) -> Response {
    use b::transformers::{from_xml, Envelope, PaymentBody, PaymentResponse, ReplyBody, StatusBody};
    let action = headers.get("soapaction").and_then(|v| v.to_str().ok()).unwrap_or_default().trim_matches('"');
    let text = String::from_utf8_lossy(&body);
    let answer = match action {
        "Payment" => match from_xml::<Envelope<PaymentBody>>(&text) {
            Ok(env) => {
                let r = env.body.request;
                let reply = mock.charge(r.merchant_reference, &r.amount, r.callback_url);
                tokio::time::sleep(reply.delay).await;
                match reply.answer {
                    None => return fault(StatusCode::INTERNAL_SERVER_ERROR, "Server", "try again"),
                    Some(answer) => answer,
                }
            }
            Err(e) => return fault(StatusCode::BAD_REQUEST, "Client", &e),
        },
        "Status" => match from_xml::<Envelope<StatusBody>>(&text) {
            Ok(env) => match mock.status(env.body.request.merchant_reference) {
                Lookup::Found(status, reference) => (status, reference),
                Lookup::NotFound => return fault(StatusCode::OK, "NotFound", "no such payment"),
                Lookup::ServerError => return fault(StatusCode::INTERNAL_SERVER_ERROR, "Server", "try again"),
            },
            Err(e) => return fault(StatusCode::BAD_REQUEST, "Client", &e),
        },
        _ => return fault(StatusCode::BAD_REQUEST, "Client", "unknown SOAPAction"),
    };
    let (status, transaction_id) = answer;
    let response = PaymentResponse { transaction_id, result: xml_status(status).into() };
    soap_reply(StatusCode::OK, ReplyBody { response: Some(response), fault: None })
}

async fn calls(State(mock): State<Mock>, Path(key): Path<Uuid>) -> Response {
    let records = mock.records();
    let view = match records.get(&key) {
        None => json!({ "calls": 0, "charges": 0, "callbacks": 0, "status": null }),
        Some(r) => json!({
            "calls": r.calls,
            "charges": r.charges,
            "callbacks": r.callbacks,
            "status": json_status(r.settled),
        }),
    };
    Json(view).into_response()
}
