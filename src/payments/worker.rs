//! The payments worker: consumes `SubmitPayment` messages and calls the gateway.
//!
//! Per payment: (1) in one transaction, the row is locked and moved created →
//! submitted, and the sealed method opened in memory; (2) the gateway is called with
//! the payment id as idempotency key, through the breaker, transient failures retried
//! with backoff and jitter; (3) its answer is applied in a second transaction. A crash
//! between (2) and (3) leaves a submitted payment: the reconciler queries the gateway.
//! Messages are never retried here beyond that: the row's state is the queue.
//!
//! A message without a valid tag (`messaging::auth`) is counted, logged and skipped,
//! not dead-lettered: the dead-letter topic replays to the stage topic, and a payment
//! message carries nothing but an id. A genuine payment whose message was refused
//! stays `created` and the reconciler re-emits it (signed) when it is due.
use std::{sync::Arc, time::Duration};

use deadpool_postgres::Transaction;
use rdkafka::{consumer::StreamConsumer, message::Message};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    method::PaymentMethod,
    outbox::SubmitPayment,
    state::{Event, Outcome, State},
    store, Error, PaymentKind, Payments, Result,
};
use crate::{
    gateways::{GatewayError, PaymentRequest},
    messaging::{
        auth::{MessageAuth, Purpose},
        consumer,
    },
};

pub struct Worker {
    pub consumer: crate::messaging::kafka::ClosedApart<StreamConsumer>,
    pub payments: Arc<Payments>,
    pub auth: MessageAuth,
}

impl Worker {
    #[tracing::instrument(name = "payment_worker", skip_all)]
    pub async fn run(self, shutdown: CancellationToken) {
        let max = self.payments.settings.concurrency.max(1);
        while let Some(batch) = consumer::next_batch(&*self.consumer, max, &shutdown).await {
            let payments = &self.payments;
            let auth = &self.auth;
            let jobs = batch.iter().map(|m| async move {
                if let Err(rejection) = auth.admit(Purpose::Payment, m) {
                    tracing::error!(%rejection, offset = m.offset(), "payment message refused; not submitted");
                    return;
                }
                match serde_json::from_slice::<SubmitPayment>(m.payload().unwrap_or_default()) {
                    Ok(msg) => {
                        if let Err(e) = submit(payments, msg.payment_id).await {
                            // The row stays as it is; the reconciler picks it up again.
                            tracing::warn!(error = %e, payment_id = %msg.payment_id, "payment submission failed");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, offset = m.offset(), "unreadable payment message skipped"),
                }
            });
            futures::future::join_all(jobs).await;
            consumer::store_offsets(&*self.consumer, &batch);
        }
        consumer::finish(&*self.consumer);
    }
}

/// Moves a created payment, its row locked in `tx`, to submitted and opens its method;
/// `None` when it is not to be sent now (and then it may have been failed or deferred).
async fn claim(
    payments: &Payments,
    tx: Transaction<'_>,
    row: store::PaymentRow,
) -> Result<Option<(store::PaymentRow, PaymentMethod)>> {
    let payment_id = row.view.payment_id;
    if row.view.state != State::Created || row.deadline <= chrono::Utc::now() {
        // Submitted or in review: the reconciler asks the gateway; final: nothing to
        // do; past its deadline: the reconciler expires it (a created payment is held
        // by no gateway, so that is safe) rather than send it now.
        return Ok(None);
    }
    // `created` means no gateway holds it (never sent, or the gateway said it never
    // received it): failing it here releases nothing that could still be paid out.
    let Some(gateway) = payments.gateways.get(&row.view.gateway) else {
        return fail(tx, &row, payments).await.map(|()| None);
    };
    if let Err(wait) = gateway.breaker.admits_new_payments() {
        defer(&tx, payment_id, wait).await?;
        tx.commit().await?;
        return Ok(None);
    }
    let Some(method) = row.sealed.as_deref().and_then(|s| payments.sealer.open(s).ok()) else {
        tracing::error!(%payment_id, "payment method missing or unreadable; failing the payment");
        return fail(tx, &row, payments).await.map(|()| None);
    };
    store::transition(&tx, &row, &Event::Submit, payments.timing(Duration::ZERO)).await?;
    tx.commit().await?;
    Ok(Some((row, method)))
}

/// Claims a created payment and calls its gateway.
#[tracing::instrument(skip(payments))]
pub async fn submit(payments: &Payments, payment_id: Uuid) -> Result<()> {
    let claimed = store::with_locked(&payments.router, payment_id, async |tx, row| claim(payments, tx, row).await);
    let Some((row, method)) = claimed.await?.flatten() else { return Ok(()) };
    let result = call_gateway(payments, &row, &method).await;
    drop(method);
    if payments.settings.drop_gateway_answers {
        tracing::warn!(%payment_id, "fault injection: the gateway's answer is dropped");
        return Ok(());
    }
    let (event, retry_in) = match result {
        Ok(outcome) => (Event::Answer(outcome), Duration::ZERO),
        Err(GatewayError::CircuitOpen(wait)) => (Event::NotSent, wait),
        Err(e @ GatewayError::NotSent(_)) => {
            tracing::warn!(%payment_id, error = %e, "gateway unreachable after retries; will send again later");
            (Event::NotSent, payments.query_after())
        }
        Err(e @ (GatewayError::Transient(_) | GatewayError::Unclear(_))) => {
            // It may have been executed: never failed on this; the status query decides.
            tracing::warn!(%payment_id, error = %e, "no clear answer from the gateway; will query its status");
            (Event::Unclear, Duration::ZERO)
        }
    };
    payments.apply(payment_id, &event, retry_in).await?;
    Ok(())
}

async fn call_gateway(
    payments: &Payments,
    row: &store::PaymentRow,
    method: &PaymentMethod,
) -> std::result::Result<Outcome, GatewayError> {
    let Some(gateway) = payments.gateways.get(&row.view.gateway) else {
        return Err(GatewayError::NotSent("gateway no longer configured".into()));
    };
    let callback_url = payments.callback_url(&row.view.gateway);
    let req = PaymentRequest {
        payment_id: row.view.payment_id,
        amount: &row.view.amount,
        currency: &row.view.currency,
        method,
        callback_url: &callback_url,
    };
    gateway
        .call(|| match row.view.kind {
            PaymentKind::Deposit => gateway.client.deposit(&req),
            PaymentKind::Withdrawal => gateway.client.withdraw(&req),
        })
        .await
}

/// Fails a created payment that cannot be submitted (gateway no longer configured,
/// method lost): no gateway holds it.
async fn fail(tx: deadpool_postgres::Transaction<'_>, row: &store::PaymentRow, payments: &Payments) -> Result<()> {
    let event = Event::Answer(Outcome::Declined { reason: "gateway_error".into(), reference: None });
    store::transition(&tx, row, &event, payments.timing(Duration::ZERO)).await?;
    tx.commit().await.map_err(Error::from)
}

/// Leaves a created payment for later (the breaker is open).
pub async fn defer(tx: &deadpool_postgres::Transaction<'_>, payment_id: Uuid, wait: Duration) -> Result<()> {
    tx.execute(
        "UPDATE payments SET next_attempt_at = now() + $2 * interval '1 millisecond' WHERE payment_id = $1",
        &[&payment_id, &(wait.as_millis() as f64)],
    )
    .await?;
    Ok(())
}
