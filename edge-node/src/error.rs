//! The edge node's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the edge node, with a message a person can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A requested video mode, game, encoder or other setting is not acceptable.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The setting at fault, as the user named it (`width`, `fps`, `game`, ...).
        field: &'static str,
        /// What is wrong and what would be accepted.
        reason: String,
    },

    /// The catalogue has no game by that name.
    #[error("unknown game {name:?}; this node hosts: {available}")]
    UnknownGame {
        /// The name asked for.
        name: String,
        /// Comma-separated names of the games in the catalogue.
        available: String,
    },

    /// Vulkan could not be loaded or used.
    #[error("Vulkan: {0}")]
    Vulkan(String),

    /// A GStreamer pipeline or element failed.
    #[error("GStreamer: {0}")]
    Gstreamer(String),

    /// The node cannot take this now (draining, full, orchestrator unreachable).
    #[error("unavailable: {0}")]
    Unavailable(String),

    /// The WebRTC stack refused or failed an operation.
    #[error("WebRTC: {0}")]
    Webrtc(String),

    /// No encoder in the chain could encode a test frame.
    #[error("no working {codec} encoder; tried: {tried}")]
    NoEncoder {
        /// The codec asked for.
        codec: String,
        /// Each encoder tried and why it was skipped.
        tried: String,
    },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A packaged game would not start or stopped: it exited, crashed, or opened no window.
    #[error("game {game}: {reason}")]
    GameFailed {
        /// The game's name.
        game: String,
        /// What it did, with its last output where there was some.
        reason: String,
    },

    /// A session's worker stopped unexpectedly.
    #[error("session {id}: {reason}")]
    Session {
        /// Which session.
        id: String,
        /// What happened.
        reason: String,
    },
}

/// Result with the edge node's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<gstreamer::glib::Error> for Error {
    fn from(e: gstreamer::glib::Error) -> Self {
        Error::Gstreamer(e.to_string())
    }
}

impl From<gstreamer::glib::BoolError> for Error {
    fn from(e: gstreamer::glib::BoolError) -> Self {
        Error::Gstreamer(e.to_string())
    }
}
