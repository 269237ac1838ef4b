//! `orchestrator bench`: placements per second and their latency, heartbeats per second, and
//! double bookings (must be 0), against the embedded store or a real etcd.

use crate::grid::{Grid, GridConfig};
use crate::placement::{Policy, Request};
use crate::slots::{self, ROOT};
use crate::store::Store;
use crate::{Error, Result};
use pixelgrid_proto::identity::{NodeKey, SignedRequest};
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_proto::token::TokenSigner;
use pixelgrid_proto::types::v1 as types;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// "etcd" or "embedded".
    pub store: String,
    /// Nodes registered.
    pub nodes: usize,
    /// Concurrent launches in flight.
    pub concurrency: usize,
    /// Placements attempted.
    pub launches: usize,
    /// Placements granted.
    pub granted: usize,
    /// Granted placements per second.
    pub placements_per_s: f64,
    /// Placement latency, median, ms.
    pub p50_ms: f64,
    /// Placement latency, 99th percentile, ms.
    pub p99_ms: f64,
    /// Lease renewals per second sustained (a node heartbeat renews one lease).
    pub heartbeats_per_s: f64,
    /// Heartbeats per second the grid needs: `nodes / heartbeat interval`.
    pub heartbeats_needed_per_s: f64,
    /// Slots granted to two sessions (must be 0).
    pub double_bookings: usize,
}

/// The `p` quantile of `v` (nearest rank), sorting it in place; NaN when empty.
pub(crate) fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Registers `nodes` nodes (signed, through the control plane), runs `launches` placements
/// `concurrency` at a time, then sends signed heartbeats as fast as it can for
/// `heartbeat_seconds`.
pub async fn run(
    store: Arc<dyn Store>,
    store_name: &str,
    nodes: usize,
    concurrency: usize,
    launches: usize,
    heartbeat_interval: Duration,
    heartbeat_seconds: u64,
) -> Result<BenchReport> {
    if nodes == 0 || concurrency == 0 {
        return Err(Error::InvalidArgument {
            field: "nodes/concurrency",
            reason: "must be at least 1".into(),
        });
    }
    // Register through the control plane, signed, as real nodes do (one lease each).
    let grid = Arc::new(Grid::new(
        Arc::clone(&store),
        TokenSigner::from_seed(&[1; 32]),
        Policy::default(),
        GridConfig {
            heartbeat_interval,
            node_lease_ttl: Duration::from_secs(60),
            ..GridConfig::default()
        },
    ));
    let keys = register_nodes(&grid, nodes).await?;
    let ids: Arc<Vec<String>> = Arc::new(keys.iter().map(NodeKey::node_id).collect());

    // Placements read a watch-maintained copy of the registry, as the daemon does.
    let cache = crate::cache::RegistryCache::start(Arc::clone(&store)).await?;
    let synced = Instant::now();
    while cache.node_count() < nodes && synced.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Each player measured a handful of nodes, as after the candidate step.
    let ids_for_requests = Arc::clone(&ids);
    let request = move |i: usize| Request {
        game: "arena".into(),
        region: "local".into(),
        rtt_ms: (0..5)
            .map(|k| {
                (
                    ids_for_requests[(i * 7 + k * 1931) % nodes].clone(),
                    5 + k as u32,
                )
            })
            .collect(),
        ..Request::default()
    };
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (s, next, cache, request) = (
            Arc::clone(&store),
            Arc::clone(&next),
            Arc::clone(&cache),
            request.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= launches {
                    return out;
                }
                let t = Instant::now();
                let r = slots::reserve_with(
                    s.as_ref(),
                    Some(&cache),
                    &format!("s-{i:07}"),
                    &request(i),
                    &Policy::default(),
                    slots::Conditions::default(),
                    |_| Vec::new(),
                )
                .await
                .map(|(r, _)| r);
                out.push((t.elapsed().as_secs_f64() * 1e3, r.ok()));
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut granted = Vec::new();
    for w in workers {
        for (ms, r) in w.await.map_err(|e| Error::Store(e.to_string()))? {
            latencies.push(ms);
            granted.extend(r);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    // Double bookings, checked in the store: a granted slot must hold its own session.
    let held: HashMap<String, String> = store
        .range(&format!("{ROOT}/slots/"))
        .await?
        .into_iter()
        .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned()))
        .collect();
    let double_bookings = granted
        .iter()
        .filter(|r| held.get(&slots::slot_key(&r.node, r.slot)) != Some(&r.session))
        .count();

    // Heartbeats: signed, through the control plane (verify, renew the lease, store the status),
    // round-robin over the nodes, `concurrency` at a time.
    let hb_end = Instant::now() + Duration::from_secs(heartbeat_seconds);
    let renewed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // One rising counter for all: every node's sequence rises whichever worker sends for it.
    let sequence = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let hb_start = Instant::now();
    let mut beaters = Vec::new();
    for w in 0..concurrency {
        let (grid, keys, renewed, sequence) = (
            Arc::clone(&grid),
            Arc::clone(&keys),
            Arc::clone(&renewed),
            Arc::clone(&sequence),
        );
        beaters.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < hb_end {
                let key = &keys[i % keys.len()];
                let hb = pb::HeartbeatRequest {
                    node_id: Some(types::NodeId { hex: key.node_id() }),
                    sequence: sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    sent_unix_ms: crate::grid::now_ms(),
                    state: pb::NodeState::Ready as i32,
                    cpu_load_percent: 10,
                    ..Default::default()
                }
                .sign_with(key);
                if grid.heartbeat(hb).await.is_ok() {
                    renewed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                i += concurrency;
            }
        }));
    }
    for b in beaters {
        let _ = b.await;
    }
    let heartbeats_per_s = renewed.load(std::sync::atomic::Ordering::Relaxed) as f64
        / hb_start.elapsed().as_secs_f64();

    Ok(BenchReport {
        store: store_name.to_owned(),
        nodes,
        concurrency,
        launches,
        granted: granted.len(),
        placements_per_s: granted.len() as f64 / elapsed,
        p50_ms: pct(&mut latencies.clone(), 0.5),
        p99_ms: pct(&mut latencies, 0.99),
        heartbeats_per_s,
        heartbeats_needed_per_s: nodes as f64 / heartbeat_interval.as_secs_f64(),
        double_bookings,
    })
}

