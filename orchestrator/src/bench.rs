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
    /// Heartbeats per second sustained (signed, verified, sequenced; the lease renewed and the
    /// status stored when due), after every node's first one.
    pub heartbeats_per_s: f64,
    /// Heartbeats per second taken when sent at twice what the nodes send.
    pub paced_heartbeats_per_s: f64,
    /// Placements made while those ran (a steady trickle beside them).
    pub placements_under_heartbeats: usize,
    /// Their latency, 99th percentile, ms.
    pub p99_under_heartbeats_ms: f64,
    /// Heartbeats per second the grid needs: `nodes / heartbeat interval`.
    pub heartbeats_needed_per_s: f64,
    /// Slots granted to two sessions (must be 0).
    pub double_bookings: usize,
    /// The store's own ceiling in the same run: bare puts of 100-byte values per second,
    /// `concurrency` at a time (what a heartbeat that must write costs at least).
    pub store_puts_per_s: f64,
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

    // Placements (and heartbeats) read a watch-maintained copy of the registry, as the daemon
    // does.
    let cache = crate::cache::RegistryCache::start(Arc::clone(&store)).await?;
    let grid = Arc::new(
        Arc::try_unwrap(grid)
            .map_err(|_| Error::Store("the bench's grid is shared".into()))?
            .with_cache(Arc::clone(&cache)),
    );
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
                out.push(place(s.as_ref(), &cache, &request(i), i).await);
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

    // Heartbeats: signed, through the control plane (verify, sequence, renew the lease and store
    // the status when due), round-robin over the nodes, `concurrency` at a time. Every node's
    // first heartbeat (which writes everything) comes before the clock starts: a running grid
    // is past it.
    // One rising counter for all: every node's sequence rises whichever worker sends for it.
    let sequence = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let mut warm = Vec::new();
    for w in 0..concurrency {
        let (grid, keys, sequence) = (Arc::clone(&grid), Arc::clone(&keys), Arc::clone(&sequence));
        warm.push(tokio::spawn(async move {
            for k in keys.iter().skip(w).step_by(concurrency) {
                let seq = sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = grid.heartbeat(beat(k, seq)).await;
            }
        }));
    }
    for w in warm {
        let _ = w.await;
    }
    let needed = nodes as f64 / heartbeat_interval.as_secs_f64();
    // As fast as they go, alone; then at twice what the nodes send, with placements beside.
    let (heartbeats_per_s, _) = heartbeat_phase(
        &grid,
        &keys,
        &sequence,
        concurrency,
        heartbeat_seconds,
        None,
        None,
    )
    .await?;
    let request: Arc<dyn Fn(usize) -> Request + Send + Sync> = Arc::new(request);
    let (paced_per_s, mut beside) = heartbeat_phase(
        &grid,
        &keys,
        &sequence,
        concurrency,
        heartbeat_seconds,
        Some(2.0 * needed),
        Some((Arc::clone(&store), Arc::clone(&cache), request, launches)),
    )
    .await?;

    let store_puts_per_s = store_ceiling(store.as_ref(), concurrency, heartbeat_seconds).await;
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
        heartbeats_needed_per_s: needed,
        paced_heartbeats_per_s: paced_per_s,
        placements_under_heartbeats: beside.len(),
        p99_under_heartbeats_ms: pct(&mut beside, 0.99),
        double_bookings,
        store_puts_per_s,
    })
}

