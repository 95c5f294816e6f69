//! Cluster metadata: users, sessions, tickets, rooms, members and roles,
//! invites, bans, mutes, read markers, the moderation audit trail, and which
//! node owns each room's log (with its epoch); disabled accounts and
//! invite codes.
//!
//! [`MetaState::apply`] is a deterministic state machine: the same commands in
//! the same order give the same state on every node. It does no I/O and reads
//! no clock: every command carries the proposer's `now`. Permission checks
//! happen here (authoritatively) through [`crate::permissions`]. What the
//! connection layer must do in reaction (close sockets, end subscriptions,
//! publish member events) comes out as [`MetaEffect`]s.

pub mod accounts;
pub mod layout;
mod state;
#[cfg(test)]
mod tests;

pub use accounts::AccountCommand;
pub use layout::ClusterNode;
pub use layout::Layout;
pub use layout::LayoutCommand;
pub use state::*;
