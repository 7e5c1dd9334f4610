//! Deposits and withdrawals through payment gateways.
//!
//! - `state`: the payment state machine (pure, every transition in one file).
//! - `method`: card / IBAN parsing, masking and sealing (AES-GCM).
//! - `store`: payment rows, and one state-machine step on a locked row.
//! - `ledger`: withdrawal holds and the postings against gateway clearing accounts.
//! - `outbox`: the payment outbox and its relay to the payments topic.
//! - `worker`: consumes the payments topic and calls the gateway.
//! - `reconcile`: per shard, redrives, queries pending payments and expires them.
//! - `error`: this layer's errors, over the ledger's.
//!
//! A request writes the payment row and its outbox message in one shard transaction;
//! the relay publishes it; the worker marks the payment submitted (committed) before
//! calling the gateway, so a crash after the call leaves a submitted payment that the
//! reconciler settles by a status query, never by a second charge.
mod error;
pub mod ledger;
pub mod method;
pub mod outbox;
pub mod reconcile;
pub mod state;
pub mod store;
pub mod worker;

use std::{sync::Arc, time::Duration};

use deadpool_postgres::Transaction;
use uuid::Uuid;

use crate::{
    config::PaymentSettings,
    gateways::{CallbackEvent, Gateways},
    sharding::Router,
};
pub use error::{Error, Result};
use state::{Event, Step};
use store::Timing;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentKind {
    Deposit,
    Withdrawal,
}

impl PaymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deposit => "deposit",
            Self::Withdrawal => "withdrawal",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "deposit" => Some(Self::Deposit),
            "withdrawal" => Some(Self::Withdrawal),
            _ => None,
        }
    }
}

/// Everything payment processing needs, shared by the API, the worker and the reconcilers.
pub struct Payments {
    pub router: Arc<Router>,
    pub gateways: Gateways,
    pub sealer: method::Sealer,
    pub settings: PaymentSettings,
    /// `<public_url>`; callbacks go to `<public_url>/v1/gateways/<name>/callbacks`.
    pub public_url: String,
    /// The relays' wakers (one set for both outboxes, shared with the stage path).
    pub wakers: crate::messaging::outbox::Wakers,
}

/// What became of a callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackResult {
    /// Recorded; the step it caused (Ignore / Contradiction: kept, not applied).
    Recorded(Step),
    /// This gateway event id was recorded before: nothing changes.
    Duplicate,
    /// No payment of this gateway has that id.
    UnknownPayment,
}

impl Payments {
    pub fn query_after(&self) -> Duration {
        Duration::from_millis(self.settings.query_after_ms)
    }

    pub fn timing(&self, retry_in: Duration) -> Timing {
        Timing {
            query_after: self.query_after(),
            retry_in,
            backoff_max: Duration::from_millis(self.settings.query_backoff_max_ms.max(self.settings.query_after_ms)),
        }
    }

    pub fn callback_url(&self, gateway: &str) -> String {
        format!("{}/v1/gateways/{gateway}/callbacks", self.public_url.trim_end_matches('/'))
    }

    /// Runs one event on a payment in its own shard transaction.
    #[tracing::instrument(skip(self))]
    pub async fn apply(&self, payment_id: Uuid, event: &Event, retry_in: Duration) -> Result<Option<Step>> {
        store::with_locked(&self.router, payment_id, async |tx, row| {
            let step = store::transition(&tx, &row, event, self.timing(retry_in)).await?;
            tx.commit().await?;
            Ok(step)
        })
        .await
    }

    /// Records a verified callback once per gateway event id and applies it.
    #[tracing::instrument(skip(self, event), fields(payment_id = %event.payment_id, event_id = %event.event_id))]
    pub async fn record_callback(&self, gateway: &str, event: CallbackEvent) -> Result<CallbackResult> {
        let recorded = store::with_locked(&self.router, event.payment_id, async move |tx, row| {
            self.record_locked(tx, row, gateway, event).await
        })
        .await?;
        Ok(recorded.unwrap_or(CallbackResult::UnknownPayment))
    }

    async fn record_locked(
        &self,
        tx: Transaction<'_>,
        row: store::PaymentRow,
        gateway: &str,
        event: CallbackEvent,
    ) -> Result<CallbackResult> {
        if row.view.gateway != gateway {
            return Ok(CallbackResult::UnknownPayment);
        }
        let inserted = tx
            .execute(
                "INSERT INTO payment_events (gateway, event_id, payment_id, outcome, applied)
                 VALUES ($1, $2, $3, $4, false) ON CONFLICT DO NOTHING",
                &[&gateway, &event.event_id, &event.payment_id, &event.outcome.label()],
            )
            .await?;
        if inserted == 0 {
            return Ok(CallbackResult::Duplicate);
        }
        let step = store::transition(&tx, &row, &Event::Answer(event.outcome), self.timing(Duration::ZERO)).await?;
        let note = match step {
            Step::Contradiction => {
                Some(format!("contradicts the final state '{}'; not applied", row.view.state.as_str()))
            }
            Step::Ignore => Some("changes nothing".to_string()),
            _ => None,
        };
        tx.execute(
            "UPDATE payment_events SET applied = $3, note = $4 WHERE gateway = $1 AND event_id = $2",
            &[&gateway, &event.event_id, &note.is_none(), &note],
        )
        .await?;
        tx.commit().await?;
        Ok(CallbackResult::Recorded(step))
    }

    /// Payments not final yet, per gateway, over every shard.
    pub async fn in_flight(&self) -> Result<std::collections::BTreeMap<String, i64>> {
        let mut counts = std::collections::BTreeMap::new();
        for shard in self.router.shards() {
            let client = shard.client().await?;
            let rows = client
                .query(
                    "SELECT gateway, count(*) FROM payments WHERE state IN ('created', 'submitted', 'needs_review')
                     GROUP BY gateway",
                    &[],
                )
                .await?;
            for row in rows {
                *counts.entry(row.get::<_, String>(0)).or_insert(0) += row.get::<_, i64>(1);
            }
        }
        Ok(counts)
    }
}
