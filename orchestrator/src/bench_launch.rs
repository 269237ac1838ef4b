//! `orchestrator bench-launch`: whole launches as a player's SDK makes them — `CreateSession`
//! and `ChooseNode` over gRPC with a studio's launch grant — against a grid of registered nodes,
//! over plaintext and (given a certificate) over TLS, so the cost of authorisation and TLS
//! shows beside `orchestrator bench`'s placement figures.

use crate::auth::Caller;
use crate::bench::pct;
use crate::grid::{Grid, GridConfig};
use crate::placement::Policy;
use crate::store::Store;
use crate::{Error, Result};
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_proto::orchestrator::v1::orchestrator_client::OrchestratorClient;
use pixelgrid_proto::token::TokenSigner;
use pixelgrid_proto::types::v1 as types;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One transport's figures.
#[derive(Debug, Clone, Serialize)]
pub struct LaunchFigures {
    /// "plaintext" or "tls".
    pub transport: String,
    /// Launches attempted.
    pub launches: usize,
    /// Launches that placed a session.
    pub placed: usize,
    /// Placed launches per second.
    pub launches_per_s: f64,
    /// Latency of a whole launch (both calls), median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Launches refused, by gRPC status code and the message's first words.
    pub refused: std::collections::BTreeMap<String, usize>,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LaunchReport {
    /// "etcd" or "embedded".
    pub store: String,
    /// Nodes registered.
    pub nodes: usize,
    /// Launches in flight at once.
    pub concurrency: usize,
    /// Per transport.
    pub runs: Vec<LaunchFigures>,
}

impl LaunchReport {
    /// A table for people.
    pub fn table(&self) -> String {
        let mut out = format!(
            "store {}  nodes {}  concurrency {}  (CreateSession + ChooseNode with a launch grant)\n",
            self.store, self.nodes, self.concurrency
        );
        for r in &self.runs {
            out += &format!(
                "{:<9}  {} of {} placed, {:.0} launches/s, p50 {:.2} ms, p99 {:.2} ms\n",
                r.transport, r.placed, r.launches, r.launches_per_s, r.p50_ms, r.p99_ms
            );
            for (why, n) in &r.refused {
                out += &format!("           refused {n}: {why}\n");
            }
        }
        if let [plain, tls] = self.runs.as_slice() {
            out += &format!(
                "tls/plaintext throughput: {:.0} %",
                100.0 * tls.launches_per_s / plain.launches_per_s
            );
        }
        out
    }
}

/// Registers `nodes`, serves the orchestrator over plaintext (and over `tls` when given), and
/// runs `launches` launches `concurrency` at a time through each.
pub async fn run(
    store: Arc<dyn Store>,
    store_name: &str,
    nodes: usize,
    concurrency: usize,
    launches: usize,
    tls: Option<(
        tonic::transport::ServerTlsConfig,
        pixelgrid_proto::transport::ClientTls,
    )>,
) -> Result<LaunchReport> {
    let cache = crate::cache::RegistryCache::start(Arc::clone(&store)).await?;
    let grid = Arc::new(
        Grid::new(
            Arc::clone(&store),
            TokenSigner::from_seed(&[1; 32]),
            Policy::default(),
            GridConfig {
                node_lease_ttl: Duration::from_secs(600),
                reservation_ttl: Duration::from_secs(600),
                launch_burst: u32::MAX / 2,
                launches_per_minute: u32::MAX / 2,
                // Nobody connects in the bench: every launch stays a waiting reservation.
                max_pending_per_studio: 0,
                ..GridConfig::default()
            },
        )
        .with_cache(Arc::clone(&cache)),
    );
    grid.create_studio(
        &Caller::Operator,
        pb::CreateStudioRequest {
            studio_id: "bench".into(),
            ..Default::default()
        },
    )
    .await?;
    crate::bench::register_nodes(&grid, nodes).await?;
    let synced = Instant::now();
    while cache.node_count() < nodes && synced.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut runs = Vec::new();
    let mut transports = vec![("plaintext", None, None)];
    if let Some((server, client)) = tls {
        transports.push(("tls", Some(server), Some(client)));
    }
    for (name, server, client) in transports {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::Unavailable(e.to_string()))?
            .port();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(crate::serve_with_tls(
            listener,
            Arc::clone(&grid),
            server,
            async move {
                let _ = stop_rx.await;
            },
        ));
        let url = match client {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let channel = pixelgrid_proto::transport::connect_with(&url, &client.unwrap_or_default())
            .await
            .map_err(Error::Unavailable)?;
        runs.push(launch_through(&grid, channel, name, concurrency, launches).await?);
        let _ = stop_tx.send(());
        let _ = served.await;
    }
    Ok(LaunchReport {
        store: store_name.to_owned(),
        nodes,
        concurrency,
        runs,
    })
}

async fn launch_through(
    grid: &Arc<Grid>,
    channel: tonic::transport::Channel,
    transport: &str,
    concurrency: usize,
    launches: usize,
) -> Result<LaunchFigures> {
    // Grants are minted beforehand: that is the studio backend's work, not the launch's.
    let mut grants = Vec::with_capacity(launches);
    for i in 0..launches {
        grants.push(
            grid.create_launch_grant(
                &Caller::Studio("bench".into()),
                pb::CreateLaunchGrantRequest {
                    player_id: format!("p{i}"),
                    game: String::new(),
                    ttl_s: 300,
                },
            )
            .await?
            .grant,
        );
    }
    let grants = Arc::new(grants);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (grants, next) = (Arc::clone(&grants), Arc::clone(&next));
        let mut client = OrchestratorClient::new(channel.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= grants.len() {
                    return out;
                }
                let t = Instant::now();
                let placed = launch_once(&mut client, &grants[i]).await;
                out.push((t.elapsed().as_secs_f64() * 1e3, placed));
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut placed = 0;
    let mut refused = std::collections::BTreeMap::new();
    for w in workers {
        for (ms, outcome) in w.await.map_err(|e| Error::Store(e.to_string()))? {
            latencies.push(ms);
            match outcome {
                Ok(()) => placed += 1,
                Err(s) => {
                    let words: Vec<&str> = s.message().split(' ').take(8).collect();
                    *refused
                        .entry(format!("{:?}: {}", s.code(), words.join(" ")))
                        .or_insert(0) += 1;
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(LaunchFigures {
        transport: transport.to_owned(),
        launches,
        placed,
        launches_per_s: placed as f64 / elapsed,
        p50_ms: pct(&mut latencies.clone(), 0.5),
        p99_ms: pct(&mut latencies, 0.99),
        refused,
    })
}

fn bearer<T>(request: T, grant: &str) -> Result<tonic::Request<T>, tonic::Status> {
    pixelgrid_proto::transport::with_bearer(request, grant).map_err(tonic::Status::invalid_argument)
}

/// One launch: candidates, then placement with a measured-looking round trip to each.
async fn launch_once(
    client: &mut OrchestratorClient<tonic::transport::Channel>,
    grant: &str,
) -> std::result::Result<(), tonic::Status> {
    let launch = client
        .create_session(bearer(
            pb::CreateSessionRequest {
                game: "arena".into(),
                player_region: Some(types::Region {
                    code: "local".into(),
                }),
                // A burst of launches from one region would otherwise all be offered the same
                // few least-loaded nodes before their slots show as taken.
                max_candidates: 20,
                ..Default::default()
            },
            grant,
        )?)
        .await?
        .into_inner();
    let latencies = launch
        .candidates
        .iter()
        .enumerate()
        .map(|(k, c)| pb::LatencySample {
            node_id: c.node_id.clone(),
            rtt_ms: 5 + k as u32,
        })
        .collect();
    client
        .choose_node(bearer(
            pb::ChooseNodeRequest {
                launch_id: launch.launch_id,
                latencies,
                player_key: Vec::new(),
            },
            grant,
        )?)
        .await
        .map(|_| ())
}
