//! The SDK's one error type.

/// What can go wrong launching or playing; each message says what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The orchestrator cannot be reached or refused the request.
    #[error("orchestrator: {0}")]
    Orchestrator(String),
    /// No candidate node answered its probe.
    #[error("no candidate node answered its RTT probe ({0})")]
    NoReachableNode(String),
    /// Signalling or the WebRTC connection to the node failed.
    #[error("node {node}: {reason}")]
    Connection {
        /// Node address or id.
        node: String,
        /// What failed.
        reason: String,
    },
    /// The local decoder (GStreamer) could not be built; names the missing element.
    #[error("decoder: {0}")]
    Decoder(String),
    /// An option or argument is wrong; names it.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// Option name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The session has ended.
    #[error("the session has ended")]
    Ended,
}

/// Results in the SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;
