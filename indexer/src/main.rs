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
    /// Most nodes one host may have up in a slot (0: no limit); more identities answering
    /// probes from one host earn nothing for that slot, the lowest node ids first.
    #[arg(long, default_value_t = 8)]
    max_nodes_per_host: u32,
    /// Share of delivery rewards kept as the protocol fee, ppm (it and slashed stake go to the
    /// treasury's leaf).
    #[arg(long, default_value_t = 200_000)]
    protocol_fee_ppm: u64,
    /// How long a withdrawal of stake stays at risk after it is asked for, ms.
    #[arg(long, default_value_t = 604_800_000)]
    withdrawal_delay_ms: u64,
    /// K of the downtime slash (1/3 × K × coefficient of the stake at risk), ppm.
    #[arg(long, default_value_t = 300_000)]
    slash_k_ppm: u64,
    /// The stake coefficient of the downtime slash, ppm.
    #[arg(long, default_value_t = 1_000_000)]
    stake_coefficient_ppm: u64,
    /// How many downtime slashes a node the checkers fail loses (Aethir: 3).
    #[arg(long, default_value_t = 3)]
    dishonesty_factor: u64,
    /// Hex ed25519 public key(s) of the checkers whose signed results count (comma-separated;
    /// `pixelgrid check` prints its key as `checker`). A node fails an epoch when more than half
    /// of them found it failing; every indexer of a grid must name the same checkers.
    #[arg(long, env = "PIXELGRID_CHECKER_KEYS", value_delimiter = ',')]
    checker_key: Vec<String>,
    /// Hex ed25519 public key(s) of the orchestrator whose session tokens prove placements
    /// (comma-separated: old and new during a key rotation; `orchestrator public-key` prints
    /// it). Without one, no delivery is credited.
    #[arg(long, env = "PIXELGRID_ORCHESTRATOR_KEY", value_delimiter = ',')]
    orchestrator_key: Vec<String>,
    /// How long a node may be missing from the registry before it is no longer probed, s.
    #[arg(long, default_value_t = 3_600)]
    forget_after_s: u64,
    /// Most MiB the ledger's database may take (its write-ahead log beside it adds a few MiB
    /// until the next checkpoint); past it reports wait with the nodes (as on a full disk) until
    /// it is raised. Unset: the disk's size.
    #[arg(long, env = "PIXELGRID_LEDGER_MAX_MB")]
    ledger_max_mb: Option<u64>,
}