/// Bare puts per second, `concurrency` at a time for `seconds`, to keys cleaned up after.
async fn store_ceiling(store: &dyn Store, concurrency: usize, seconds: u64) -> f64 {
    let until = Instant::now() + Duration::from_secs(seconds.max(1));
    let started = Instant::now();
    let done = std::sync::atomic::AtomicU64::new(0);
    let worker = |w: usize| {
        let done = &done;
        async move {
            let mut i = 0;
            while Instant::now() < until {
                let key = format!("/pixelgrid/bench-ceiling/{w:03}-{:03}", i % 100);
                if store.put(&key, vec![b'x'; 100], 0).await.is_ok() {
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                i += 1;
            }
        }
    };
    futures::future::join_all((0..concurrency).map(worker)).await;
    let per_s = done.into_inner() as f64 / started.elapsed().as_secs_f64();
    for kv in store
        .range("/pixelgrid/bench-ceiling/")
        .await
        .unwrap_or_default()
    {
        let _ = store.delete(&kv.key).await;
    }
    per_s
}

/// Places session `i` for `request` (one reservation transaction, as ChooseNode makes): how
/// long it took, ms, and the slot when one was granted.
async fn place(
    store: &dyn Store,
    cache: &crate::cache::RegistryCache,
    request: &Request,
    i: usize,
) -> (f64, Option<slots::SlotReservation>) {
    let t = Instant::now();
    let r = slots::reserve_with(
        store,
        Some(cache),
        &format!("s-{i:07}"),
        request,
        &Policy::default(),
        slots::Conditions::default(),
        |_| Vec::new(),
    )
    .await
    .map(|(r, _)| r);
    (t.elapsed().as_secs_f64() * 1e3, r.ok())
}

/// A ready node's signed heartbeat.
fn beat(key: &NodeKey, sequence: u64) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        node_id: Some(types::NodeId { hex: key.node_id() }),
        sequence,
        sent_unix_ms: crate::grid::now_ms(),
        state: pb::NodeState::Ready as i32,
        cpu_load_percent: 10,
        ..Default::default()
    }
    .sign_with(key)
}

/// Placements to time beside heartbeats: the store, the cache, the request for launch `i`, and
/// the first launch number.
type Trickle = (
    Arc<dyn Store>,
    Arc<crate::cache::RegistryCache>,
    Arc<dyn Fn(usize) -> Request + Send + Sync>,
    usize,
);

/// Heartbeats round-robin over `keys` for `seconds`, `concurrency` at a time and at most `rate`
/// a second in all (`None`: as fast as they go), with placements one at a time 5 ms apart
/// beside them when `trickle` says how; the heartbeats per second taken and the placements'
/// latencies, ms.
async fn heartbeat_phase(
    grid: &Arc<Grid>,
    keys: &Arc<Vec<NodeKey>>,
    sequence: &Arc<std::sync::atomic::AtomicU64>,
    concurrency: usize,
    seconds: u64,
    rate: Option<f64>,
    trickle: Option<Trickle>,
) -> Result<(f64, Vec<f64>)> {
    use std::sync::atomic::Ordering::Relaxed;
    let end = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let placements = trickle.map(|(store, cache, request, first)| {
        tokio::spawn(async move {
            let mut times = Vec::new();
            let mut i = first;
            while Instant::now() < end {
                if let (ms, Some(_)) = place(store.as_ref(), &cache, &request(i), i).await {
                    times.push(ms);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            times
        })
    });
    let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut beaters = Vec::new();
    for w in 0..concurrency {
        let (grid, keys, taken, sequence) = (
            Arc::clone(grid),
            Arc::clone(keys),
            Arc::clone(&taken),
            Arc::clone(sequence),
        );
        beaters.push(tokio::spawn(async move {
            let mut tick = rate.map(|r| {
                let mut t = tokio::time::interval(Duration::from_secs_f64(concurrency as f64 / r));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            let mut i = w;
            while Instant::now() < end {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let hb = beat(&keys[i % keys.len()], sequence.fetch_add(1, Relaxed));
                if grid.heartbeat(hb).await.is_ok() {
                    taken.fetch_add(1, Relaxed);
                }
                i += concurrency;
            }
        }));
    }
    for b in beaters {
        let _ = b.await;
    }
    let per_s = taken.load(Relaxed) as f64 / started.elapsed().as_secs_f64();
    let times = match placements {
        Some(p) => p.await.map_err(|e| Error::Store(e.to_string()))?,
        None => Vec::new(),
    };
    Ok((per_s, times))
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
             heartbeats: {:.0}/s sustained (grid needs {:.0}/s: {:.2}x)\n\
             at twice the need: {:.0} heartbeats/s taken, placement p99 {:.2} ms beside them ({} placements)\n\
             store ceiling, same run: {:.0} bare puts/s at {} in flight (paced heartbeats: {:.2}x of it)\n\
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
            self.heartbeats_per_s / self.heartbeats_needed_per_s,
            self.paced_heartbeats_per_s,
            self.p99_under_heartbeats_ms,
            self.placements_under_heartbeats,
            self.store_puts_per_s,
            self.concurrency,
            self.paced_heartbeats_per_s / self.store_puts_per_s,
            self.double_bookings
        )
    }
}
