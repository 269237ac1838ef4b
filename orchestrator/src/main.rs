//! `orchestrator`: the PixelGrid control plane daemon.

use anyhow::Context as _;
use clap::Parser;
use orchestrator::grid::{Grid, GridConfig};
use orchestrator::placement::Policy;
use orchestrator::store::{EmbeddedStore, EtcdStore, Store};
use pixelgrid_proto::token::TokenSigner;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "orchestrator",
    version,
    about = "PixelGrid control plane: node registry, placement, sessions (gRPC)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// gRPC listen address.
    #[arg(long, env = "PIXELGRID_LISTEN", default_value = "127.0.0.1:50051")]
    listen: std::net::SocketAddr,
    /// HTTP address of the player page and the browsers' JSON gateway.
    #[arg(long, env = "PIXELGRID_HTTP_LISTEN", default_value = "127.0.0.1:8000")]
    http_listen: std::net::SocketAddr,
    /// etcd endpoints (comma-separated); without them the store is embedded in this process.
    #[arg(long, env = "PIXELGRID_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// Without --etcd: the file the embedded store keeps its state in (SQLite), so a restart
    /// loses no node, session or studio. `:memory:` keeps nothing.
    #[arg(
        long,
        env = "PIXELGRID_STATE_FILE",
        default_value = "orchestrator-state.db"
    )]
    state_file: std::path::PathBuf,
    /// File holding the session-token signing key (hex seed; created 0600 when missing).
    /// Every replica of one grid must use the same key.
    #[arg(
        long,
        env = "PIXELGRID_TOKEN_KEY",
        default_value = "orchestrator-token.key"
    )]
    token_key: std::path::PathBuf,
    /// Public keys (hex) of earlier token signing keys still trusted for grants and tokens
    /// (during a rotation: see the README's "Rotating the token key").
    #[arg(long, env = "PIXELGRID_PREVIOUS_TOKEN_KEYS", value_delimiter = ',')]
    previous_token_key: Vec<String>,
    /// File holding the operator credential (`pgo_…`; created 0600 when missing). Every
    /// replica of one grid must use the same file.
    #[arg(
        long,
        env = "PIXELGRID_OPERATOR_KEY_FILE",
        default_value = "orchestrator-operator.key"
    )]
    operator_key_file: std::path::PathBuf,
    /// Hand anonymous players of the player page launch grants of this studio (created when
    /// missing, without limits). For a local grid only: anyone who reaches the page plays.
    #[arg(long, env = "PIXELGRID_DEMO_STUDIO")]
    demo_studio: Option<String>,
    /// TLS certificate chain (PEM) for the gRPC server and the gateway; with --tls-key, plaintext is
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
    /// TURN relay URLs handed to players (`turn:host:3478`, `turns:host:5349`), each session
    /// with its own credential (needs --turn-secret-file).
    #[arg(long, env = "PIXELGRID_TURN_URLS", value_delimiter = ',')]
    turn_url: Vec<String>,
    /// File holding the secret shared with the TURN servers (coturn's `static-auth-secret`).
    #[arg(long, env = "PIXELGRID_TURN_SECRET_FILE")]
    turn_secret_file: Option<std::path::PathBuf>,
    /// How long a session's TURN credential works, seconds (the longest session, with margin).
    #[arg(long, default_value_t = 15_000)]
    turn_ttl_s: u64,
    /// This replica's name in leader election.
    #[arg(long, env = "PIXELGRID_REPLICA_ID")]
    replica_id: Option<String>,
    /// A node that stops heartbeating disappears after this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    node_lease_ttl_ms: u64,
    /// How often nodes heartbeat, milliseconds.
    #[arg(long, default_value_t = 1000)]
    heartbeat_interval_ms: u64,
    /// Seconds a reserved slot waits for its player.
    #[arg(long, default_value_t = 30)]
    reservation_ttl_s: u64,
    /// Leader lease, milliseconds: a dead leader's sweeps move to another replica within this.
    #[arg(long, default_value_t = 3000)]
    leader_ttl_ms: u64,
    /// How long an ended session's record stays readable, seconds (0: for ever); its usage
    /// record stays for --usage-retention-days.
    #[arg(long, default_value_t = 3600)]
    session_retention_s: u64,
    /// How long usage records stay in the store, days (0: for ever); export them for billing
    /// (`pixelgrid usage`) before they go.
    #[arg(long, default_value_t = 35)]
    usage_retention_days: u64,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Whole launches through gRPC with launch grants (CreateSession + ChooseNode), over
    /// plaintext and, with --tls-cert/--tls-key (and PIXELGRID_CA_FILE for a private CA), over
    /// TLS: launches/s and latency per transport.
    BenchLaunch {
        /// Nodes to register (4 slots each).
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        /// Launches in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Launches per transport.
        #[arg(long, default_value_t = 2_000)]
        launches: usize,
        /// `etcd` (the --etcd endpoints, or one started on a free loopback port) or `embedded`.
        #[arg(long, default_value = "etcd")]
        store: String,
    },
    /// Print the public half of the --token-key (creating the key when missing): what every
    /// edge node is given as --orchestrator-key at onboarding.
    PublicKey,
    /// Measure placements/s, placement latency, heartbeats/s and double bookings.
    Bench {
        /// Nodes to register (4 slots each).
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        /// Launches in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Placements to make.
        #[arg(long, default_value_t = 2_000)]
        launches: usize,
        /// `etcd` (the --etcd endpoints, or an etcd this command starts on a free loopback port)
        /// or `embedded`.
        #[arg(long, default_value = "etcd")]
        store: String,
        /// Seconds of heartbeat load.
        #[arg(long, default_value_t = 5)]
        heartbeat_seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

#[allow(clippy::print_stdout)]
async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::PublicKey) = &cli.command {
        let (seed, _) = pixelgrid_proto::identity::load_or_create_seed(&cli.token_key)
            .with_context(|| format!("token key {}", cli.token_key.display()))?;
        println!("{}", TokenSigner::from_seed(&seed).public_key_hex());
        return Ok(());
    }
    if let Some(Command::BenchLaunch {
        nodes,
        concurrency,
        launches,
        store,
    }) = &cli.command
    {
        let (backend, local_etcd) = bench_store(&cli, store).await?;
        let tls = pixelgrid_proto::transport::TlsFiles {
            cert: cli.tls_cert.clone(),
            key: cli.tls_key.clone(),
            client_ca: None,
        }
        .grpc()
        .map_err(anyhow::Error::msg)?
        .map(|server| (server, pixelgrid_proto::transport::ClientTls::from_env()));
        let report =
            orchestrator::bench_launch::run(backend, store, *nodes, *concurrency, *launches, tls)
                .await;
        drop(local_etcd);
        let report = report?;
        println!("{}", report.table());
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    if let Some(Command::Bench {
        nodes,
        concurrency,
        launches,
        store,
        heartbeat_seconds,
    }) = &cli.command
    {
        return bench(
            &cli,
            *nodes,
            *concurrency,
            *launches,
            store,
            *heartbeat_seconds,
        )
        .await;
    }
    let (seed, created) = pixelgrid_proto::identity::load_or_create_seed(&cli.token_key)
        .with_context(|| format!("token key {}", cli.token_key.display()))?;
    if created {
        tracing::warn!(path = %cli.token_key.display(), "created a new token signing key; give every replica the same file");
    }
    let signer = TokenSigner::from_seed(&seed);
    let store: Arc<dyn Store> = if cli.etcd.is_empty() {
        if cli.state_file.as_os_str() == ":memory:" {
            tracing::info!("no --etcd given: embedded store in memory (single replica)");
            Arc::new(EmbeddedStore::new())
        } else {
            tracing::info!(file = %cli.state_file.display(), "no --etcd given: embedded store (single replica)");
            Arc::new(EmbeddedStore::open(&cli.state_file)?)
        }
    } else {
        Arc::new(EtcdStore::connect(&cli.etcd).await?)
    };
    let config = GridConfig {
        heartbeat_interval: Duration::from_millis(cli.heartbeat_interval_ms),
        node_lease_ttl: Duration::from_millis(cli.node_lease_ttl_ms),
        reservation_ttl: Duration::from_secs(cli.reservation_ttl_s),
        session_retention: Duration::from_secs(cli.session_retention_s),
        usage_retention: Duration::from_secs(cli.usage_retention_days.saturating_mul(86_400)),
        ..GridConfig::default()
    };
    let operator = load_or_create_operator(&cli.operator_key_file)?;
    let cache = orchestrator::cache::RegistryCache::start(Arc::clone(&store)).await?;
    let mut grid = Grid::new(store, signer.clone(), Policy::default(), config)
        .with_cache(cache)
        .with_operator(&operator)
        .with_previous_keys(&cli.previous_token_key)?;
    match (&cli.turn_url[..], &cli.turn_secret_file) {
        ([], None) => {}
        ([], Some(_)) | (_, None) => {
            anyhow::bail!("give --turn-url and --turn-secret-file together")
        }
        (urls, Some(file)) => {
            let secret = std::fs::read_to_string(file)
                .with_context(|| format!("TURN secret {}", file.display()))?;
            anyhow::ensure!(
                !secret.trim().is_empty(),
                "{} is empty; it must hold the TURN servers' shared secret",
                file.display()
            );
            grid = grid.with_turn(orchestrator::turn::TurnConfig {
                urls: urls.to_vec(),
                secret: secret.trim().as_bytes().to_vec(),
                ttl_s: cli.turn_ttl_s,
            });
        }
    }
    if let Some(studio) = &cli.demo_studio {
        tracing::warn!(%studio, "demo grants on: anyone who reaches the player page launches as this studio");
        grid = grid.with_demo_studio(studio);
        let created = grid
            .create_studio(
                &orchestrator::auth::Caller::Operator,
                pixelgrid_proto::orchestrator::v1::CreateStudioRequest {
                    studio_id: studio.clone(),
                    name: format!("{studio} (demo)"),
                    ..Default::default()
                },
            )
            .await;
        match created {
            Ok(_) => tracing::info!(%studio, "demo studio created"),
            Err(orchestrator::Error::InvalidArgument { reason, .. })
                if reason.contains("already exists") => {}
            Err(e) => return Err(e.into()),
        }
    }
    let grid = Arc::new(grid);
    let replica = cli
        .replica_id
        .clone()
        .unwrap_or_else(|| format!("replica-{}", std::process::id()));
    tokio::spawn(orchestrator::leader::run(
        Arc::clone(&grid),
        replica,
        Duration::from_millis(cli.leader_ttl_ms),
        Duration::from_millis(500),
        Arc::new(AtomicBool::new(false)),
    ));
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let http = tokio::net::TcpListener::bind(cli.http_listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.http_listen))?;
    let tls = pixelgrid_proto::transport::TlsFiles {
        cert: cli.tls_cert.clone(),
        key: cli.tls_key.clone(),
        client_ca: cli.tls_client_ca.clone(),
    };
    let grpc_tls = tls.grpc().map_err(anyhow::Error::msg)?;
    let https = tls.https().map_err(anyhow::Error::msg)?;
    let scheme = if https.is_some() { "https" } else { "http" };
    println!(
        "orchestrator: gRPC on {scheme}://{} (token key {})",
        listener.local_addr()?,
        signer.public_key_hex()
    );
    println!("orchestrator: play at {scheme}://{}/", http.local_addr()?);
    println!(
        "orchestrator: operator credential in {}",
        cli.operator_key_file.display()
    );
    let stop = pixelgrid_proto::shutdown::on_signal();
    match https {
        Some(acceptor) => tokio::spawn(pixelgrid_proto::transport::serve_https(
            http,
            acceptor,
            orchestrator::gateway::router(Arc::clone(&grid)),
            pixelgrid_proto::shutdown::wait(stop.clone()),
        )),
        None => tokio::spawn(orchestrator::serve_gateway(
            http,
            Arc::clone(&grid),
            pixelgrid_proto::shutdown::wait(stop.clone()),
        )),
    };
    orchestrator::serve_with_tls(
        listener,
        grid,
        grpc_tls,
        pixelgrid_proto::shutdown::wait(stop),
    )
    .await?;
    Ok(())
}

