use super::*;

fn tried(ok: bool) -> SenderEvent {
    SenderEvent::Tried { ok, reason: (!ok).then(|| "user_not_found".to_string()) }
}

#[test]
fn sender_transition_table() {
    use SenderState::*;
    let cancel = |r: &str| SenderStep::Cancel { reason: r.into() };
    let table = [
        (Trying, tried(true), SenderStep::Confirm),
        (Trying, tried(false), cancel("user_not_found")),
        (Trying, SenderEvent::TryTimedOut, cancel("timeout")),
        (Trying, SenderEvent::Confirmed, SenderStep::Ignore),
        (Confirming, tried(true), SenderStep::Ignore),
        (Confirming, tried(false), SenderStep::Ignore),
        (Confirming, SenderEvent::TryTimedOut, SenderStep::Ignore),
        (Confirming, SenderEvent::Confirmed, SenderStep::Complete),
        (Completed, SenderEvent::Confirmed, SenderStep::Ignore),
        (Completed, tried(false), SenderStep::Ignore),
        (Cancelled, tried(true), SenderStep::Ignore),
        (Cancelled, SenderEvent::TryTimedOut, SenderStep::Ignore),
        (Cancelled, SenderEvent::Confirmed, SenderStep::Ignore),
        (Cancelled, SenderEvent::CancelAcked, SenderStep::AckCancel),
        (Trying, SenderEvent::CancelAcked, SenderStep::Ignore),
        (Confirming, SenderEvent::CancelAcked, SenderStep::Ignore),
        (Completed, SenderEvent::CancelAcked, SenderStep::Ignore),
    ];
    for (state, event, expected) in table {
        assert_eq!(sender_step(state, &event), expected, "{state:?} + {event:?}");
    }
}

#[test]
fn receiver_handles_duplicates_empty_rollback_and_suspension() {
    use ReceiverState as R;
    let none = Barriers::default();
    let tried = Barriers { tried: true, ..none };
    let cancelled = Barriers { cancelled: true, ..none };
    let confirmed = Barriers { tried: true, confirmed: true, ..none };
    let tried_cancelled = Barriers { tried: true, cancelled: true, ..none };
    let table = [
        (none, None, Stage::TryCredit, ReceiverStep::Try),
        (tried, Some(R::Tried), Stage::TryCredit, ReceiverStep::AnswerTriedAgain { ok: true }),
        (tried, Some(R::Rejected), Stage::TryCredit, ReceiverStep::AnswerTriedAgain { ok: false }),
        (cancelled, None, Stage::TryCredit, ReceiverStep::Suspend),
        (tried_cancelled, None, Stage::TryCredit, ReceiverStep::Ignore),
        (tried_cancelled, Some(R::Cancelled), Stage::TryCredit, ReceiverStep::Ignore),
        (tried, Some(R::Tried), Stage::ConfirmCredit, ReceiverStep::Confirm),
        (confirmed, Some(R::Confirmed), Stage::ConfirmCredit, ReceiverStep::AnswerConfirmedAgain),
        (none, None, Stage::CancelCredit, ReceiverStep::EmptyRollback),
        (tried, Some(R::Tried), Stage::CancelCredit, ReceiverStep::Cancel),
        (tried, Some(R::Rejected), Stage::CancelCredit, ReceiverStep::Cancel),
        (tried_cancelled, Some(R::Cancelled), Stage::CancelCredit, ReceiverStep::AnswerCancelledAgain),
        (cancelled, None, Stage::CancelCredit, ReceiverStep::AnswerCancelledAgain),
        (none, None, Stage::DirectCredit, ReceiverStep::CreditDirect),
        (
            Barriers { confirmed: true, ..none },
            Some(R::Confirmed),
            Stage::DirectCredit,
            ReceiverStep::AnswerConfirmedAgain,
        ),
    ];
    for (barriers, state, stage, expected) in table {
        assert_eq!(receiver_step(barriers, state, &stage), expected, "{barriers:?} {state:?} {stage:?}");
    }
    assert!(matches!(receiver_step(confirmed, Some(R::Confirmed), &Stage::CancelCredit), ReceiverStep::Violation(_)));
    assert!(matches!(receiver_step(tried, Some(R::Rejected), &Stage::ConfirmCredit), ReceiverStep::Violation(_)));
    assert!(matches!(receiver_step(none, None, &Stage::ConfirmCredit), ReceiverStep::Violation(_)));
    assert!(matches!(receiver_step(tried, Some(R::Tried), &Stage::Cancelled), ReceiverStep::Violation(_)));
    // A direct credit never meets a Try or a Cancel: the sender sends neither for it.
    let direct = Barriers { confirmed: true, ..none };
    assert_eq!(
        receiver_step(direct, Some(R::Confirmed), &Stage::TryCredit),
        ReceiverStep::AnswerTriedAgain { ok: true }
    );
    assert!(matches!(receiver_step(direct, Some(R::Confirmed), &Stage::CancelCredit), ReceiverStep::Violation(_)));
    assert!(matches!(receiver_step(tried, Some(R::Tried), &Stage::DirectCredit), ReceiverStep::Violation(_)));
    assert!(matches!(receiver_step(cancelled, None, &Stage::DirectCredit), ReceiverStep::Violation(_)));
}

/// Pruning the barriers of a final record changes no answer: for every record state and
/// every set of barriers a real history leaves beside it, the record alone gives each
/// stage the same step.
#[test]
fn a_final_record_implies_its_barriers() {
    use ReceiverState as R;
    let none = Barriers::default();
    let tried = Barriers { tried: true, ..none };
    let histories = [
        (R::Rejected, vec![tried]),
        // Try then Confirm, or a direct credit (no Try).
        (R::Confirmed, vec![Barriers { tried: true, confirmed: true, ..none }, Barriers { confirmed: true, ..none }]),
        // Try then Cancel; a Try after the Cancel adds nothing.
        (R::Cancelled, vec![Barriers { tried: true, cancelled: true, ..none }]),
    ];
    let stages = [
        Stage::TryCredit,
        Stage::ConfirmCredit,
        Stage::DirectCredit,
        Stage::CancelCredit,
        Stage::Tried { ok: true, reason: None },
        Stage::Confirmed,
        Stage::Cancelled,
    ];
    for (state, real) in histories {
        let implied = Barriers::implied_by(Some(state));
        for barriers in real {
            for stage in &stages {
                assert_eq!(
                    receiver_step(implied, Some(state), stage),
                    receiver_step(barriers, Some(state), stage),
                    "{state:?} with {barriers:?} pruned, {stage:?}"
                );
            }
        }
    }
}

#[test]
fn a_known_receiver_is_remembered_and_the_memory_is_bounded() {
    let known = KnownReceivers::default();
    let key = |i: usize| format!("user-{i}\u{0}EUR");
    assert!(!known.knows(&key(0)));
    known.learn(key(0));
    assert!(known.knows(&key(0)));
    for i in 1..KnownReceivers::MAX {
        known.learn(key(i));
    }
    assert!(known.knows(&key(0)), "full, not yet past the bound");
    known.learn(key(KnownReceivers::MAX));
    assert!(!known.knows(&key(0)), "past the bound it starts again");
    assert!(known.knows(&key(KnownReceivers::MAX)));
}
