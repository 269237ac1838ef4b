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
    /// File holding the session-token signing key (hex seed; created 0600 when missing).
    /// Every replica of one grid must use the same key.
    #[arg(
        long,
        env = "PIXELGRID_TOKEN_KEY",
        default_value = "orchestrator-token.key"
    )]
    token_key: std::path::PathBuf,
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
}

#[derive(clap::Subcommand, Debug)]
enum Command {
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
        tracing::info!("no --etcd given: embedded store (single replica)");
        Arc::new(EmbeddedStore::new())
    } else {
        Arc::new(EtcdStore::connect(&cli.etcd).await?)
    };
    let config = GridConfig {
        heartbeat_interval: Duration::from_millis(cli.heartbeat_interval_ms),
        node_lease_ttl: Duration::from_millis(cli.node_lease_ttl_ms),
        reservation_ttl: Duration::from_secs(cli.reservation_ttl_s),
        ..GridConfig::default()
    };
    let cache = orchestrator::cache::RegistryCache::start(Arc::clone(&store)).await?;
    let grid =
        Arc::new(Grid::new(store, signer.clone(), Policy::default(), config).with_cache(cache));
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
    println!(
        "orchestrator: gRPC on {} (token key {})",
        listener.local_addr()?,
        signer.public_key_hex()
    );
    println!("orchestrator: play at http://{}/", http.local_addr()?);
    let stop = pixelgrid_proto::shutdown::on_signal();
    tokio::spawn(orchestrator::serve_gateway(
        http,
        Arc::clone(&grid),
        pixelgrid_proto::shutdown::wait(stop.clone()),
    ));
    orchestrator::serve(listener, grid, pixelgrid_proto::shutdown::wait(stop)).await?;
    Ok(())
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
    drop(local_etcd);
    let report = report?;
    println!("{}", report.table());
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
