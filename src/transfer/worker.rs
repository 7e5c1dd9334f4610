//! The stage worker: what the stage topic's consumer (`messaging::consumer`) does with a
//! verified message. It parses the stage, runs it through `tcc::handle` on the shard it
//! concerns, retries transient failures with backoff, and wakes the relay of the shard
//! whose outbox got the answer. Anything else is refused, and so dead-lettered.
use std::{sync::Arc, time::Duration};

use super::{messages::StageMessage, tcc};
use crate::{
    messaging::{
        consumer::{Handler, Refused},
        outbox::{Outbox, Wakers},
    },
    sharding::Router,
    telemetry::metrics,
};

pub struct StageHandler {
    pub router: Arc<Router>,
    pub wakers: Wakers,
    pub max_attempts: u32,
}

#[async_trait::async_trait]
impl Handler for StageHandler {
    async fn handle(&self, payload: &[u8]) -> Result<(), Refused> {
        let msg: StageMessage =
            serde_json::from_slice(payload).map_err(|e| Refused(format!("unreadable message: {e}")))?;
        let _timer = metrics::StageTimer::start(msg.stage.name());
        let mut backoff = Duration::from_millis(50);
        let mut attempt = 0;
        while attempt < self.max_attempts {
            attempt += 1;
            match tcc::handle(&self.router, &msg).await {
                Ok(shard) => {
                    self.wakers.wake(Outbox::Stages, shard);
                    return Ok(());
                }
                // Nobody owns the bucket for a moment (between a move's two switch commits,
                // or until a mover killed there is run again): wait for the new owner
                // without spending attempts, so no stage is dead-lettered for a move.
                Err(e) if crate::sharding::MaybeMoved::is_moved(&e) => {
                    attempt -= 1;
                    metrics::stage_retried(msg.stage.name());
                    tracing::warn!(error = %e, transfer_id = %msg.facts.transfer_id, "stage waits for its bucket's new owner");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) if e.is_transient() && attempt < self.max_attempts => {
                    metrics::stage_retried(msg.stage.name());
                    tracing::warn!(error = %e, attempt, transfer_id = %msg.facts.transfer_id, "stage failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(Refused(e.to_string())),
            }
        }
        Err(Refused(format!("no attempt left after {}", self.max_attempts)))
    }

    /// DirectCredits and Confirmed answers of distinct transfers, one statement per shard
    /// (`tcc::batch`); what that did not apply, or what did not parse, `handle` takes.
    async fn handle_together(&self, payloads: &[&[u8]]) -> Vec<bool> {
        let msgs: Vec<Option<StageMessage>> = payloads.iter().map(|p| serde_json::from_slice(p).ok()).collect();
        let started = std::time::Instant::now();
        let applied = tcc::batch::apply(&self.router, &msgs).await;
        for (msg, done) in msgs.iter().zip(&applied.done) {
            if let (Some(msg), true) = (msg, done) {
                drop(metrics::StageTimer::started_at(msg.stage.name(), started));
            }
        }
        for shard in applied.woken {
            self.wakers.wake(Outbox::Stages, shard);
        }
        applied.done
    }
}
