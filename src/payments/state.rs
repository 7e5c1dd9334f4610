//! The payment state machine: every state and every transition of a deposit or a
//! withdrawal is in this file. `step` is pure; `payments::apply` runs its answer inside
//! one shard transaction with the payment row locked, so each transition happens once.
//!
//! ```text
//!  API (withdrawal: hold the amount) ──► created ──Submit──► submitted ──Answer(approved)──► succeeded
//!                                          ▲   (worker, before    │  │                        (ledger posting;
//!                                          │    the gateway call) │  │                         hold released)
//!                                          └────── NotReached ────┘  └─Answer(declined)──► failed
//!                                 (transient failure / breaker open:       Expire ───────► failed (expired)
//!                                  redriven later, same idempotency key)   (hold released)
//!  Answer(pending) keeps `submitted` and records the gateway reference; the answer then
//!  comes from a callback or from a status query (reconciliation).
//! ```
//! `created` and `submitted` are both `pending` to clients. Answers come from three
//! places (the synchronous reply, a signed callback, a status query) and go through the
//! same table: a repeated answer is ignored, an answer contradicting a final state is
//! kept for operators and not applied.

/// `payments.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Submitted,
    Succeeded,
    Failed,
}

impl State {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "created" => Self::Created,
            "submitted" => Self::Submitted,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Submitted => "submitted",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// What clients see.
    pub fn status(self) -> &'static str {
        match self {
            Self::Created | Self::Submitted => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// What a gateway says about a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved { reference: Option<String> },
    Declined { reason: String, reference: Option<String> },
    Pending { reference: Option<String> },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Approved { .. } => "approved",
            Outcome::Declined { .. } => "declined",
            Outcome::Pending { .. } => "pending",
        }
    }

    pub fn reference(&self) -> Option<&str> {
        match self {
            Outcome::Approved { reference } | Outcome::Declined { reference, .. } | Outcome::Pending { reference } => {
                reference.as_deref()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The worker is about to call the gateway.
    Submit,
    /// The call did not get an answer we may rely on and retries are exhausted (or the
    /// breaker is open): try again later with the same idempotency key.
    NotReached,
    /// The gateway answered (reply, callback or status query).
    Answer(Outcome),
    /// The payment's deadline passed.
    Expire,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// created -> submitted.
    MarkSubmitted,
    /// submitted -> created, to be redriven.
    BackToCreated,
    /// -> succeeded: post the ledger legs (release a withdrawal's hold first).
    Succeed,
    /// -> failed with a reason: release a withdrawal's hold.
    Fail { reason: String },
    /// Stays submitted; the gateway reference is recorded.
    AwaitAnswer,
    /// A duplicate or late event: nothing changes.
    Ignore,
    /// An answer contradicting the final state: recorded for operators, not applied.
    Contradiction,
}

pub fn step(state: State, event: &Event) -> Step {
    use Outcome as O;
    use State as S;
    match (state, event) {
        (S::Created, Event::Submit) => Step::MarkSubmitted,
        (S::Submitted, Event::NotReached) => Step::BackToCreated,
        (S::Created | S::Submitted, Event::Answer(O::Approved { .. })) => Step::Succeed,
        (S::Created | S::Submitted, Event::Answer(O::Declined { reason, .. })) => Step::Fail { reason: reason.clone() },
        (S::Created | S::Submitted, Event::Answer(O::Pending { .. })) => Step::AwaitAnswer,
        (S::Created | S::Submitted, Event::Expire) => Step::Fail { reason: "expired".into() },
        (S::Succeeded, Event::Answer(O::Declined { .. })) | (S::Failed, Event::Answer(O::Approved { .. })) => {
            Step::Contradiction
        }
        // Submit of a submitted payment (a redelivered message: the status query decides),
        // NotReached of a created one, and anything after a final state.
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
        Step::Ignore | Step::Contradiction => state,
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

    #[test]
    fn transition_table() {
        use State::*;
        let fail = |r: &str| Step::Fail { reason: r.into() };
        let table = [
            (Created, Event::Submit, Step::MarkSubmitted),
            (Created, Event::NotReached, Step::Ignore),
            (Created, approved(), Step::Succeed),
            (Created, declined(), fail("declined")),
            (Created, pending(), Step::AwaitAnswer),
            (Created, Event::Expire, fail("expired")),
            (Submitted, Event::Submit, Step::Ignore),
            (Submitted, Event::NotReached, Step::BackToCreated),
            (Submitted, approved(), Step::Succeed),
            (Submitted, declined(), fail("declined")),
            (Submitted, pending(), Step::AwaitAnswer),
            (Submitted, Event::Expire, fail("expired")),
            (Succeeded, approved(), Step::Ignore),
            (Succeeded, pending(), Step::Ignore),
            (Succeeded, declined(), Step::Contradiction),
            (Succeeded, Event::Expire, Step::Ignore),
            (Succeeded, Event::Submit, Step::Ignore),
            (Succeeded, Event::NotReached, Step::Ignore),
            (Failed, declined(), Step::Ignore),
            (Failed, pending(), Step::Ignore),
            (Failed, approved(), Step::Contradiction),
            (Failed, Event::Expire, Step::Ignore),
            (Failed, Event::Submit, Step::Ignore),
        ];
        for (state, event, expected) in table {
            assert_eq!(step(state, &event), expected, "{state:?} + {event:?}");
        }
    }

    #[test]
    fn final_states_never_move_and_states_round_trip() {
        for state in [State::Succeeded, State::Failed] {
            for event in [approved(), declined(), pending(), Event::Expire, Event::Submit, Event::NotReached] {
                assert_eq!(next(state, &step(state, &event)), state);
            }
        }
        for state in [State::Created, State::Submitted, State::Succeeded, State::Failed] {
            assert_eq!(State::parse(state.as_str()), Some(state));
        }
        assert_eq!(State::Submitted.status(), "pending");
    }
}
