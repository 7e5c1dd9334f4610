//! The names of the TCC states as the database stores them (`transfers.state` on the
//! sender's shard, `incoming_transfers.state` on the receiver's), written once here.
//! The transitions between them are in `transfer::tcc`; these names sit on the lowest
//! floor because the ledger's audit and queries read the same columns.
//!
//! SQL that filters on a state uses [`state_sql!`] / [`states_sql!`], which expand to
//! string literals, rather than a bound parameter: a partial index such as
//! `transfers_to_redrive (... WHERE state IN ('trying', 'confirming') OR ...)` is only
//! chosen when the planner can prove the query's predicate implies the index's, which it
//! cannot for `state = ANY($1)` in a generic plan (checked with EXPLAIN on PostgreSQL 16:
//! a sequential scan). A literal built by the macro is the same text as one written by
//! hand, so statements and plans stay as they were.

/// The database name of a state, as a string literal: `state_name!(Sender::Trying)`.
macro_rules! state_name {
    (Sender::Trying) => {
        "trying"
    };
    (Sender::Confirming) => {
        "confirming"
    };
    (Sender::Completed) => {
        "completed"
    };
    (Sender::Cancelled) => {
        "cancelled"
    };
    (Receiver::Tried) => {
        "tried"
    };
    (Receiver::Rejected) => {
        "rejected"
    };
    (Receiver::Confirmed) => {
        "confirmed"
    };
    (Receiver::Cancelled) => {
        "cancelled"
    };
}

/// A state as a quoted SQL literal: `state_sql!(Sender::Trying)` is `'trying'`.
macro_rules! state_sql {
    ($kind:ident :: $state:ident) => {
        concat!("'", $crate::domain::transfer_state::state_name!($kind::$state), "'")
    };
}

/// A parenthesised SQL list of states, for `IN`:
/// `states_sql!(Sender::Trying, Sender::Confirming)` is `('trying', 'confirming')`.
macro_rules! states_sql {
    ($kind:ident :: $state:ident $(, $kinds:ident :: $states:ident)* $(,)?) => {
        concat!(
            "(",
            $crate::domain::transfer_state::state_sql!($kind::$state),
            $(", ", $crate::domain::transfer_state::state_sql!($kinds::$states),)*
            ")"
        )
    };
}

pub(crate) use {state_name, state_sql, states_sql};

/// An enum of states with `ALL`, `parse` and `as_str`, its names from `state_name!`.
macro_rules! states {
    ($(#[$doc:meta])* $name:ident: $kind:ident { $($state:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($state),+
        }

        impl $name {
            pub const ALL: &[$name] = &[$(Self::$state),+];

            pub fn parse(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|s| s.as_str() == text)
            }

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$state => state_name!($kind::$state)),+
                }
            }
        }
    };
}

states! {
    /// The sender's states (`transfers.state`; a same-shard transfer is only ever
    /// `completed`).
    SenderState: Sender { Trying, Confirming, Completed, Cancelled }
}

states! {
    /// The receiver's branch record (`incoming_transfers.state`).
    ReceiverState: Receiver { Tried, Rejected, Confirmed, Cancelled }
}

impl SenderState {
    /// Whether the sender has decided the transfer (its `completed_at` is set).
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_state() {
        for &s in SenderState::ALL {
            assert_eq!(SenderState::parse(s.as_str()), Some(s));
        }
        for &s in ReceiverState::ALL {
            assert_eq!(ReceiverState::parse(s.as_str()), Some(s));
        }
        assert_eq!(SenderState::parse("tried"), None);
        assert_eq!(ReceiverState::parse("trying"), None);
    }

    #[test]
    fn the_sql_macros_spell_the_enums_names() {
        assert_eq!(state_sql!(Sender::Trying), format!("'{}'", SenderState::Trying.as_str()));
        assert_eq!(states_sql!(Receiver::Tried), "('tried')");
        assert_eq!(states_sql!(Sender::Trying, Sender::Confirming), "('trying', 'confirming')");
    }

    /// The migrations' CHECK constraints and partial indexes spell the names too (SQL
    /// cannot import them); a renamed state must change both.
    #[test]
    fn the_schema_allows_exactly_these_states() {
        let schema = include_str!("../../migrations/V2__transfers.sql");
        let sender = concat!(
            "CHECK (state IN ",
            states_sql!(Sender::Trying, Sender::Confirming, Sender::Completed, Sender::Cancelled),
            ")"
        );
        let receiver = concat!(
            "CHECK (state IN ",
            states_sql!(Receiver::Tried, Receiver::Rejected, Receiver::Confirmed, Receiver::Cancelled),
            ")"
        );
        assert!(schema.contains(sender), "{sender} not in V2__transfers.sql");
        assert!(schema.contains(receiver), "{receiver} not in V2__transfers.sql");
        let redrive = include_str!("../../migrations/V3__cross_shard_recovery.sql");
        let predicate = concat!("WHERE state IN ", states_sql!(Sender::Trying, Sender::Confirming));
        assert!(redrive.contains(predicate), "{predicate} not in V3__cross_shard_recovery.sql");
    }
}
