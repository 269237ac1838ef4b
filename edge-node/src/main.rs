//! `edge-node`: the PixelGrid edge node's command line.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use edge_node::agent::{Agent, AgentConfig};
use edge_node::bench::{self, BenchRequest};
use edge_node::encode::{EncoderSettings, chain_for, probe_chain};
use edge_node::game::Catalogue;
use edge_node::host::SessionHost;
use edge_node::input::InputEvent;
use edge_node::offline::OfflineSession;
use edge_node::record::{self, RecordRequest};
use edge_node::render::VulkanContext;
use edge_node::telemetry::TelemetrySource;
use edge_node::video::{Codec, VideoMode};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "edge-node",
    version,
    about = "PixelGrid edge node: render game sessions on Vulkan and encode them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Onboard this machine: identity key, hardware self-check, encoder speed, registration.
    Onboard(Box<OnboardArgs>),
    /// Stake on this node, or ask to withdraw stake, at an indexer (signed with the node's
    /// identity key; a withdrawal stays slashable for the indexer's withdrawal delay).
    Stake {
        /// Indexer gRPC URL.
        #[arg(long, env = "PIXELGRID_INDEXER")]
        indexer: String,
        /// This node's identity key file.
        #[arg(long, env = "PIXELGRID_IDENTITY", default_value = "node.key")]
        identity: PathBuf,
        /// Micro-credits to deposit.
        #[arg(
            long,
            conflicts_with = "withdraw",
            required_unless_present = "withdraw"
        )]
        deposit: Option<u64>,
        /// Micro-credits to withdraw.
        #[arg(long)]
        withdraw: Option<u64>,
    },
    /// Report the Vulkan device, the encoders that really work and NVIDIA telemetry.
    Probe {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Render frames of a game to PNG files a person can look at.
    Snapshot {
        /// Frames to write.
        #[arg(long, default_value_t = 5)]
        frames: u64,
        /// Directory for frame-NNNNN.png (created if missing).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        video: VideoArgs,
    },
    /// Record a game session to a video file (.h264 or .mp4 for H.264, .webm for VP8).
    Record {
        /// Seconds of game time to record.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Frame numbers to force as keyframes (repeatable).
        #[arg(long = "keyframe-at")]
        keyframe_at: Vec<u64>,
        #[command(flatten)]
        video: VideoArgs,
        #[command(flatten)]
        encoder: EncoderArgs,
    },
    /// Serve game sessions to players over WebRTC (WHEP signalling).
    Serve(Box<ServeArgs>),
    /// Install, list and remove packaged games (a directory with a pixelgrid-game.toml).
    Games {
        /// Where installed games live (what `serve --games-dir` reads).
        #[arg(long, env = "PIXELGRID_GAMES_DIR", default_value = "games")]
        dir: PathBuf,
        #[command(subcommand)]
        action: GamesAction,
    },
    /// Measure render, readback, convert and encode time, and sessions per node.
    BenchPipeline {
        /// Installed packaged games (see `edge-node games`), to measure one of them.
        #[arg(long, env = "PIXELGRID_GAMES_DIR", default_value = "games")]
        games_dir: PathBuf,
        /// Frames per session to measure.
        #[arg(long, default_value_t = 600)]
        frames: u64,
        /// Sessions side by side (paced in real time when more than one).
        #[arg(long, default_value_t = 1)]
        sessions: u32,
        #[command(flatten)]
        video: VideoArgs,
        #[command(flatten)]
        encoder: EncoderArgs,
    },
}