/// Registers `nodes` nodes (4 slots, `arena`) through `grid`, signed as real nodes do (one
/// lease each), 256 at a time; their keys.
pub async fn register_nodes(grid: &Arc<Grid>, nodes: usize) -> Result<Arc<Vec<NodeKey>>> {
    let keys: Arc<Vec<NodeKey>> = Arc::new(
        (0..nodes)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                NodeKey::from_seed(&seed)
            })
            .collect(),
    );
    let register = Instant::now();
    for chunk in (0..nodes).collect::<Vec<_>>().chunks(256) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let (grid, keys) = (Arc::clone(grid), Arc::clone(&keys));
            tasks.push(tokio::spawn(async move {
                let key = &keys[i];
                let req = pb::RegisterNodeRequest {
                    node_id: Some(types::NodeId { hex: key.node_id() }),
                    capabilities: Some(types::NodeCapabilities {
                        games_installed: vec!["arena".into()],
                        capacity: vec![types::SessionCapacity {
                            mode: None,
                            max_sessions: 4,
                        }],
                        ..Default::default()
                    }),
                    region: Some(types::Region {
                        code: "local".into(),
                    }),
                    whep_base_url: format!("http://127.0.0.1:9/whep/{i}"),
                    probe_address: "127.0.0.1:9".into(),
                    price: None,
                    sent_unix_ms: crate::grid::now_ms(),
                    signature: None,
                }
                .sign_with(key);
                grid.register(req).await.map(|_| ())
            }));
        }
        for t in tasks {
            t.await.map_err(|e| Error::Store(e.to_string()))??;
        }
    }
    tracing::info!(
        nodes,
        secs = register.elapsed().as_secs_f64(),
        "nodes registered"
    );
    Ok(keys)
}

impl BenchReport {
    /// A table for people.
    pub fn table(&self) -> String {
        format!(
            "store {}  nodes {}  concurrency {}\n\
             placements: {} of {} granted, {:.0}/s, p50 {:.2} ms, p99 {:.2} ms\n\
             heartbeats: {:.0}/s sustained (grid needs {:.0}/s)\n\
             double_bookings: {}",
            self.store,
            self.nodes,
            self.concurrency,
            self.granted,
            self.launches,
            self.placements_per_s,
            self.p50_ms,
            self.p99_ms,
            self.heartbeats_per_s,
            self.heartbeats_needed_per_s,
            self.double_bookings
        )
    }
}