impl ServeArgs {
    fn rules(&self) -> anyhow::Result<TallyConfig> {
        anyhow::ensure!(
            self.slot_ms > 0 && self.epoch_ms.is_multiple_of(self.slot_ms),
            "--epoch-ms ({}) must be a positive multiple of --slot-ms ({})",
            self.epoch_ms,
            self.slot_ms
        );
        let keys: Vec<&str> = self.orchestrator_key.iter().map(String::as_str).collect();
        if !keys.is_empty() {
            pixelgrid_proto::token::TokenVerifier::from_hex_keys(&keys).map_err(|e| {
                anyhow::anyhow!("--orchestrator-key: {e}; give the 64-hex-digit key `orchestrator public-key` prints")
            })?;
        }
        let checker_keys = self
            .checker_key
            .iter()
            .map(|k| {
                let k = k.trim().to_ascii_lowercase();
                pixelgrid_proto::identity::canonical_node_id(&k)
                    .map(|_| k.clone())
                    .map_err(|e| anyhow::anyhow!("--checker-key {k}: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // One vote per checker: a key named twice must not raise the majority's bar.
        let mut checker_keys = checker_keys;
        checker_keys.sort();
        checker_keys.dedup();
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
            max_nodes_per_host: self.max_nodes_per_host,
            protocol_fee_ppm: self.protocol_fee_ppm,
            withdrawal_delay_ms: self.withdrawal_delay_ms,
            slash_k_ppm: self.slash_k_ppm,
            stake_coefficient_ppm: self.stake_coefficient_ppm,
            dishonesty_factor: self.dishonesty_factor,
            checker_keys,
            orchestrator_keys: self
                .orchestrator_key
                .iter()
                .map(|k| k.trim().to_ascii_lowercase())
                .collect(),
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
        ledger_max_bytes: args.ledger_max_mb.map(|mb| mb.saturating_mul(1 << 20)),
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

/// A session on `node` placed by `orchestrator`, with its player's key.
fn placed_session(
    orchestrator: &pixelgrid_proto::token::TokenSigner,
    node: &str,
    i: u64,
) -> (String, String, pixelgrid_proto::receipt::PlayerKey) {
    use pixelgrid_proto::token::{SessionClaims, format_rfc3339};
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&i.to_le_bytes());
    let player = pixelgrid_proto::receipt::PlayerKey::from_seed(&seed);
    let sid = format!("bench-{i}");
    let token = orchestrator.sign(&SessionClaims {
        sid: sid.clone(),
        nid: node.to_owned(),
        game: "arena".into(),
        width: 1280,
        height: 720,
        fps: 60,
        iat: format_rfc3339(0),
        exp: format_rfc3339(7 * 86_400),
        aud: node.to_owned(),
        nbf: format_rfc3339(0),
        pk: player.public_hex(),
        ..Default::default()
    });
    (sid, token, player)
}

/// One session's minute of delivery, with the player's receipt for `played_ms` so far.
fn delivery(
    sid: &str,
    token: &str,
    player: &pixelgrid_proto::receipt::PlayerKey,
    sequence: u64,
    played_ms: u64,
) -> SessionDelivery {
    let mode = Some(VideoMode {
        width_px: 1280,
        height_px: 720,
        fps: 60,
    });
    let receipt = pixelgrid_proto::receipt::Receipt {
        sequence,
        frames: played_ms * 60 / 1000,
        played_ms,
        width: 1280,
        height: 720,
        fps: 60,
        at_unix_ms: played_ms,
    };
    SessionDelivery {
        session_id: sid.into(),
        promised: mode,
        achieved: mode,
        delivered_ms: 60_000,
        dropped_by_node: false,
        session_token: token.into(),
        receipt: Some(receipt.to_proto(player.sign(sid, &receipt))),
    }
}

/// Bare ed25519 batch verification of `items` in batches of `batch`: signatures per second, the
/// ceiling the tally is measured against.
fn signature_ceiling(
    items: &[(
        Vec<u8>,
        ed25519_dalek::Signature,
        ed25519_dalek::VerifyingKey,
    )],
    batch: usize,
) -> f64 {
    let started = Instant::now();
    for chunk in items.chunks(batch) {
        let msgs: Vec<&[u8]> = chunk.iter().map(|(m, _, _)| m.as_slice()).collect();
        let sigs: Vec<_> = chunk.iter().map(|(_, s, _)| *s).collect();
        let keys: Vec<_> = chunk.iter().map(|(_, _, k)| *k).collect();
        ed25519_dalek::verify_batch(&msgs, &sigs, &keys).expect("valid signatures");
    }
    items.len() as f64 / started.elapsed().as_secs_f64()
}

/// When a batch of one slot's reports arrives: when they were sent (owned reports go straight
/// into the tally, as the daemon's stream hands them over: no copy is timed).
fn arrival(batch: &[SignedNodeReport]) -> u64 {
    batch[0].report.as_ref().map_or(0, |r| r.sent_unix_ms)
}

#[allow(clippy::print_stdout)]
fn bench(reports: u64, nodes: u64, close_nodes: u64, batch: usize) -> anyhow::Result<()> {
    let orchestrator = pixelgrid_proto::token::TokenSigner::from_seed(&[5; 32]);
    let config = TallyConfig {
        sla_floor_ppm: 0,
        orchestrator_keys: vec![orchestrator.public_key_hex()],
        ..TallyConfig::default()
    };
    let slot = config.slot_ms;

    // Reports: each node reports once a slot, with one session placed by the orchestrator and
    // its player's receipt (two signatures per report, and a token per session).
    let keys: Vec<NodeKey> = (0..nodes).map(key).collect();
    let sessions: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| placed_session(&orchestrator, &k.node_id(), i as u64))
        .collect();
    let per_node = reports.div_ceil(nodes).min(config.epoch_ms / slot);
    // Each report arrives at the time it was sent (reports of one slot together).
    let mut signed: Vec<SignedNodeReport> = Vec::with_capacity((per_node * nodes) as usize);
    for m in 0..per_node {
        for (k, (sid, token, player)) in keys.iter().zip(&sessions) {
            let at = m * slot + 1_000;
            let r = NodeReport {
                node_id: Some(NodeId { hex: k.node_id() }),
                sequence: m + 1,
                sent_unix_ms: at,
                state: 1,
                sessions: vec![delivery(sid, token, player, m + 1, at - 500)],
                telemetry_digest: vec![0; 32],
            };
            signed.push(sign(r, k));
        }
    }
    // The ceiling, measured in this run: the same signatures (report and receipt) verified
    // bare, in batches of the same size.
    let bare: Vec<_> = signed
        .iter()
        .flat_map(|s| {
            let r = s.report.as_ref().expect("report");
            let node_key = ed25519_dalek::VerifyingKey::from_bytes(
                &<[u8; 32]>::try_from(
                    pixelgrid_proto::token::unhex(&r.node_id.as_ref().expect("id").hex)
                        .expect("hex"),
                )
                .expect("32 bytes"),
            )
            .expect("key");
            let report_sig = ed25519_dalek::Signature::from_slice(
                &s.signature.as_ref().expect("signature").signature,
            )
            .expect("signature");
            let d = &r.sessions[0];
            let receipt = d.receipt.as_ref().expect("receipt");
            let i: usize = d
                .session_id
                .trim_start_matches("bench-")
                .parse()
                .expect("index");
            let player = ed25519_dalek::VerifyingKey::from_bytes(&sessions[i].2.public_bytes())
                .expect("key");
            [
                (prost::Message::encode_to_vec(r), report_sig, node_key),
                (
                    pixelgrid_proto::receipt::Receipt::from_proto(receipt)
                        .signed_text(&d.session_id),
                    ed25519_dalek::Signature::from_slice(&receipt.signature).expect("signature"),
                    player,
                ),
            ]
        })
        .collect();
    let mut t = Tally::new(config.clone());
    for k in &keys {
        t.add_node(&k.node_id());
    }
    // Slot by slot, the ceiling (that slot's signatures verified bare) and then the tally (that
    // slot's reports): the two alternate, so a change in the core's speed during the run (turbo,
    // a neighbour) weighs on both alike.
    let mut ceiling_s = 0.0;
    let mut ingest_s = 0.0;
    let mut accepted = 0usize;
    for (slot, bare) in signed
        .chunks(nodes as usize)
        .zip(bare.chunks(2 * nodes as usize))
    {
        ceiling_s += bare.len() as f64 / signature_ceiling(bare, batch);
        let started = Instant::now();
        // Reports of one slot arrive together (batches never straddle slots).
        for chunk in slot.chunks(batch) {
            accepted += t
                .ingest_batch(chunk, arrival(chunk))
                .iter()
                .filter(|v| **v == indexer::tally::Verdict::Accepted)
                .count();
        }
        ingest_s += started.elapsed().as_secs_f64();
    }
    let signatures_per_s = bare.len() as f64 / ceiling_s;
    let ceiling_reports_per_s = signatures_per_s / 2.0;
    let reports_per_s = signed.len() as f64 / ingest_s;
    let share = reports_per_s / ceiling_reports_per_s;
    let attested_minutes = t.take_attested().len();

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
        let now = arrival(chunk);
        let verdicts = t.ingest_batch(chunk, now);
        let accepted: Vec<_> = chunk
            .iter()
            .zip(verdicts)
            .filter(|(_, v)| *v == indexer::tally::Verdict::Accepted)
            .map(|(r, _)| (r, 0, now))
            .collect();
        ledger.append_reports(&accepted, &t.take_attested())?;
    }
    let ledger_reports_per_s = signed.len() as f64 / started.elapsed().as_secs_f64();
    let bytes_per_report = (ledger.size_bytes()? - empty_bytes) as f64 / signed.len() as f64;
    let report_bytes_per_node_epoch = bytes_per_report * (config.epoch_ms / slot) as f64;
    drop(ledger);
    cleanup(&path);

    // Epoch close over `close_nodes` nodes, each reported and probed in every slot it was seen:
    // tallies, payouts, Merkle root, every proof, all written to the ledger in one transaction.
    // Every node staked; those under the SLA (most: they were probed in three slots) are
    // slashed, and the treasury's leaf takes the slashes.
    let close_config = TallyConfig {
        sla_floor_ppm: TallyConfig::default().sla_floor_ppm,
        ..config.clone()
    };
    let mut big = Tally::new(close_config.clone());
    for i in 0..close_nodes {
        let id = format!("{:064x}", i + 1);
        big.add_node(&id);
        big.restore_stake_event(
            &id,
            1,
            indexer::stake::StakeEvent::Deposit { amount: 1_000_000 },
        );
        for s in 0..3 {
            big.record_probe(&id, s * slot + 2_000, true);
        }
    }
    let config = close_config;
    let mut ledger = Ledger::open(&path, &config)?;
    let before = ledger.size_bytes()?;
    let close_started = Instant::now();
    let epoch = big.close_epoch(0).clone();
    let tally_s = close_started.elapsed().as_secs_f64();
    ledger.write_closed(&epoch, config.epoch_ms)?;
    let close_s = close_started.elapsed().as_secs_f64();
    let write_s = close_s - tally_s;
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
        "| bare ed25519 batch verification (the ceiling, this run, batches of {batch}) | {signatures_per_s:.0} signatures/s = {ceiling_reports_per_s:.0} reports/s at 2 signatures each | |"
    );
    println!(
        "| signed reports with one player receipt each, verified and tallied, one core ({} reports, {accepted} accepted, {attested_minutes} receipts credited) | {reports_per_s:.0}/s = {:.0} % of the ceiling | ≥ 85 % |",
        signed.len(),
        share * 100.0
    );
    println!(
        "| the same, each batch committed to the ledger before acknowledgement | {ledger_reports_per_s:.0}/s | |"
    );
    println!(
        "| epoch close, {} nodes, all staked and most slashed: tallies, payouts, fee and slashes to the treasury's leaf, Merkle root, every proof written to the ledger | {close_s:.3} s ({tally_s:.3} s tally + {write_s:.3} s ledger) | ≤ 1 s at 100,000; ≤ 5 s at 1,000,000 |",
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
            "signatures_per_s_ceiling": signatures_per_s, "share_of_ceiling": share,
            "receipts_credited": attested_minutes,
            "ledger_reports_per_s": ledger_reports_per_s,
            "close_nodes": epoch.payouts.len(), "close_s": close_s,
            "close_tally_s": tally_s, "close_write_s": write_s,
            "bytes_per_node_epoch": bytes_per_node_epoch,
            "payout_bytes_per_node_epoch": payout_bytes_per_node_epoch,
            "report_bytes_per_node_epoch": report_bytes_per_node_epoch, "batch": batch,
        })
    );
    Ok(())
}