#[derive(Subcommand, Debug)]
enum GamesAction {
    /// Install a package: a directory, a .tar/.tar.gz file, or an http(s):// URL of one.
    /// Replaces an installed game of the same id.
    Add {
        /// Directory, archive path or URL.
        source: String,
        /// SHA-256 (hex) the archive must have; required for a URL, checked before unpacking.
        #[arg(long)]
        sha256: Option<String>,
    },
    /// List installed games.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove an installed game.
    Remove {
        /// The game's id.
        id: String,
    },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Installed packaged games to host (see `edge-node games`); built-in games are always hosted.
    #[arg(long, env = "PIXELGRID_GAMES_DIR", default_value = "games")]
    games_dir: PathBuf,
    /// Where each packaged-game session gets its private directory (default:
    /// /tmp/pixelgrid-sessions/<listen port>); what an earlier run left there is removed at start.
    #[arg(long, env = "PIXELGRID_SESSION_DIR")]
    session_dir: Option<PathBuf>,
    /// HTTP address for WHEP, health and (in dev mode) the player page.
    #[arg(long, env = "PIXELGRID_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Addresses to offer WebRTC host candidates on (repeatable); default: the --listen address.
    #[arg(long = "ice-ip", env = "PIXELGRID_ICE_IP", value_delimiter = ',')]
    ice_ip: Vec<std::net::IpAddr>,
    /// STUN server URL advertised to players and used for gathering (repeatable).
    #[arg(long, env = "PIXELGRID_STUN", value_delimiter = ',')]
    stun: Vec<String>,
    /// TURN server URL (repeatable), with --turn-username and --turn-credential.
    #[arg(long, env = "PIXELGRID_TURN", value_delimiter = ',')]
    turn: Vec<String>,
    /// TURN username.
    #[arg(long, env = "PIXELGRID_TURN_USERNAME", default_value = "")]
    turn_username: String,
    /// TURN credential.
    #[arg(long, env = "PIXELGRID_TURN_CREDENTIAL", default_value = "")]
    turn_credential: String,
    /// Orchestrator gRPC URL: register, heartbeat, and accept the tokens it signs.
    #[arg(long, env = "PIXELGRID_ORCHESTRATOR")]
    orchestrator: Option<String>,
    /// Indexer gRPC URLs to send signed uptime and delivery reports to (repeatable).
    #[arg(long, env = "PIXELGRID_INDEXER", value_delimiter = ',')]
    indexer: Vec<String>,
    /// How often to report to the indexers, ms (their --slot-ms or less).
    #[arg(long, default_value_t = 60_000)]
    report_interval_ms: u64,
    /// Reports kept per indexer while it is unreachable (a day at one a minute).
    #[arg(long, default_value_t = 1_440)]
    report_buffer: usize,
    /// Where unacknowledged reports are kept across restarts (default: `reports/` beside the
    /// identity key).
    #[arg(long, env = "PIXELGRID_REPORT_OUTBOX")]
    report_outbox: Option<std::path::PathBuf>,
    /// This node's identity key file (created 0600 on first run; its public key is the node id).
    #[arg(long, env = "PIXELGRID_IDENTITY", default_value = "node.key")]
    identity: std::path::PathBuf,
    /// URL players reach this node's HTTP server at (default: http://<listen>, or https://
    /// with --tls-cert).
    #[arg(long, env = "PIXELGRID_PUBLIC_URL")]
    public_url: Option<String>,
    /// Serve WHEP, probes and /metrics over HTTPS with this certificate chain (PEM; read again
    /// when the file changes), so players' offers and tokens never cross the network in clear.
    #[arg(long, env = "PIXELGRID_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The certificate's key (PEM).
    #[arg(long, env = "PIXELGRID_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    #[command(flatten)]
    listing: Listing,
    /// On SIGTERM: take no new sessions and let running ones finish for up to this long.
    #[arg(long, default_value_t = 30)]
    drain_timeout_s: u64,
    /// Hex ed25519 public key(s) of the orchestrator whose session tokens this node accepts
    /// (comma-separated: old and new during a key rotation), given at onboarding
    /// (`orchestrator public-key` prints it). Required: a node never takes the key it trusts
    /// from the network.
    #[arg(long, env = "PIXELGRID_ORCHESTRATOR_KEY", value_delimiter = ',')]
    orchestrator_key: Vec<String>,
    /// This node's id, as the orchestrator names it in tokens.
    #[arg(long, env = "PIXELGRID_NODE_ID")]
    node_id: Option<String>,
    /// Sign our own tokens, expose POST /dev/sessions and serve the player page. Never in production.
    #[arg(long, env = "PIXELGRID_INSECURE_DEV")]
    insecure_dev: bool,
    /// Lifetime of dev-mode tokens (and so of dev sessions), seconds.
    #[arg(long, default_value_t = 3600)]
    dev_token_ttl_s: u64,
    /// Use only this H.264 encoder element instead of walking the chain.
    #[arg(long, env = "PIXELGRID_ENCODER")]
    encoder: Option<String>,
    /// Encoder threads per session (1 packs the most sessions onto a CPU).
    #[arg(long, default_value_t = 1)]
    encoder_threads: u32,
    /// Send every stream at the mode's fixed bitrate, without congestion control (for
    /// comparison in benchmarks; players on a poor link then see delay grow and frames freeze).
    #[arg(long, env = "PIXELGRID_NO_CONGESTION_CONTROL")]
    no_congestion_control: bool,
}

#[derive(Args, Debug)]
struct OnboardArgs {
    /// This node's identity key file (created 0600 when missing; its public key is the node id).
    #[arg(long, env = "PIXELGRID_IDENTITY", default_value = "node.key")]
    identity: PathBuf,
    /// Replace an existing identity key: the node gets a new id and loses its history.
    #[arg(long)]
    force: bool,
    /// The address `serve` will listen on (checked that it can be bound).
    #[arg(long, env = "PIXELGRID_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Orchestrator gRPC URL to register with (no registration without it).
    #[arg(long, env = "PIXELGRID_ORCHESTRATOR")]
    orchestrator: Option<String>,
    /// URL players reach this node's HTTP server at (default: http://<listen>).
    #[arg(long, env = "PIXELGRID_PUBLIC_URL")]
    public_url: Option<String>,
    #[command(flatten)]
    listing: Listing,
    /// Where to write the JSON report.
    #[arg(long, default_value = "onboard.json")]
    report: PathBuf,
    /// Frames encoded per mode to measure speed.
    #[arg(long, default_value_t = 120)]
    bench_frames: u64,
    /// One 720p session must encode at least this many frames per second.
    #[arg(long, default_value_t = 60.0)]
    min_encode_fps: f64,
    /// Print the JSON report instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct VideoArgs {
    /// Game from the node's catalogue.
    #[arg(long, env = "PIXELGRID_GAME", default_value = "arena")]
    game: String,
    /// Picture width in pixels (even, 16..=4096).
    #[arg(long, default_value_t = 1280)]
    width: u32,
    /// Picture height in pixels (even, 16..=4096).
    #[arg(long, default_value_t = 720)]
    height: u32,
    /// Frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Keys to hold down for the whole run (DOM codes, e.g. ArrowRight), to show input at work.
    #[arg(long)]
    hold: Vec<String>,
}

