//! Domain types. Each parses once at the edge; a parsed value is valid everywhere.
mod amount;
mod ids;
pub mod payment_method;
pub mod transfer_state;

pub use amount::{Amount, AmountError, MAX_AMOUNT_DIGITS};
pub use ids::{Currency, IdempotencyKey, InvalidId, RoutableId, UserId};
pub use transfer_state::{ReceiverState, SenderState};

/// Who is calling, from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Admins act on anyone; a user only on themself.
    pub fn may_act_for(&self, user: &UserId) -> bool {
        self.is_admin() || self.subject == user.as_str()
    }
}
