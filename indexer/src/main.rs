//! `indexer`: PixelGrid's indexer daemon (`serve`) and its benchmark (`bench`).

use clap::{Args, Parser, Subcommand};
use indexer::daemon::{DaemonConfig, Indexer};
use indexer::ledger::Ledger;
use indexer::report::sign;
use indexer::tally::{Tally, TallyConfig};
use pixelgrid_proto::identity::NodeKey;
use pixelgrid_proto::indexer::v1::{NodeReport, SessionDelivery, SignedNodeReport};
use pixelgrid_proto::types::v1::{NodeId, VideoMode};
use std::time::{Duration, Instant};

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
    /// Run the indexer: take nodes' signed reports, probe nodes, close epochs into the ledger.
    Serve(Box<ServeArgs>),
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

#[derive(Args, Debug)]
struct ServeArgs {
    /// TLS certificate chain (PEM) for the gRPC server; with --tls-key, plaintext is
    /// refused. Clients then use https:// URLs (and PIXELGRID_CA_FILE for a private CA).
    #[arg(long, env = "PIXELGRID_TLS_CERT")]
    tls_cert: Option<std::path::PathBuf>,
    /// The certificate's key (PEM).
    #[arg(long, env = "PIXELGRID_TLS_KEY")]
    tls_key: Option<std::path::PathBuf>,
    /// Admit only gRPC clients with a certificate from this CA (PEM): mutual TLS between
    /// daemons.
    #[arg(long, env = "PIXELGRID_TLS_CLIENT_CA")]
    tls_client_ca: Option<std::path::PathBuf>,
    /// gRPC address (pixelgrid.indexer.v1 and grpc.health.v1).
    #[arg(
        long,
        env = "PIXELGRID_INDEXER_LISTEN",
        default_value = "127.0.0.1:50061"
    )]
    listen: std::net::SocketAddr,
    /// HTTP address for /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "PIXELGRID_INDEXER_HTTP_LISTEN",
        default_value = "127.0.0.1:8061"
    )]
    http_listen: std::net::SocketAddr,
    /// SQLite ledger file (created if missing; WAL files sit beside it).
    #[arg(long, env = "PIXELGRID_LEDGER", default_value = "indexer.db")]
    ledger: std::path::PathBuf,
    /// Orchestrator gRPC URL: the node set (ids are the nodes' public keys) and probe addresses.
    #[arg(long, env = "PIXELGRID_ORCHESTRATOR")]
    orchestrator: Option<String>,
    /// Epoch length, ms (a multiple of --slot-ms).
    #[arg(long, default_value_t = 3_600_000)]
    epoch_ms: u64,
    /// Report and probe period, ms: a node is up for a slot it reported in and passed probes in.
    #[arg(long, default_value_t = 60_000)]
    slot_ms: u64,
    /// How far ahead of the indexer's clock a report's time may be, ms.
    #[arg(long, default_value_t = 30_000)]
    max_clock_skew_ms: u64,
    /// How long after its time a report may still arrive, ms; epochs close this long after they end.
    #[arg(long, default_value_t = 600_000)]
    max_report_delay_ms: u64,
    /// Uptime below this share of the epoch (parts per million) forfeits the readiness reward.
    #[arg(long, default_value_t = 990_000)]
    sla_floor_ppm: u64,
    /// Micro-credits for a whole epoch of uptime.
    #[arg(long, default_value_t = 1_000_000)]
    readiness_reward: u64,
    /// Micro-credits per minute of play delivered at the promised quality.
    #[arg(long, default_value_t = 10_000)]
    delivery_reward_per_minute: u64,
    /// Micro-credits taken back per session a node dropped.
    #[arg(long, default_value_t = 50_000)]
    refund_per_dropped_session: u64,
    /// Probes per node per slot, at random moments (each retried within the slot when it
    /// fails; the slot is up when any passed).
    #[arg(long, default_value_t = 2)]
    probes_per_slot: u32,
    /// How often the node set is re-read from the orchestrator, ms.
    #[arg(long, default_value_t = 10_000)]
    registry_refresh_ms: u64,
    /// How long a node may be missing from the registry before it is no longer probed, s.
    #[arg(long, default_value_t = 3_600)]
    forget_after_s: u64,
}

impl ServeArgs {
    fn rules(&self) -> anyhow::Result<TallyConfig> {
        anyhow::ensure!(
            self.slot_ms > 0 && self.epoch_ms.is_multiple_of(self.slot_ms),
            "--epoch-ms ({}) must be a positive multiple of --slot-ms ({})",
            self.epoch_ms,
            self.slot_ms
        );
        Ok(TallyConfig {
            revision: indexer::tally::RULES_REVISION,
            epoch_ms: self.epoch_ms,
            slot_ms: self.slot_ms,
            max_clock_skew_ms: self.max_clock_skew_ms,
            max_report_delay_ms: self.max_report_delay_ms,
            sla_floor_ppm: self.sla_floor_ppm,
            readiness_reward: self.readiness_reward,
            delivery_reward_per_minute: self.delivery_reward_per_minute,
            refund_per_dropped_session: self.refund_per_dropped_session,
        })
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve(*args),
        Command::Bench {
            reports,
            nodes,
            close_nodes,
            batch,
        } => bench(reports, nodes, close_nodes, batch),
    }
}