#[derive(Args, Debug)]
struct EncoderArgs {
    /// Codec: h264 or vp8.
    #[arg(long, env = "PIXELGRID_CODEC", default_value = "h264")]
    codec: String,
    /// Use only this encoder element instead of walking the chain.
    #[arg(long, env = "PIXELGRID_ENCODER")]
    encoder: Option<String>,
    /// Target bitrate; default scales with the mode.
    #[arg(long)]
    bitrate_kbps: Option<u32>,
    /// Frames between keyframes; default 4 seconds' worth.
    #[arg(long)]
    gop: Option<u32>,
    /// Encoder threads (0 = the encoder decides).
    #[arg(long, default_value_t = 1)]
    threads: u32,
}

impl VideoArgs {
    fn mode(&self) -> anyhow::Result<VideoMode> {
        Ok(VideoMode::new(self.width, self.height, self.fps)?)
    }
    fn inputs(&self) -> Vec<InputEvent> {
        self.hold
            .iter()
            .map(|code| InputEvent::Key {
                code: code.clone(),
                down: true,
            })
            .collect()
    }
}

impl EncoderArgs {
    fn settings(&self, mode: VideoMode) -> anyhow::Result<EncoderSettings> {
        let codec: Codec = self.codec.parse()?;
        let mut s = EncoderSettings::for_mode(mode, codec);
        if let Some(b) = self.bitrate_kbps {
            s.bitrate_kbps = b;
        }
        if let Some(g) = self.gop {
            s.gop_frames = g;
        }
        s.threads = self.threads;
        s.validate()?;
        if let Some(e) = &self.encoder
            && !chain_for(codec).iter().any(|c| c.element == e)
        {
            anyhow::bail!("invalid encoder: {e:?} is not a {codec} encoder");
        }
        Ok(s)
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[allow(clippy::print_stdout)]
fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Probe { json } => probe(json),
        Command::Onboard(args) => onboard(*args),
        Command::Stake {
            indexer,
            identity,
            deposit,
            withdraw,
        } => stake(
            &indexer,
            &identity,
            deposit.unwrap_or(0),
            withdraw.unwrap_or(0),
        ),
        Command::Snapshot { frames, out, video } => {
            let mode = video.mode()?;
            let vulkan = VulkanContext::new()?;
            let mut session =
                OfflineSession::new(&vulkan, &Catalogue::default(), &video.game, mode)?;
            for e in video.inputs() {
                session
                    .input(&e)
                    .map_err(|r| anyhow::anyhow!("invalid --hold {e:?}: {r}"))?;
            }
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            for _ in 0..frames {
                let path = out.join(format!("frame-{:05}.png", session.frame_number()));
                session.next_frame(|f| record::write_png(f, &path))?.0?;
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Record {
            seconds,
            out,
            keyframe_at,
            video,
            encoder,
        } => {
            let mode = video.mode()?;
            let settings = encoder.settings(mode)?;
            if !(seconds > 0.0 && seconds <= 3600.0) {
                anyhow::bail!("invalid seconds: {seconds}; use more than 0 and at most 3600");
            }
            let vulkan = VulkanContext::new()?;
            let choice = probe_chain(settings.codec, encoder.encoder.as_deref())?;
            let req = RecordRequest {
                game: video.game.clone(),
                settings,
                frames: (seconds * f64::from(mode.fps)).round().max(1.0) as u64,
                keyframes_at: keyframe_at,
                input: video.inputs(),
                out,
            };
            let report = record::record(&vulkan, &Catalogue::default(), &choice.candidate, &req)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Serve(args) => serve(*args),
        Command::Games { dir, action } => games(&dir, action),
        Command::BenchPipeline {
            games_dir,
            frames,
            sessions,
            video,
            encoder,
        } => {
            let mode = video.mode()?;
            let settings = encoder.settings(mode)?;
            let store = edge_node::runtime::store::GameStore::open(&games_dir)?;
            let runtime = edge_node::runtime::RuntimeConfig {
                session_root: PathBuf::from(format!(
                    "/tmp/pixelgrid-sessions/bench-{}",
                    std::process::id()
                )),
                hidden: Vec::new(),
            };
            let host = SessionHost::start(Catalogue::default(), encoder.encoder.clone())?
                .with_packaged(store.list()?, runtime)?;
            let report = bench::run(
                &host,
                &BenchRequest {
                    game: video.game.clone(),
                    settings,
                    frames,
                    sessions,
                },
            )?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", report.table())?;
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
            Ok(())
        }
    }
}

#[allow(clippy::print_stdout)]
fn probe(json: bool) -> anyhow::Result<()> {
    let vulkan = VulkanContext::new().map(|v| v.info().clone());
    let mut encoders = serde_json::Map::new();
    for codec in [Codec::H264, Codec::Vp8] {
        let v = match probe_chain(codec, None) {
            Ok(choice) => serde_json::to_value(&choice)?,
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        encoders.insert(codec.to_string(), v);
    }
    let telemetry = TelemetrySource::open().sample();
    let report = serde_json::json!({
        "vulkan": match &vulkan { Ok(i) => serde_json::to_value(i)?, Err(e) => serde_json::json!({ "error": e.to_string() }) },
        "encoders": encoders,
        "gpu_telemetry": telemetry,
    });
    if json {
        println!("{report}");
    } else {
        match &vulkan {
            Ok(i) => println!(
                "Vulkan device: {} ({}, {}), Vulkan {}, driver {}{}",
                i.name,
                i.vendor,
                i.device_type,
                i.api_version,
                i.driver,
                if i.cpu_fallback {
                    " — CPU rendering (lavapipe)"
                } else {
                    ""
                }
            ),
            Err(e) => println!("Vulkan: unavailable: {e}"),
        }
        for (codec, v) in &encoders {
            match v.get("candidate").and_then(|c| c.get("element")) {
                Some(el) => println!("{codec} encoder: {}", el.as_str().unwrap_or("?")),
                None => println!(
                    "{codec} encoder: none ({})",
                    v["error"].as_str().unwrap_or("?")
                ),
            }
            for s in v
                .get("skipped")
                .and_then(|s| s.as_array())
                .into_iter()
                .flatten()
            {
                println!(
                    "  skipped {}: {}",
                    s["element"].as_str().unwrap_or("?"),
                    s["reason"].as_str().unwrap_or("?")
                );
            }
        }
        match &telemetry {
            edge_node::telemetry::GpuTelemetry::Available {
                driver_version,
                gpus,
            } => {
                println!("NVIDIA driver {driver_version}");
                for g in gpus {
                    println!(
                        "  GPU {}: {}  util {:?}%  memory {:?}/{:?} bytes  encoder {:?}%  {:?} °C",
                        g.index,
                        g.name,
                        g.gpu_utilization_percent,
                        g.memory_used_bytes,
                        g.memory_total_bytes,
                        g.encoder_utilization_percent,
                        g.temperature_celsius
                    );
                }
            }
            edge_node::telemetry::GpuTelemetry::Unavailable { reason } => {
                println!("GPU telemetry: unavailable ({reason})")
            }
        }
    }
    Ok(())
}

/// A verifier trusting the `--orchestrator-key` values.
fn pinned_verifier(keys: &[String]) -> anyhow::Result<pixelgrid_proto::token::TokenVerifier> {
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    pixelgrid_proto::token::TokenVerifier::from_hex_keys(&keys)
        .context("invalid --orchestrator-key")
}

#[allow(clippy::print_stdout)]
fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use edge_node::stream::{IceServer, PeerSettings, StreamNode, StreamSettings};
    use pixelgrid_proto::token::TokenSigner;

    let (verifier, dev_signer, node_id) = if args.insecure_dev {
        tracing::warn!(
            "INSECURE DEV MODE: this node signs its own session tokens and lets anyone start sessions; never expose it"
        );
        let signer = TokenSigner::generate()
            .map_err(|e| anyhow::anyhow!("no randomness for a dev key: {e}"))?;
        let verifier = if args.orchestrator_key.is_empty() {
            signer.verifier()
        } else {
            pinned_verifier(&args.orchestrator_key)?
        };
        (
            Some(verifier),
            Some(signer),
            args.node_id.clone().unwrap_or_else(|| "dev-node".into()),
        )
    } else {
        anyhow::ensure!(
            !args.orchestrator_key.is_empty(),
            "--orchestrator-key is required: the orchestrator's token public key, from `orchestrator public-key --token-key FILE` (a node never takes the key it trusts from the network); use --insecure-dev to try a node alone"
        );
        let verifier = pinned_verifier(&args.orchestrator_key)?;
        if args.orchestrator.is_some() {
            // The node id comes from the identity key, at registration below.
            (Some(verifier), None, String::new())
        } else {
            let node_id = args
                .node_id
                .clone()
                .context("--node-id (or PIXELGRID_NODE_ID) is required")?;
            (Some(verifier), None, node_id)
        }
    };
    let ice_ips = if args.ice_ip.is_empty() {
        if args.listen.ip().is_unspecified() {
            anyhow::bail!(
                "--listen {} is a wildcard address; name the addresses players reach with --ice-ip",
                args.listen
            );
        }
        vec![args.listen.ip()]
    } else {
        args.ice_ip.clone()
    };
    let mut ice_servers: Vec<IceServer> = args
        .stun
        .iter()
        .map(|url| IceServer {
            url: url.clone(),
            username: String::new(),
            credential: String::new(),
        })
        .collect();
    ice_servers.extend(args.turn.iter().map(|url| IceServer {
        url: url.clone(),
        username: args.turn_username.clone(),
        credential: args.turn_credential.clone(),
    }));
    let settings = StreamSettings {
        node_id,
        peer: PeerSettings {
            udp_addrs: ice_ips
                .iter()
                .map(|ip| std::net::SocketAddr::new(*ip, 0))
                .collect(),
            // ICE-TCP beside UDP: the way in for players whose networks block UDP.
            tcp_addrs: ice_ips
                .iter()
                .map(|ip| std::net::SocketAddr::new(*ip, 0))
                .collect(),
            ice_servers,
            input_limits: Default::default(),
            congestion_control: !args.no_congestion_control,
            connect_deadline: edge_node::stream::DEFAULT_CONNECT_DEADLINE,
        },
        dev_token_ttl: std::time::Duration::from_secs(args.dev_token_ttl_s),
        encoder_threads: args.encoder_threads,
        max_sessions: args.listing.max_sessions as usize,
        identity: None,
    };
    let store = edge_node::runtime::store::GameStore::open(&args.games_dir)?;
    let runtime = edge_node::runtime::RuntimeConfig {
        session_root: args.session_dir.clone().unwrap_or_else(|| {
            PathBuf::from(format!("/tmp/pixelgrid-sessions/{}", args.listen.port()))
        }),
        // Games must not see the directory holding this node's identity key.
        hidden: std::path::absolute(&args.identity)
            .ok()
            .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
            .filter(|d| d.components().count() > 1)
            .into_iter()
            .collect(),
    };
    let host = std::sync::Arc::new(
        SessionHost::start(Catalogue::default(), args.encoder.clone())?
            .with_packaged(store.list()?, runtime)?,
    );
    for g in host.games() {
        tracing::info!(id = %g.id, version = %g.version, packaged = g.packaged, "hosting game");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(
                pixelgrid_proto::transport::tls_acceptor(cert, key)
                    .map_err(|e| anyhow::anyhow!("--tls-cert/--tls-key: {e}"))?,
            ),
            _ => None,
        };
        // Players and indexers reach a TLS node by https (and a plaintext one by http).
        let public_url = match (&args.public_url, &tls) {
            (Some(u), Some(_)) if !u.starts_with("https://") => anyhow::bail!(
                "--public-url {u} is not https://, but the node serves TLS (--tls-cert): players would speak plain HTTP to it"
            ),
            (Some(u), _) => Some(u.clone()),
            (None, Some(_)) => Some(format!("https://{addr}")),
            (None, None) => None,
        };
        let mut settings = settings;
        let identity = if args.orchestrator.is_some() || !args.indexer.is_empty() {
            let (key, created) = pixelgrid_proto::identity::NodeKey::load_or_create(&args.identity)
                .with_context(|| format!("identity key {}", args.identity.display()))?;
            if created {
                tracing::info!(path = %args.identity.display(), "created this node's identity key");
            }
            Some(key)
        } else {
            None
        };
        settings.identity = identity.clone();
        let (verifier, agent) = match (&args.orchestrator, verifier, &identity) {
            (Some(url), verifier, Some(key)) if dev_signer.is_none() || verifier.is_none() => {
                let key = key.clone();
                let agent = Agent::register(
                    agent_config(&host, url, public_url.as_deref(), addr, &args.listing)?,
                    key,
                )
                .await?;
                let verifier = verifier.context("no orchestrator key to trust")?;
                let signs_with = &agent.registration.token_public_key_hex;
                anyhow::ensure!(
                    verifier.trusts(signs_with),
                    "the orchestrator at {url} signs tokens with key {signs_with}, which this node was not told to trust (--orchestrator-key); refusing to serve"
                );
                settings.node_id = agent.node_id();
                (verifier, Some(agent))
            }
            (_, Some(verifier), _) => (verifier, None),
            (_, None, _) => anyhow::bail!("no token key to trust"),
        };
        let node = StreamNode::new(host, settings, verifier, dev_signer);
        if node.dev_mode() {
            println!("edge-node: play at http://{addr}/");
        } else {
            println!(
                "edge-node {}: WHEP at {}://{addr}/whep/{{session}}",
                node.node_id(),
                if tls.is_some() { "https" } else { "http" }
            );
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if let Some(agent) = agent {
            let mut stop = stop_rx.clone();
            tokio::spawn(agent.run(std::sync::Arc::clone(&node), async move {
                let _ = stop.wait_for(|s| *s).await;
            }));
        }
        if let Some(key) = identity.filter(|_| !args.indexer.is_empty()) {
            let config = edge_node::reporter::ReporterConfig {
                indexers: args.indexer.clone(),
                interval: std::time::Duration::from_millis(args.report_interval_ms.max(100)),
                outbox_capacity: args.report_buffer,
                outbox_dir: Some(args.report_outbox.clone().unwrap_or_else(|| {
                    args.identity
                        .parent()
                        .unwrap_or(std::path::Path::new("."))
                        .join("reports")
                })),
            };
            let mut stop = stop_rx.clone();
            tokio::spawn(edge_node::reporter::run(
                config,
                key,
                std::sync::Arc::clone(&node),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ));
        }
        let drain_node = std::sync::Arc::clone(&node);
        let drain_for = std::time::Duration::from_secs(args.drain_timeout_s);
        let shutdown = async move {
            shutdown_signal().await;
            // Drain: no new sessions; running ones get until the deadline.
            drain_node.set_draining(true);
            let deadline = tokio::time::Instant::now() + drain_for;
            while !drain_node.session_ids().await.is_empty()
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            let _ = stop_tx.send(true);
        };
        match tls {
            Some(acceptor) => {
                pixelgrid_proto::transport::serve_https(
                    listener,
                    acceptor,
                    edge_node::stream::router(std::sync::Arc::clone(&node)),
                    shutdown,
                )
                .await?;
            }
            None => {
                edge_node::stream::serve(listener, std::sync::Arc::clone(&node), shutdown).await?;
            }
        }
        node.close_all().await;
        Ok(())
    })
}

/// `edge-node games ...`.
#[allow(clippy::print_stdout)]
fn games(dir: &std::path::Path, action: GamesAction) -> anyhow::Result<()> {
    let store = edge_node::runtime::store::GameStore::open(dir)?;
    match action {
        GamesAction::Add { source, sha256 } => {
            let g = store.add(&source, sha256.as_deref())?;
            println!(
                "installed {} {} ({}) into {}; content sha256 {}",
                g.manifest.id,
                g.manifest.version,
                g.manifest.name,
                g.dir.display(),
                g.record.content_sha256
            );
        }
        GamesAction::List { json } => {
            let games = store.list()?;
            if json {
                let rows: Vec<_> = games.iter().map(|g| &g.record).collect();
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                println!("{:<20} {:<14} {:<24} MODES", "ID", "VERSION", "NAME");
                for g in games {
                    let modes: Vec<String> = g
                        .manifest
                        .modes
                        .iter()
                        .map(|m| format!("{}x{}@{}", m.width, m.height, m.fps))
                        .collect();
                    println!(
                        "{:<20} {:<14} {:<24} {}",
                        g.manifest.id,
                        g.manifest.version,
                        g.manifest.name,
                        modes.join(" ")
                    );
                }
            }
        }
        GamesAction::Remove { id } => {
            if !store.remove(&id)? {
                anyhow::bail!("no game {id:?} is installed in {}", dir.display());
            }
            println!("removed {id}");
        }
    }
    Ok(())
}

/// How a node lists itself with the orchestrator.
#[derive(Args, Debug, Clone)]
struct Listing {
    /// Region code announced to the orchestrator.
    #[arg(long, env = "PIXELGRID_REGION", default_value = "local")]
    region: String,
    /// Price asked, micro-credits per session-minute.
    #[arg(long, env = "PIXELGRID_PRICE", default_value_t = 0)]
    price: u64,
    /// Most sessions this node runs at once.
    #[arg(long, env = "PIXELGRID_MAX_SESSIONS", default_value_t = 8)]
    max_sessions: u32,
}

fn agent_config(
    host: &SessionHost,
    orchestrator: &str,
    public: Option<&str>,
    addr: std::net::SocketAddr,
    listing: &Listing,
) -> anyhow::Result<AgentConfig> {
    use pixelgrid_proto::types::v1 as types;
    let info = host.vulkan().info();
    let choice = host.encoder_for(Codec::H264)?;
    // Players and indexers probe the address they reach the node at: checked here, so a node
    // never registers one its probes cannot reach.
    let (whep_base_url, probe_address) =
        edge_node::agent::public_endpoints(public, addr).map_err(|e| anyhow::anyhow!(e))?;
    Ok(AgentConfig {
        clock: edge_node::agent::WallClock::system(),
        orchestrator: orchestrator.to_owned(),
        whep_base_url,
        probe_address,
        region: listing.region.clone(),
        price: listing.price,
        max_sessions: listing.max_sessions,
        games: host.games(),
        gpu: types::GpuInfo {
            vendor: info.vendor.clone(),
            model: info.name.clone(),
            vram_bytes: 0,
            driver_version: info.driver.clone(),
            vulkan_api_version: info.api_version.clone(),
            cpu_fallback: info.cpu_fallback,
        },
        encoders: vec![types::EncoderCapability {
            element: choice.candidate.element.to_owned(),
            codec: types::VideoCodec::H264 as i32,
            hardware: choice.candidate.hardware,
        }],
    })
}

async fn shutdown_signal() {
    pixelgrid_proto::shutdown::signal().await;
    tracing::info!("shutting down");
}

/// `edge-node stake`: one signed stake change, sent to an indexer.
#[allow(clippy::print_stdout)]
fn stake(
    indexer: &str,
    identity: &std::path::Path,
    deposit: u64,
    withdraw: u64,
) -> anyhow::Result<()> {
    use pixelgrid_proto::indexer::v1 as pb;
    use prost::Message;
    anyhow::ensure!(
        identity.exists(),
        "no identity key at {}: stake on a node that has run (or been onboarded) here",
        identity.display()
    );
    let (key, _) = pixelgrid_proto::identity::NodeKey::load_or_create(identity)
        .with_context(|| format!("identity key {}", identity.display()))?;
    let now = edge_node::stream::unix_ms() as u64;
    // The time in ms is a sequence that grows across runs of this command.
    let change = pb::StakeChange {
        node_id: Some(pixelgrid_proto::types::v1::NodeId { hex: key.node_id() }),
        sequence: now,
        sent_unix_ms: now,
        deposit,
        withdraw,
    };
    let signed = pb::SignedStakeChange {
        signature: Some(key.sign(&change.encode_to_vec())),
        change: Some(change),
    };
    let ack = tokio::runtime::Runtime::new()?.block_on(async {
        let channel = pixelgrid_proto::transport::connect(indexer)
            .await
            .map_err(|e| anyhow::anyhow!("indexer {indexer}: {e}"))?;
        pb::indexer_client::IndexerClient::new(channel)
            .submit_stake_change(signed)
            .await
            .map_err(|e| anyhow::anyhow!("indexer {indexer}: {}", e.message()))
    })?;
    let ack = ack.into_inner();
    anyhow::ensure!(
        ack.verdict == pb::ReportVerdict::Accepted as i32,
        "refused: {}",
        ack.detail
    );
    println!(
        "node {}: bonded {} micro-credits, {} being withdrawn",
        key.node_id(),
        ack.bonded,
        ack.unbonding
    );
    Ok(())
}

/// `edge-node onboard`: see `edge_node::onboard`. Exits non-zero when a check failed.
#[allow(clippy::print_stdout)]
fn onboard(args: OnboardArgs) -> anyhow::Result<()> {
    use edge_node::onboard::{
        Check, OnboardReport, cpu_model, fingerprint, mac_addresses, memory_bytes,
    };
    let mut checks = Vec::new();
    if args.force && args.identity.exists() {
        std::fs::remove_file(&args.identity)
            .with_context(|| format!("replacing {}", args.identity.display()))?;
    }
    let (key, created) = pixelgrid_proto::identity::NodeKey::load_or_create(&args.identity)
        .with_context(|| {
            format!(
                "identity key {}: check the directory exists and is writable",
                args.identity.display()
            )
        })?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&args.identity)?.permissions().mode() & 0o777;
        checks.push(if mode & 0o077 == 0 {
            Check::pass(
                "identity key",
                format!("{} mode {mode:o}", args.identity.display()),
            )
        } else {
            Check::fail(
                "identity key",
                format!(
                    "{} mode {mode:o}: others can read it",
                    args.identity.display()
                ),
                format!("chmod 600 {}", args.identity.display()),
            )
        });
    }

