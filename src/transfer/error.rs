//! The errors of the transfer layer: its own (a protocol violation, nothing left to
//! re-drive) over the ledger's, which it converts at the boundary. Database and shard
//! errors are carried as the ledger's (`ledger::Error::Db`, `Shard`), so whether one is
//! transient, and how the API answers it, is decided in one place for every layer.
use crate::ledger;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the transfer has nothing left to re-drive (completed, same-shard, or its cancel acknowledged)")]
    TransferFinal,
    /// A message or row the protocol never produces: refused (dead-lettered) and kept
    /// for operators, never applied.
    #[error("invariant broken: {0}")]
    Invariant(String),
    #[error(transparent)]
    Ledger(#[from] ledger::Error),
}

impl Error {
    /// Whether retrying the same work may succeed (lost connection, deadlock...).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Ledger(e) if e.is_transient())
    }
}

ledger::carried_by!(Error);

pub type Result<T> = std::result::Result<T, Error>;