#[allow(clippy::print_stdout)]
fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let indexer = Indexer::open(DaemonConfig {
        rules: args.rules()?,
        ledger: args.ledger.clone(),
        orchestrator: args.orchestrator.clone(),
        probes_per_slot: args.probes_per_slot,
        registry_refresh: Duration::from_millis(args.registry_refresh_ms.max(100)),
        forget_after: Duration::from_secs(args.forget_after_s),
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
        let http = tokio::net::TcpListener::bind(args.http_listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.http_listen))?;
        println!(
            "indexer: gRPC on {}, metrics on http://{}/metrics",
            listener.local_addr()?,
            http.local_addr()?
        );
        let stop = pixelgrid_proto::shutdown::on_signal();
        tokio::spawn(indexer::daemon::serve_http(
            http,
            std::sync::Arc::clone(&indexer),
            pixelgrid_proto::shutdown::wait(stop.clone()),
        ));
        let tls = pixelgrid_proto::transport::TlsFiles {
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
            client_ca: args.tls_client_ca.clone(),
        }
        .grpc()
        .map_err(anyhow::Error::msg)?;
        indexer::daemon::serve_with_tls(
            listener,
            indexer,
            tls,
            pixelgrid_proto::shutdown::wait(stop),
        )
        .await?;
        Ok(())
    })
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
fn bench(reports: u64, nodes: u64, close_nodes: u64, batch: usize) -> anyhow::Result<()> {
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

    // The same reports through the ledger: each batch committed (fsync) before it is acknowledged.
    let path = std::env::temp_dir().join(format!("pixelgrid-bench-{}.db", std::process::id()));
    let cleanup = |p: &std::path::Path| {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
        }
    };
    cleanup(&path);
    let mut ledger = Ledger::open(&path, &config)?;
    let empty_bytes = ledger.size_bytes()?;
    let mut t = Tally::new(config.clone());
    for k in &keys {
        t.add_node(&k.node_id());
    }
    let started = Instant::now();
    for chunk in signed
        .chunks(nodes as usize)
        .flat_map(|slot| slot.chunks(batch))
    {
        let now = chunk[0].1;
        let rs: Vec<SignedNodeReport> = chunk.iter().map(|(r, _)| r.clone()).collect();
        let verdicts = t.ingest_batch(&rs, now);
        let accepted: Vec<_> = rs
            .iter()
            .zip(verdicts)
            .filter(|(_, v)| *v == indexer::tally::Verdict::Accepted)
            .map(|(r, _)| (r, 0, now))
            .collect();
        ledger.append_reports(&accepted)?;
    }
    let ledger_reports_per_s = signed.len() as f64 / started.elapsed().as_secs_f64();
    let bytes_per_report = (ledger.size_bytes()? - empty_bytes) as f64 / signed.len() as f64;
    let report_bytes_per_node_epoch = bytes_per_report * (config.epoch_ms / slot) as f64;
    drop(ledger);
    cleanup(&path);

    // Epoch close over `close_nodes` nodes, each reported and probed in every slot it was seen:
    // tallies, payouts, Merkle root, every proof, all written to the ledger in one transaction.
    let mut big = Tally::new(config.clone());
    for i in 0..close_nodes {
        let id = format!("{:064x}", i + 1);
        big.add_node(&id);
        for s in 0..3 {
            big.record_probe(&id, s * slot + 2_000, true);
        }
    }
    let mut ledger = Ledger::open(&path, &config)?;
    let before = ledger.size_bytes()?;
    let close_started = Instant::now();
    let epoch = big.close_epoch(0).clone();
    ledger.write_closed(&epoch, config.epoch_ms)?;
    let close_s = close_started.elapsed().as_secs_f64();
    let payout_bytes_per_node_epoch =
        (ledger.size_bytes()? - before) as f64 / epoch.payouts.len().max(1) as f64;
    assert_eq!(
        ledger.payouts(0)?.len(),
        epoch.payouts.len(),
        "every payout is written with its proof"
    );
    drop(ledger);
    cleanup(&path);
    let bytes_per_node_epoch = payout_bytes_per_node_epoch + report_bytes_per_node_epoch;

    println!("| figure | measured | goal |");
    println!("| --- | --- | --- |");
    println!(
        "| signed reports verified and tallied, one core ({} reports, {accepted} accepted, batches of {batch}) | {reports_per_s:.0}/s | ≥ 50,000/s |",
        signed.len()
    );
    println!(
        "| the same, each batch committed to the ledger before acknowledgement | {ledger_reports_per_s:.0}/s | |"
    );
    println!(
        "| epoch close, {} nodes: tallies, payouts, Merkle root, every proof written to the ledger | {close_s:.3} s | ≤ 1 s |",
        epoch.payouts.len(),
    );
    println!(
        "| ledger bytes per node-epoch: payout row + proof, and its {} accepted reports | {bytes_per_node_epoch:.0} ({payout_bytes_per_node_epoch:.0} + {report_bytes_per_node_epoch:.0}) | |",
        config.epoch_ms / slot
    );
    println!(
        "{}",
        serde_json::json!({
            "reports": signed.len(), "accepted": accepted, "reports_per_s": reports_per_s,
            "ledger_reports_per_s": ledger_reports_per_s,
            "close_nodes": epoch.payouts.len(), "close_s": close_s,
            "bytes_per_node_epoch": bytes_per_node_epoch,
            "payout_bytes_per_node_epoch": payout_bytes_per_node_epoch,
            "report_bytes_per_node_epoch": report_bytes_per_node_epoch, "batch": batch,
        })
    );
    Ok(())
}
