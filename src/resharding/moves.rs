//! A bucket move's state machine, in one place.
//!
//! ```text
//!   owned ──begin──▶ copying ──────────fence──────────▶ switched ──cleanup──▶ cleaned
//!  (source)        (target 'incoming',   (source 'moved' commits,  (source 'moved',     (source's copy
//!                   copy committed)       then target 'owned')      target 'owned')      deleted)
//! ```
//!
//! What is authoritative at each state, and what a crash there leaves:
//! - **copying**: the source owns the bucket and serves it; the target holds it as
//!   'incoming' (refuses writes) with a copy taken while writes went on. A crash leaves
//!   a partial copy on the target; the re-run copies again over it (every write of
//!   `copy` is an upsert).
//! - **fenced** (inside two transactions, never committed as such): the source holds
//!   the bucket's locks (writes wait); what changed since the copy is read, written to
//!   the target and compared, the source's flip to 'moved' and the target's switch to
//!   'owned' written in each side's transaction. The source commits first: that commit
//!   is the switch. A crash before it rolls both back (the source still owns the
//!   bucket, writes resume, the re-run fences again).
//! - **between the two commits**: the source says 'moved' (naming the target and the
//!   epoch), the target still 'incoming' with its copy from before the fence. Nobody
//!   owns the bucket (requests get 503 `bucket_moving`) and the source's rows are the
//!   authoritative ones (`verify` counts them there): no write changes them any more
//!   (only pruning of expired keys and the like, which a copy may leave out). The
//!   re-run finds this pair of claims and takes the bucket over (`Step::TakeOver`: a
//!   full copy from the source, compared, committed with the target's switch). Never
//!   can both own it: the target takes it only after the source gave it.
//! - **switched**: the target committed its copy and took the bucket.
//! - **cleaned**: the source's copy is deleted (`reshard cleanup`).
//!
//! `next` decides the step from what the two shards record, so a re-run after kill -9
//! at any point continues where the last run stopped.
use crate::sharding::ownership::Claim;

/// What a move record on the target says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveState {
    Copying,
    Fenced,
    Switched,
    Cleaned,
}

impl MoveState {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveState::Copying => "copying",
            MoveState::Fenced => "fenced",
            MoveState::Switched => "switched",
            MoveState::Cleaned => "cleaned",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [MoveState::Copying, MoveState::Fenced, MoveState::Switched, MoveState::Cleaned]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// The next thing to do for one bucket, from the source's and target's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Record the move and mark the bucket 'incoming' on the target.
    Begin,
    /// Copy under the fence, compare, and switch the source.
    Fence,
    /// The source switched and the target did not: copy the source's rows (no write changes them) in
    /// full, compare and flip the target to 'owned'.
    TakeOver { epoch: i64 },
    /// Nothing left: the target owns the bucket.
    Done,
    /// The claims say something no move of ours leads to.
    Refuse(String),
}

/// `source` is what the bucket's current owner by the map says, `target` what the
/// target says (`None`: no row).
pub fn next(target_name: &str, source: Option<&(Claim, i64)>, target: Option<&(Claim, i64)>) -> Step {
    match (source, target) {
        (_, Some((Claim::Owned, _))) => match source {
            Some((Claim::Owned, _)) => Step::Refuse("both shards say they own the bucket".into()),
            _ => Step::Done,
        },
        (Some((Claim::Owned, _)), None | Some((Claim::Moved { .. }, _))) => Step::Begin,
        (Some((Claim::Owned, _)), Some((Claim::Incoming, _))) => Step::Fence,
        (Some((Claim::Moved { owner }, epoch)), Some((Claim::Incoming, _))) if owner == target_name => {
            Step::TakeOver { epoch: *epoch }
        }
        (Some((Claim::Moved { owner }, _)), _) => {
            Step::Refuse(format!("the source gave the bucket to {owner}, not to {target_name}"))
        }
        (Some((Claim::Incoming, _)), _) => Step::Refuse("the source is itself receiving the bucket".into()),
        (None, _) => Step::Refuse("the source has no record of the bucket".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(owner: &str, epoch: i64) -> (Claim, i64) {
        (Claim::Moved { owner: owner.into() }, epoch)
    }

    #[test]
    fn every_pair_of_claims_leads_to_one_step_and_a_rerun_continues() {
        let owned = (Claim::Owned, 1);
        let incoming = (Claim::Incoming, 1);
        assert_eq!(next("s4", Some(&owned), None), Step::Begin);
        assert_eq!(next("s4", Some(&owned), Some(&moved("s1", 3))), Step::Begin, "a bucket coming back");
        assert_eq!(next("s4", Some(&owned), Some(&incoming)), Step::Fence);
        assert_eq!(next("s4", Some(&moved("s4", 7)), Some(&incoming)), Step::TakeOver { epoch: 7 });
        assert_eq!(next("s4", Some(&moved("s4", 7)), Some(&(Claim::Owned, 7))), Step::Done);
        assert!(matches!(next("s4", Some(&owned), Some(&(Claim::Owned, 2))), Step::Refuse(_)));
        assert!(matches!(next("s4", Some(&moved("s2", 7)), Some(&incoming)), Step::Refuse(_)));
        assert!(matches!(next("s4", None, None), Step::Refuse(_)));
    }

    #[test]
    fn move_states_round_trip() {
        for s in [MoveState::Copying, MoveState::Fenced, MoveState::Switched, MoveState::Cleaned] {
            assert_eq!(MoveState::parse(s.as_str()), Some(s));
        }
    }
}
