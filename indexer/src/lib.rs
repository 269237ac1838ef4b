//! PixelGrid's indexer: who was up, who delivered play time, and who gets paid how much, in a
//! form anyone can check.
//!
//! - [`report`]: the canonical encoding nodes sign their reports over, and its verification.
//! - [`tally`]: the deciding core — clock-free and deterministic: accepted reports and probe
//!   results in, per-epoch uptime, delivery and integer payouts out.
//! - [`ledger`]: SQLite (WAL), append-only: accepted reports, probe results, closed epochs with
//!   payouts and proofs; a restart replays it into the tally.
//! - [`daemon`]: the `indexer serve` shell — gRPC `pixelgrid.indexer.v1`, the prober, the
//!   registry feed from the orchestrator and the epoch closer.
//! - [`merkle`]: the per-epoch Merkle root over `(node_id, amount)` and the proof per node that a
//!   third party verifies offline (`pixelgrid payouts verify`).

#![forbid(unsafe_code)]

pub mod daemon;
mod error;
pub mod ledger;
pub mod merkle;
pub mod report;
pub mod stake;
pub mod tally;

pub use error::{Error, Result};
