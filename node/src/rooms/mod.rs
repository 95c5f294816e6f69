//! Room logs: every room's messages keyed by (room, seq), read locally on
//! every node, written by this node's single log writer (group commit).
//!
//! This module knows nothing of sockets or Raft: it takes room keys and
//! epochs from the metadata and hands committed messages to a publish
//! callback.

mod log;
pub(crate) mod record;
mod seq;
mod writer;

pub use log::RoomLog;
pub use record::Message;
pub use record::StoredMessage;
pub use seq::Sequencer;
pub use writer::Appended;
pub use writer::CommitAtOnce;
pub use writer::FlushSink;
pub use writer::FlushedBatch;
pub use writer::LogWriter;
pub use writer::Published;
pub use writer::Publisher;
pub use writer::Record;
pub use writer::RoomRef;
pub use writer::WriteError;

/// Most messages one history page returns.
pub const MAX_PAGE: usize = 500;
/// Messages a history page returns when the client names no limit.
pub const DEFAULT_PAGE: usize = 50;
