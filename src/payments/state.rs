//! The payment state machine: every state and every transition of a deposit or a
//! withdrawal is in this file. `step` is pure; `payments::apply` runs its answer inside
//! one shard transaction with the payment row locked, so each transition happens once.
//!
//! ```text
//!  API (withdrawal: hold the amount)
//!     │
//!     ▼                Submit (worker, before the call)
//!  created ───────────────────────────────────────► submitted ──Answer(approved)──► succeeded
//!     ▲ │  ◄── NotSent (no request left: breaker        │ │ ▲                    (ledger posting;
//!     │ │       open, connection refused)               │ │ │                     hold released)
//!     │ │  ◄── NotFound (the gateway's status query     │ │ └─ Answer(pending) / Unclear:
//!     │ │       says it never received it; resent       │ │    query again with backoff
//!     │ │       with the same idempotency key)          │ └──Answer(declined)──► failed
//!     │ └─ Expire ──► failed (expired; nothing was      │                        (hold released)
//!     │               ever held by the gateway)         └─ Expire ──► needs_review (hold kept)
//!     │                                                                │
//!     └────────────────────── (never back) ───────────────────────────┤
//!      needs_review: Answer(approved) ─► succeeded, Answer(declined) ─► failed,
//!                    NotFound ─► failed (expired), Pending / Unclear: query again,
//!                    Resolve (an operator) ─► succeeded or failed
//! ```
//! `created`, `submitted` and `needs_review` are all `pending` to clients. The rule that
//! keeps money from leaving on a guess: **only an explicit answer moves a payment that
//! the gateway may hold** (`submitted`, `needs_review`) to a final state — approved,
//! declined, or the gateway's word that it never received the request. A timeout, a
//! 5xx, a reply we cannot read or act on (`Unclear`) changes nothing but the time of the
//! next query; a deadline passed in doubt is `needs_review`, never `failed`. `created`
//! means the gateway holds nothing (never sent, or confirmed not found), so expiring it
//! is safe. Answers come from three places (the synchronous reply, a signed callback, a
//! status query) and go through the same table: a repeated answer is ignored, an answer
//! contradicting a final state is kept for operators and not applied.

/// The internal state: `created`, `submitted` and `needs_review` are all `pending`.
/// `needs_review`: the deadline passed while the gateway may hold the payment; the hold
/// is kept until the gateway answers or an operator resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = PaymentState)]
pub enum State {
    Created,
    Submitted,
    NeedsReview,
    Succeeded,
    Failed,
}

impl State {
    pub const ALL: [State; 5] = [Self::Created, Self::Submitted, Self::NeedsReview, Self::Succeeded, Self::Failed];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Submitted => "submitted",
            Self::NeedsReview => "needs_review",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// What clients see.
    pub fn status(self) -> Status {
        match self {
            Self::Created | Self::Submitted | Self::NeedsReview => Status::Pending,
            Self::Succeeded => Status::Succeeded,
            Self::Failed => Status::Failed,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// What clients see of a payment's state: the in-flight states are all `pending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = PaymentStatus)]
pub enum Status {
    Pending,
    Succeeded,
    Failed,
}

pub use crate::gateways::Outcome;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The worker is about to call the gateway.
    Submit,
    /// No request left this process (the breaker was open, the connection was refused):
    /// the gateway cannot hold the payment; send it again later with the same key.
    NotSent,
    /// A request was sent but no answer we can act on came back (timeout, 5xx, a 409 or
    /// other 4xx, an unknown status, an unreadable body): the gateway may hold it.
    Unclear,
    /// The gateway's status endpoint says it never received the payment.
    NotFound,
    /// The gateway answered (reply, callback or status query).
    Answer(Outcome),
    /// The payment's deadline passed.
    Expire,
    /// An operator settled a payment in doubt (`POST /v1/admin/payments/{id}/resolve`).
    Resolve { succeeded: bool },
}

/// Why an operator-failed payment failed (`payments.reason`).
pub const RESOLVED_FAILED: &str = "resolved_failed";
/// Why an expired payment failed.
pub const EXPIRED: &str = "expired";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// created -> submitted.
    MarkSubmitted,
    /// submitted -> created, to be sent again with the same idempotency key.
    BackToCreated,
    /// -> succeeded: post the ledger legs (release a withdrawal's hold first).
    Succeed,
    /// -> failed with a reason: release a withdrawal's hold.
    Fail { reason: String },
    /// -> submitted: the gateway has it and will answer; its reference is recorded and
    /// the next query is scheduled (with backoff).
    AwaitAnswer,
    /// The state stays; the next status query is scheduled with backoff (and a
    /// reference, if any, recorded).
    QueryLater,
    /// submitted -> needs_review: the deadline passed and the gateway may hold the
    /// payment. The hold stays; queries go on; an answer or an operator settles it.
    Review,
    /// A duplicate or late event: nothing changes.
    Ignore,
    /// An answer contradicting the final state: recorded for operators, not applied.
    Contradiction,
}

impl Step {
    /// The step's name in metrics and logs (`None`: nothing happened).
    pub fn name(&self) -> Option<&'static str> {
        Some(match self {
            Step::MarkSubmitted => "submitted",
            Step::BackToCreated => "back_to_created",
            Step::Succeed => "succeeded",
            Step::Fail { .. } => "failed",
            Step::AwaitAnswer => "await_answer",
            Step::QueryLater => "query_later",
            Step::Review => "needs_review",
            Step::Contradiction => "contradiction",
            Step::Ignore => return None,
        })
    }
}

