//! The one error type every client-facing operation answers with, carrying
//! the protocol code; transports turn it into HTTP bodies or `error` frames.

use palaver_protocol::Code;
use palaver_protocol::ErrorBody;

use crate::auth::AuthError;
use crate::meta::MetaError;
use crate::raft::ConsensusError;
use crate::storage::StorageError;

/// A refused or failed client request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    /// The protocol code.
    pub code: Code,
    /// Human text.
    pub message: String,
    /// For `rate_limited`, and `unavailable` when the node can tell: when to try again.
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    /// An error with a code and text.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after_ms: None }
    }

    /// `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, message)
    }

    /// `unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(Code::Unauthorized, "not authenticated")
    }

    /// `not_found`.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(Code::NotFound, format!("{} not found", what.into()))
    }

    /// `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, message)
    }

    /// `timeout`: a request body that did not arrive in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(Code::Timeout, message)
    }

    /// `too_large`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(Code::TooLarge, message)
    }

    /// `rate_limited` with the wait.
    pub fn rate_limited(retry_after_ms: u64) -> Self {
        Self { code: Code::RateLimited, message: "too many requests".into(), retry_after_ms: Some(retry_after_ms) }
    }

    /// `unavailable`: transient, retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    /// `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// What goes on the wire: inside `{"error":…}` on HTTP, in an `error` reply.
    pub fn body(&self) -> ErrorBody<&str> {
        ErrorBody { code: self.code, message: &self.message, retry_after_ms: self.retry_after_ms }
    }
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> Self {
        let code = match &e {
            MetaError::NotFound(_) => Code::NotFound,
            MetaError::Forbidden(_) => Code::Forbidden,
            MetaError::Conflict(_) => Code::Conflict,
            MetaError::BadRequest(_) => Code::BadRequest,
            MetaError::Unauthorized => Code::Unauthorized,
        };
        Self::new(code, e.to_string())
    }
}

impl From<ConsensusError> for ApiError {
    fn from(e: ConsensusError) -> Self {
        tracing::warn!(error = %e, "metadata write failed");
        Self::unavailable(format!("cluster metadata unavailable: {e}"))
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        tracing::error!(error = %e, "storage failed");
        Self::internal("storage failed")
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            // Expected under a login storm: counted in metrics, not logged per request.
            AuthError::Busy { retry_after_ms } => Self {
                code: Code::Unavailable,
                message: "too many password checks in progress on this node".into(),
                retry_after_ms: Some(retry_after_ms),
            },
            AuthError::Worker => Self::unavailable("the node is shutting down"),
            AuthError::Hash(_) => {
                tracing::error!(error = %e, "password hashing failed");
                Self::internal("password hashing failed")
            }
        }
    }
}
