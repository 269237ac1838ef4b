//! The orchestrator's one error type.

/// What can go wrong in the orchestrator, with messages a person can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store (etcd) cannot be reached; the message names the endpoint.
    #[error("{0}")]
    Unavailable(String),
    /// The store refused an operation (e.g. an expired lease).
    #[error("store: {0}")]
    Store(String),
    /// No node can take the session; the message names the constraint that failed.
    #[error("no capacity: {0}")]
    NoCapacity(String),
    /// A request field is wrong; names the field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A node request whose signature does not verify, or a call without a valid credential;
    /// says which and what to send instead.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// No ready node has the game (at the version) asked for; names what the grid offers.
    #[error("{0}")]
    GameUnavailable(String),
    /// A valid credential asking for what is not its own.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A studio over one of its limits, or a caller over its rate; names the limit.
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// No such node, session or launch.
    #[error("{0} not found")]
    NotFound(String),
}

/// Result with the orchestrator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