pub fn step(state: State, event: &Event) -> Step {
    use Outcome as O;
    use State as S;
    let fail = |reason: &str| Step::Fail { reason: reason.to_string() };
    match (state, event) {
        (S::Created, Event::Submit) => Step::MarkSubmitted,
        (S::Submitted, Event::NotSent | Event::NotFound) => Step::BackToCreated,
        (S::Submitted | S::NeedsReview, Event::Unclear) => Step::QueryLater,
        // Past the deadline and the gateway has nothing: failing releases nothing it holds.
        (S::NeedsReview, Event::NotFound) => fail(EXPIRED),
        (S::Created | S::Submitted | S::NeedsReview, Event::Answer(O::Approved { .. })) => Step::Succeed,
        (S::Created | S::Submitted | S::NeedsReview, Event::Answer(O::Declined { reason, .. })) => fail(reason),
        (S::Created | S::Submitted, Event::Answer(O::Pending { .. })) => Step::AwaitAnswer,
        (S::NeedsReview, Event::Answer(O::Pending { .. })) => Step::QueryLater,
        (S::Created, Event::Expire) => fail(EXPIRED),
        (S::Submitted, Event::Expire) => Step::Review,
        (S::Created | S::Submitted | S::NeedsReview, Event::Resolve { succeeded: true }) => Step::Succeed,
        (S::Created | S::Submitted | S::NeedsReview, Event::Resolve { succeeded: false }) => fail(RESOLVED_FAILED),
        (S::Succeeded, Event::Answer(O::Declined { .. })) | (S::Failed, Event::Answer(O::Approved { .. })) => {
            Step::Contradiction
        }
        // Submit of a submitted payment (a redelivered message: the status query decides),
        // NotSent / NotFound / Unclear of a created one, Expire in review, and anything
        // after a final state (an operator's Resolve included: the API answers 409).
        _ => Step::Ignore,
    }
}