/// The operator credential from `path`, made (0600) when the file does not exist.
fn load_or_create_operator(path: &std::path::Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path)?.permissions().mode();
            anyhow::ensure!(
                mode & 0o007 == 0,
                "{} is open to every user (mode {:o}); chmod 600 it — it is the operator's credential",
                path.display(),
                mode & 0o777
            );
            let credential = text.trim().to_owned();
            anyhow::ensure!(
                credential.starts_with(orchestrator::auth::OPERATOR_PREFIX)
                    && credential.len() >= 36,
                "{} does not hold an operator credential (pgo_…); delete it to make a new one",
                path.display()
            );
            Ok(credential)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut random = [0u8; 32];
            getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let credential = orchestrator::auth::new_operator_credential(&random);
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            writeln!(f, "{credential}")?;
            tracing::warn!(path = %path.display(), "created a new operator credential");
            Ok(credential)
        }
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

#[allow(clippy::print_stdout)]
async fn bench(
    cli: &Cli,
    nodes: usize,
    concurrency: usize,
    launches: usize,
    store: &str,
    heartbeat_seconds: u64,
) -> anyhow::Result<()> {
    let (backend, local_etcd) = bench_store(cli, store).await?;
    let report = orchestrator::bench::run(
        backend,
        store,
        nodes,
        concurrency,
        launches,
        Duration::from_millis(5000),
        heartbeat_seconds,
    )
    .await;
    // What the run left in etcd: its database file and keys.
    let endpoints = match &local_etcd {
        Some(e) => e.endpoints.clone(),
        None => cli.etcd.clone(),
    };
    let etcd_after = if store == "etcd" {
        let etcd = EtcdStore::connect(&endpoints).await?;
        let (db_bytes, _) = etcd.db_size().await?;
        Some((db_bytes, etcd.range("/pixelgrid/").await?.len()))
    } else {
        None
    };
    drop(local_etcd);
    let report = report?;
    println!("{}", report.table());
    if let Some((db_bytes, keys)) = etcd_after {
        println!(
            "etcd after the run: {:.1} MiB database, {keys} keys",
            db_bytes as f64 / 1_048_576.0
        );
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The store a benchmark runs on, and the etcd it started (dropped when the bench ends).
async fn bench_store(
    cli: &Cli,
    store: &str,
) -> anyhow::Result<(Arc<dyn Store>, Option<orchestrator::store::LocalEtcd>)> {
    let mut local_etcd = None;
    let backend: Arc<dyn Store> = match store {
        "embedded" => Arc::new(EmbeddedStore::new()),
        "etcd" if !cli.etcd.is_empty() => Arc::new(EtcdStore::connect(&cli.etcd).await?),
        "etcd" => {
            // A fresh single-member etcd on free loopback ports.
            let etcd = orchestrator::store::LocalEtcd::start(1)?;
            let endpoint = etcd.endpoints[0].clone();
            local_etcd = Some(etcd);
            let mut store = None;
            for _ in 0..50 {
                if let Ok(s) = EtcdStore::connect(std::slice::from_ref(&endpoint)).await
                    && s.get("/probe").await.is_ok()
                {
                    store = Some(s);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Arc::new(store.context("etcd did not come up")?)
        }
        other => anyhow::bail!("invalid store: {other:?}; use etcd or embedded"),
    };
    Ok((backend, local_etcd))
}
