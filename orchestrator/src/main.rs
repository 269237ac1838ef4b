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
    /// gRPC listen address.
    #[arg(long, env = "PIXELGRID_LISTEN", default_value = "127.0.0.1:50051")]
    listen: std::net::SocketAddr,
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
    let grid = Arc::new(Grid::new(store, signer.clone(), Policy::default(), config));
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
    println!(
        "orchestrator: gRPC on {} (token key {})",
        listener.local_addr()?,
        signer.public_key_hex()
    );
    orchestrator::serve(listener, grid, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
