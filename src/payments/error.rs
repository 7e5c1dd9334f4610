//! The errors of the payments layer: its own (no such payment, already final, a row or
//! message it cannot read) over the ledger's, converted at the boundary. Database and
//! shard errors are carried as the ledger's, as in `transfer::Error`, so how they are
//! answered is decided once.
use crate::ledger;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("payment not found")]
    PaymentNotFound,
    #[error("the payment is already final")]
    PaymentFinal,
    #[error("invariant broken: {0}")]
    Invariant(String),
    #[error(transparent)]
    Ledger(#[from] ledger::Error),
}

ledger::carried_by!(Error);

pub type Result<T> = std::result::Result<T, Error>;
