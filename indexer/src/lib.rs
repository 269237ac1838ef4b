//! PixelGrid's indexer: who was up, who delivered play time, and who gets paid how much, in a
//! form anyone can check.
//!
//! - [`report`]: the canonical encoding nodes sign their reports over, and its verification.
//! - [`tally`]: the deciding core — clock-free and deterministic: accepted reports and probe
//!   results in, per-epoch uptime, delivery and integer payouts out.
//! - [`merkle`]: the per-epoch Merkle root over `(node_id, amount)` and the proof per node that a
//!   third party verifies offline (`pixelgrid payouts verify`).

#![forbid(unsafe_code)]

pub mod merkle;
pub mod report;
pub mod tally;
