//! Palaver's client wire protocol (`docs/protocol.md`) as serde types: the
//! commands a client sends and the check each frame must pass, the replies and events it gets back, the
//! views of rooms, members, messages and accounts, the HTTP request bodies,
//! error codes with their HTTP status, and WebSocket close codes. The node
//! encodes through these types, the client decodes through them and the
//! benches write their frames with them, so a renamed field is renamed for
//! all three.
//!
//! It knows no transport: no sockets, no HTTP, no JSON library (the caller
//! picks the serde format), no clock, no state. What each code or event
//! means for a connection is the node's business.
//!
//! # Conventions
//! - Fields are declared in the order `docs/protocol.md` shows them, which
//!   is the order encoders write; readers must not depend on it.
//! - The types the node encodes on its hot paths (messages, events, replies)
//!   take their strings as a parameter `S`: `String` (the default) for
//!   readers, `&str` for writers encoding borrowed data without copying.
//! - The enums stored by the node's metadata (`Visibility`, `Role`,
//!   `UserRole`) are encoded there by variant index: never reorder them.

mod codes;
mod commands;
mod events;
mod names;
mod replies;
mod requests;
mod views;

pub use codes::Code;
pub use codes::close;
pub use commands::Command;
pub use commands::Frame;
pub use commands::FrameError;
pub use commands::FrameId;
pub use commands::Page;
pub use events::MemberChange;
pub use events::Removal;
pub use events::ServerEvent;
pub use events::StreamClosed;
pub use replies::Authenticated;
pub use replies::Done;
pub use replies::ErrorBody;
pub use replies::HistoryPage;
pub use replies::HttpError;
pub use replies::Reply;
pub use replies::SendAck;
pub use replies::Subscribed;
pub use requests::Credentials;
pub use requests::EditMessage;
pub use requests::Mute;
pub use requests::NewInvite;
pub use requests::NewMessage;
pub use requests::NewRoom;
pub use requests::NewUser;
pub use requests::PasswordChange;
pub use requests::ReadMarker;
pub use requests::Registration;
pub use requests::RoleChange;
pub use requests::RoomSettings;
pub use requests::UserTarget;
pub use views::Attachment;
pub use views::AuditEntry;
pub use views::Invite;
pub use views::Login;
pub use views::Me;
pub use views::Member;
pub use views::Message;
pub use views::PollAnswer;
pub use views::Reactions;
pub use views::Receipt;
pub use views::Registered;
pub use views::Role;
pub use views::Room;
pub use views::Ticket;
pub use views::UserEntry;
pub use views::UserMade;
pub use views::UserRole;
pub use views::Visibility;
