//! The double-entry ledger of one shard. Every function here takes an open transaction
//! on the right shard (the router picked it) and applies one ledger rule inside it.
//!
//! - `accounts`: users, wallets, system accounts, row locks in a fixed order.
//! - `posting`: the only writer of entries; every posting sums to zero.
//! - `local`: adjustments, same-shard transfers, reversals.
//! - `holds`: the sender and receiver legs of cross-shard transfers.
//! - `queries`: history, transfer views.
//! - `verify`: the audit of each shard, and of both sides of cross-shard transfers.
pub mod accounts;
pub mod holds;
pub mod local;
pub mod posting;
pub mod queries;
pub mod verify;

pub use queries::{EntryView, TransferView, WalletView};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("user not found")]
    UserNotFound,
    #[error("wallet not found")]
    WalletNotFound,
    #[error("transfer not found")]
    TransferNotFound,
    #[error("entry not found")]
    EntryNotFound,
    #[error("user already exists")]
    UserExists,
    #[error("wallet already exists")]
    WalletExists,
    #[error("the entry was already reversed")]
    AlreadyReversed,
    #[error("this entry cannot be reversed: {0}")]
    NotReversible(&'static str),
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("the receiver has no wallet in this currency")]
    CurrencyMismatch,
    #[error("sender and receiver are the same wallet")]
    SameAccount,
    #[error(transparent)]
    Shard(crate::sharding::Error),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("invariant broken: {0}")]
    Invariant(String),
}

impl Error {
    /// Whether retrying the same work may succeed (lost connection, deadlock...).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Db(e) => crate::storage::is_transient(e),
            Error::Shard(crate::sharding::Error::Unavailable { .. }) => true,
            // The bucket moved under the work: the next attempt goes to its new owner.
            Error::Shard(shard) if shard.is_moved() => true,
            _ => false,
        }
    }
}

impl From<crate::sharding::Error> for Error {
    /// A statement that failed inside the router's checks is classified like any other
    /// statement (unavailable, lock timeout, conflict).
    fn from(e: crate::sharding::Error) -> Self {
        match e {
            crate::sharding::Error::Db { source, .. } => Error::Db(source),
            other => Error::Shard(other),
        }
    }
}

impl crate::sharding::MaybeMoved for Error {
    fn is_moved(&self) -> bool {
        matches!(self, Error::Shard(shard) if shard.is_moved())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// For an upper layer's error enum with a `Ledger(ledger::Error)` variant: database and
/// shard errors convert into it through the ledger's error, so whether one is transient
/// and how it is answered is decided in one place for every layer.
macro_rules! carried_by {
    ($error:ty) => {
        impl From<tokio_postgres::Error> for $error {
            fn from(e: tokio_postgres::Error) -> Self {
                Self::Ledger(e.into())
            }
        }

        impl From<$crate::sharding::Error> for $error {
            fn from(e: $crate::sharding::Error) -> Self {
                Self::Ledger(e.into())
            }
        }

        impl $crate::sharding::MaybeMoved for $error {
            fn is_moved(&self) -> bool {
                matches!(self, Self::Ledger(e) if $crate::sharding::MaybeMoved::is_moved(e))
            }
        }
    };
}
pub(crate) use carried_by;