    let host = SessionHost::start(Catalogue::default(), None);
    let gpu_name = match &host {
        Ok(h) => {
            let i = h.vulkan().info();
            checks.push(Check::pass(
                "vulkan",
                format!(
                    "{} (Vulkan {}, driver {}){}",
                    i.name,
                    i.api_version,
                    i.driver,
                    if i.cpu_fallback {
                        ", CPU rendering (lavapipe)"
                    } else {
                        ""
                    }
                ),
            ));
            i.name.clone()
        }
        Err(e) => {
            checks.push(Check::fail(
                "vulkan",
                e.to_string(),
                "install the NVIDIA driver (GPU) or Debian's mesa-vulkan-drivers (CPU, lavapipe)",
            ));
            "none".into()
        }
    };
    for codec in [Codec::H264, Codec::Vp8] {
        checks.push(match probe_chain(codec, None) {
            Ok(choice) => {
                let skipped: Vec<String> = choice
                    .skipped
                    .iter()
                    .map(|s| format!("{} ({})", s.element, s.reason))
                    .collect();
                Check::pass(
                    &format!("{codec} encoder"),
                    if skipped.is_empty() {
                        choice.candidate.element.to_string()
                    } else {
                        format!("{}; skipped {}", choice.candidate.element, skipped.join(", "))
                    },
                )
            }
            Err(e) => Check::fail(
                &format!("{codec} encoder"),
                e.to_string(),
                "install gstreamer1.0-plugins-ugly (x264), -bad (NVENC, VA, openh264) and -good (VP8)",
            ),
        });
    }
    checks.push(match TelemetrySource::open().sample() {
        edge_node::telemetry::GpuTelemetry::Available { gpus, .. } => Check::pass(
            "nvidia",
            gpus.iter()
                .map(|g| {
                    format!(
                        "{} ({} MiB)",
                        g.name,
                        g.memory_total_bytes.unwrap_or(0) >> 20
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        edge_node::telemetry::GpuTelemetry::Unavailable { reason } => Check::pass(
            "nvidia",
            format!("{reason} (rendering on what Vulkan found)"),
        ),
    });
    let cpu = cpu_model();
    checks.push(Check::pass("cpu", cpu.clone()));
    checks.push(match memory_bytes() {
        Some(b) if b >= 2 << 30 => Check::pass("memory", format!("{} GiB", b >> 30)),
        Some(b) => Check::fail(
            "memory",
            format!("{} MiB", b >> 20),
            "give the node at least 2 GiB",
        ),
        None => Check::fail("memory", "unknown", "mount /proc"),
    });
    checks.push(match std::net::TcpListener::bind(args.listen) {
        Ok(_) => Check::pass("listen port", format!("{} can be bound", args.listen)),
        Err(e) => Check::fail(
            "listen port",
            format!("{}: {e}", args.listen),
            "free the port, or choose another with --listen (and the same for serve)",
        ),
    });
    checks.push(
        match std::net::UdpSocket::bind(std::net::SocketAddr::new(args.listen.ip(), 0)) {
            Ok(s) => Check::pass("webrtc udp", format!("UDP on {} ok", s.local_addr()?.ip())),
            Err(e) => Check::fail(
                "webrtc udp",
                e.to_string(),
                "allow UDP on the node's address (players' media arrives over UDP)",
            ),
        },
    );

    let mut encode_fps = Vec::new();
    if let Ok(h) = &host {
        for (w, ht) in [(1280, 720), (1920, 1080)] {
            let mode = VideoMode::new(w, ht, 60)?;
            let req = BenchRequest {
                game: "arena".into(),
                settings: EncoderSettings::for_mode(mode, Codec::H264),
                frames: args.bench_frames.max(10),
                sessions: 1,
            };
            match bench::run(h, &req) {
                Ok(r) => {
                    let fps = r.single_session_max_fps.unwrap_or(0.0);
                    encode_fps.push((format!("{w}x{ht}"), fps));
                    if w == 1280 {
                        checks.push(if fps >= args.min_encode_fps {
                            Check::pass("encode 1280x720", format!("{fps:.0} fps, one session"))
                        } else {
                            Check::fail(
                                "encode 1280x720",
                                format!("{fps:.0} fps, one session (need {})", args.min_encode_fps),
                                "use a GPU with a hardware encoder, or free CPU for x264",
                            )
                        });
                    } else {
                        checks.push(Check::pass(
                            "encode 1920x1080",
                            format!("{fps:.0} fps, one session"),
                        ));
                    }
                }
                Err(e) => checks.push(Check::fail(
                    &format!("encode {w}x{ht}"),
                    e.to_string(),
                    "run `edge-node probe` to see which encoder fails",
                )),
            }
        }
    }

    let mut registered_with = None;
    if let (Some(url), Ok(h)) = (&args.orchestrator, &host)
        && checks.iter().all(|c| c.ok)
    {
        let config = agent_config(
            h,
            url,
            args.public_url.as_deref(),
            args.listen,
            &args.listing,
        )?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        checks.push(
            match runtime.block_on(Agent::register(config, key.clone())) {
                Ok(_) => {
                    registered_with = Some(url.clone());
                    Check::pass("registration", format!("accepted by {url}"))
                }
                Err(e) => Check::fail(
                    "registration",
                    format!("{url}: {e}"),
                    "check the orchestrator URL and that this machine reaches it",
                ),
            },
        );
    }

    // The identity belongs to the hardware it was onboarded on: a changed machine is a new node.
    let hardware = fingerprint(&gpu_name, &cpu, &mac_addresses());
    let fingerprint_file = args.identity.with_extension("fingerprint");
    match std::fs::read_to_string(&fingerprint_file) {
        Ok(known) if known.trim() != hardware && !created => checks.push(Check::fail(
            "hardware",
            format!(
                "fingerprint {hardware} differs from {} recorded with this key",
                known.trim()
            ),
            "this identity was onboarded on other hardware: run with --force to join as a new node",
        )),
        _ => {
            std::fs::write(&fingerprint_file, format!("{hardware}\n"))
                .with_context(|| format!("writing {}", fingerprint_file.display()))?;
            checks.push(Check::pass("hardware", "fingerprint matches this identity"));
        }
    }
    let report = OnboardReport {
        node_id: key.node_id(),
        identity: args.identity.display().to_string(),
        identity_created: created,
        hardware_fingerprint: hardware,
        encode_fps,
        checks,
        registered_with,
    };
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&args.report, &json)
        .with_context(|| format!("writing {}", args.report.display()))?;
    if args.json {
        println!("{json}");
    } else {
        print!("{}", report.table());
        println!("\nreport written to {}", args.report.display());
    }
    if !report.passed() {
        std::process::exit(1);
    }
    Ok(())
}
