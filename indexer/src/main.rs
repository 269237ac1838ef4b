//! `indexer`: PixelGrid's indexer. For now, its benchmark; the daemon comes with the ledger.

use clap::{Parser, Subcommand};
use indexer::report::sign;
use indexer::tally::{Tally, TallyConfig};
use pixelgrid_proto::identity::NodeKey;
use pixelgrid_proto::indexer::v1::{NodeReport, SessionDelivery, SignedNodeReport};
use pixelgrid_proto::types::v1::{NodeId, VideoMode};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "indexer",
    version,
    about = "PixelGrid indexer: verified uptime, payouts, Merkle proofs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Reports verified and tallied per second on one core, and the time to close a big epoch.
    Bench {
        /// Signed reports to ingest.
        #[arg(long, default_value_t = 200_000)]
        reports: u64,
        /// Nodes sending them.
        #[arg(long, default_value_t = 20_000)]
        nodes: u64,
        /// Nodes in the epoch that is closed (tallies, payouts, Merkle root, every proof).
        #[arg(long, default_value_t = 100_000)]
        close_nodes: u64,
        /// Signature checks per batch.
        #[arg(long, default_value_t = 64)]
        batch: usize,
    },
}

fn key(i: u64) -> NodeKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i + 1).to_le_bytes());
    NodeKey::from_seed(&seed)
}

fn delivery() -> SessionDelivery {
    let mode = Some(VideoMode {
        width_px: 1280,
        height_px: 720,
        fps: 60,
    });
    SessionDelivery {
        session_id: "s".into(),
        promised: mode,
        achieved: mode,
        delivered_ms: 60_000,
        dropped_by_node: false,
    }
}

#[allow(clippy::print_stdout)]
fn main() -> anyhow::Result<()> {
    let Command::Bench {
        reports,
        nodes,
        close_nodes,
        batch,
    } = Cli::parse().command;
    let config = TallyConfig {
        sla_floor_ppm: 0,
        ..TallyConfig::default()
    };
    let slot = config.slot_ms;

    // Reports: each node reports once a slot, with one session delivered.
    let keys: Vec<NodeKey> = (0..nodes).map(key).collect();
    let per_node = reports.div_ceil(nodes).min(config.epoch_ms / slot);
    let mut signed: Vec<(SignedNodeReport, u64)> = Vec::with_capacity((per_node * nodes) as usize);
    for m in 0..per_node {
        for k in &keys {
            let at = m * slot + 1_000;
            let r = NodeReport {
                node_id: Some(NodeId { hex: k.node_id() }),
                sequence: m + 1,
                sent_unix_ms: at,
                state: 1,
                sessions: vec![delivery()],
                telemetry_digest: vec![0; 32],
            };
            signed.push((sign(r, k), at));
        }
    }
    let mut t = Tally::new(config.clone());
    for k in &keys {
        t.add_node(&k.node_id());
    }
    let started = Instant::now();
    let mut accepted = 0usize;
    // Reports of one slot arrive together (batches never straddle slots).
    for chunk in signed
        .chunks(nodes as usize)
        .flat_map(|slot| slot.chunks(batch))
    {
        let now = chunk[0].1;
        let rs: Vec<SignedNodeReport> = chunk.iter().map(|(r, _)| r.clone()).collect();
        accepted += t
            .ingest_batch(&rs, now)
            .iter()
            .filter(|v| **v == indexer::tally::Verdict::Accepted)
            .count();
    }
    let ingest_s = started.elapsed().as_secs_f64();
    let reports_per_s = signed.len() as f64 / ingest_s;

    // Epoch close over `close_nodes` nodes, each reported and probed in every slot it was seen.
    let mut big = Tally::new(config.clone());
    for i in 0..close_nodes {
        let id = format!("{:064x}", i + 1);
        big.add_node(&id);
        for s in 0..3 {
            big.record_probe(&id, s * slot + 2_000, true);
        }
    }
    let close_started = Instant::now();
    let epoch = big.close_epoch(0).clone();
    let proofs = epoch.proofs();
    assert_eq!(proofs.len(), epoch.payouts.len(), "every payout proves");
    let proof_bytes: usize = proofs.iter().map(|p| 16 + 32 * p.siblings.len()).sum();
    let close_s = close_started.elapsed().as_secs_f64();
    let payout_row_bytes = 64 + 8 * 5; // node id (hex) and five integers, as a ledger row holds them
    let bytes_per_node_epoch =
        payout_row_bytes as f64 + proof_bytes as f64 / epoch.payouts.len().max(1) as f64;

    println!(
        "reports: {} ingested ({accepted} accepted) in {ingest_s:.2} s on one core: {reports_per_s:.0}/s (batches of {batch})",
        signed.len()
    );
    println!(
        "epoch close: {} nodes → tallies, payouts, Merkle root and every proof in {:.3} s",
        epoch.payouts.len(),
        close_s
    );
    println!("payout row + proof: {bytes_per_node_epoch:.0} bytes per node-epoch");
    println!(
        "{}",
        serde_json::json!({
            "reports": signed.len(), "accepted": accepted, "reports_per_s": reports_per_s,
            "close_nodes": epoch.payouts.len(), "close_s": close_s,
            "bytes_per_node_epoch": bytes_per_node_epoch, "batch": batch,
        })
    );
    Ok(())
}
