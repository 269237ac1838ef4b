//! PixelGrid's gRPC contracts, generated from the `.proto` files beside this crate.
//!
//! - [`types::v1`]: shared types (node id, GPU info, encoders, games, regions, video modes, price).
//! - [`orchestrator::v1`]: node registry, two-step launch, session lifecycle, draining.
//! - [`indexer::v1`]: signed node reports, epochs, payouts and Merkle proofs.
//! - [`token`]: the session token an orchestrator signs and an edge node checks (PASETO v4.public).

#![forbid(unsafe_code)]
#![allow(missing_debug_implementations, clippy::doc_markdown)]

pub mod audio;
pub mod challenge;
pub mod check;
pub mod clock;
pub mod http;
pub mod identity;
pub mod input;
pub mod metrics;
pub mod receipt;
pub mod shutdown;
pub mod token;
pub mod transport;

/// Shared types.
pub mod types {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("pixelgrid.types.v1");
    }
}

/// The control plane's contract.
pub mod orchestrator {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("pixelgrid.orchestrator.v1");
    }
}

/// The indexer's contract.
pub mod indexer {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("pixelgrid.indexer.v1");
    }
}

#[cfg(test)]
mod tests {
    use super::types::v1::{NodeId, VideoMode};
    use prost::Message;

    #[test]
    fn messages_round_trip_through_the_wire_format() {
        let mode = VideoMode {
            width_px: 1280,
            height_px: 720,
            fps: 60,
        };
        let bytes = mode.encode_to_vec();
        assert_eq!(VideoMode::decode(bytes.as_slice()).unwrap(), mode);
        let id = NodeId {
            hex: "ab".repeat(32),
        };
        assert_eq!(NodeId::decode(id.encode_to_vec().as_slice()).unwrap(), id);
    }
}