/// The state a step leads to.
pub fn next(state: State, step: &Step) -> State {
    match step {
        Step::MarkSubmitted | Step::AwaitAnswer => State::Submitted,
        Step::BackToCreated => State::Created,
        Step::Succeed => State::Succeeded,
        Step::Fail { .. } => State::Failed,
        Step::Review => State::NeedsReview,
        Step::QueryLater | Step::Ignore | Step::Contradiction => state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approved() -> Event {
        Event::Answer(Outcome::Approved { reference: Some("r".into()) })
    }
    fn declined() -> Event {
        Event::Answer(Outcome::Declined { reason: "declined".into(), reference: None })
    }
    fn pending() -> Event {
        Event::Answer(Outcome::Pending { reference: Some("r".into()) })
    }
    fn resolve(succeeded: bool) -> Event {
        Event::Resolve { succeeded }
    }
    fn every_event() -> Vec<Event> {
        vec![
            Event::Submit,
            Event::NotSent,
            Event::Unclear,
            Event::NotFound,
            approved(),
            declined(),
            pending(),
            Event::Expire,
            resolve(true),
            resolve(false),
        ]
    }

    #[test]
    fn transition_table() {
        use State::*;
        let fail = |r: &str| Step::Fail { reason: r.into() };
        #[rustfmt::skip]
        let table = [
            (Created, Event::Submit, Step::MarkSubmitted),
            (Created, Event::NotSent, Step::Ignore),
            (Created, Event::Unclear, Step::Ignore),
            (Created, Event::NotFound, Step::Ignore),
            (Created, approved(), Step::Succeed),
            (Created, declined(), fail("declined")),
            (Created, pending(), Step::AwaitAnswer),
            (Created, Event::Expire, fail("expired")),
            (Created, resolve(true), Step::Succeed),
            (Created, resolve(false), fail("resolved_failed")),
            (Submitted, Event::Submit, Step::Ignore),
            (Submitted, Event::NotSent, Step::BackToCreated),
            (Submitted, Event::Unclear, Step::QueryLater),
            (Submitted, Event::NotFound, Step::BackToCreated),
            (Submitted, approved(), Step::Succeed),
            (Submitted, declined(), fail("declined")),
            (Submitted, pending(), Step::AwaitAnswer),
            (Submitted, Event::Expire, Step::Review),
            (Submitted, resolve(true), Step::Succeed),
            (Submitted, resolve(false), fail("resolved_failed")),
            (NeedsReview, Event::Submit, Step::Ignore),
            (NeedsReview, Event::NotSent, Step::Ignore),
            (NeedsReview, Event::Unclear, Step::QueryLater),
            (NeedsReview, Event::NotFound, fail("expired")),
            (NeedsReview, approved(), Step::Succeed),
            (NeedsReview, declined(), fail("declined")),
            (NeedsReview, pending(), Step::QueryLater),
            (NeedsReview, Event::Expire, Step::Ignore),
            (NeedsReview, resolve(true), Step::Succeed),
            (NeedsReview, resolve(false), fail("resolved_failed")),
            (Succeeded, Event::Submit, Step::Ignore),
            (Succeeded, Event::NotSent, Step::Ignore),
            (Succeeded, Event::Unclear, Step::Ignore),
            (Succeeded, Event::NotFound, Step::Ignore),
            (Succeeded, approved(), Step::Ignore),
            (Succeeded, declined(), Step::Contradiction),
            (Succeeded, pending(), Step::Ignore),
            (Succeeded, Event::Expire, Step::Ignore),
            (Succeeded, resolve(true), Step::Ignore),
            (Succeeded, resolve(false), Step::Ignore),
            (Failed, Event::Submit, Step::Ignore),
            (Failed, Event::NotSent, Step::Ignore),
            (Failed, Event::Unclear, Step::Ignore),
            (Failed, Event::NotFound, Step::Ignore),
            (Failed, approved(), Step::Contradiction),
            (Failed, declined(), Step::Ignore),
            (Failed, pending(), Step::Ignore),
            (Failed, Event::Expire, Step::Ignore),
            (Failed, resolve(true), Step::Ignore),
            (Failed, resolve(false), Step::Ignore),
        ];
        assert_eq!(table.len(), State::ALL.len() * every_event().len(), "every (state, event) pair is listed");
        for (state, event, expected) in table {
            assert_eq!(step(state, &event), expected, "{state:?} + {event:?}");
        }
    }

    /// The money rule: from a state where the gateway may hold the payment, only an
    /// explicit answer (approved, declined, not found) or an operator makes it final.
    #[test]
    fn a_payment_the_gateway_may_hold_is_never_settled_by_a_guess() {
        for state in [State::Submitted, State::NeedsReview] {
            for event in [Event::Unclear, Event::Expire, Event::NotSent, Event::Submit, pending()] {
                let next = next(state, &step(state, &event));
                assert!(!next.is_final(), "{state:?} + {event:?} -> {next:?}");
            }
        }
    }

    #[test]
    fn final_states_never_move_and_states_round_trip() {
        for state in [State::Succeeded, State::Failed] {
            for event in every_event() {
                assert_eq!(next(state, &step(state, &event)), state);
            }
        }
        for state in State::ALL {
            assert_eq!(State::parse(state.as_str()), Some(state));
            // The API's `state` is the string stored in `payments.state`.
            assert_eq!(serde_json::to_value(state).expect("json"), state.as_str());
        }
        assert_eq!(State::Submitted.status(), Status::Pending);
        assert_eq!(State::NeedsReview.status(), Status::Pending);
    }
}
