//! The fault matrix's harness: a steady load of players (launch, play, leave, again) on a
//! [`TestGrid`], a fault injected in the middle of it, and what the players and the store saw.
//!
//! Each player loops: `launch` through the SDK (reconnecting on node loss, as by default),
//! decode frames for a while, end. With several players cycling every couple of seconds, a
//! fault finds launches in every phase (after CreateSession, after ChooseNode, during WHEP) and
//! sessions streaming. What is counted:
//! - **sessions lost**: a session that ended without its player ending it, or whose frames
//!   stopped for longer than [`LOST_AFTER`] (a node loss the SDK recovered from within it is a
//!   reconnect, not a loss);
//! - **double bookings**: two live sessions on one node's slot, sampled from the store;
//! - **slots leaked**: slot keys left in the store once every player has left and the grid had
//!   time to settle;
//! - **recovery**: the longest time any player went without a frame;
//! - **reports lost**: every report a node saw acknowledged as taken (or refused as already
//!   taken) must be in the indexer's ledger — lost when it is not there (or was dropped from a
//!   full outbox, or still waits on a live node once things settled); **refused**: answered with
//!   any other verdict (too late, unknown node, clock skew…), credited nothing;
//! - **tally = ledger**: the running tally's open epochs, closed on a copy, equal those of a
//!   tally rebuilt from the ledger — not so when the tally counted something the ledger does not
//!   hold, or counted it twice (the ledger itself holds each node's sequence once).

use crate::TestGrid;
use orchestrator::store::Store;
use pixelgrid_client::{Event, LaunchOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A player without frames for longer than this lost its session (the 5 s).
pub const LOST_AFTER: Duration = Duration::from_secs(5);

/// What one player saw over the run.
#[derive(Debug, Default, Clone)]
pub struct PlayerLog {
    /// Launches that started a session.
    pub launches: u32,
    /// When each of them started.
    pub launched_at: Vec<Instant>,
    /// Launches refused or failed: when, and why.
    pub launch_failures: Vec<(Instant, String)>,
    /// Sessions lost (see the module docs), with why.
    pub lost: Vec<String>,
    /// Node losses the SDK recovered from, ms each.
    pub reconnects_ms: Vec<u64>,
    /// Longest wait for a frame while a session was up, ms.
    pub longest_gap_ms: u64,
}

/// What a cell of the matrix found.
#[derive(Debug, Default, Clone)]
pub struct CellOutcome {
    /// Sessions started over the run.
    pub launches: u32,
    /// Launches that failed (the fault can refuse launches while it lasts).
    pub launch_failures: usize,
    /// From the first failed launch to the last, s: how long launching was out.
    pub launches_out_s: f64,
    /// Sessions lost.
    pub sessions_lost: Vec<String>,
    /// Node losses the SDK recovered from.
    pub reconnects: usize,
    /// Two live sessions on one slot, most seen at once.
    pub double_bookings: usize,
    /// Slot keys left once everyone left.
    pub slots_leaked: usize,
    /// Longest time a player went without a frame, s.
    pub recovery_s: f64,
    /// Players who launched again after the fault was over.
    pub players_back: usize,
    /// Reports in the indexer's ledger (that there were some).
    pub reports_taken: usize,
    /// Reports lost (see the module docs).
    pub reports_lost: u64,
    /// Reports refused (see the module docs).
    pub reports_refused: u64,
    /// Open epochs where the running tally and the ledger disagree.
    pub tally_differs: usize,
}

/// Fills in the reports part of `outcome` (see the module docs): waits up to `settle` for the
/// outboxes of `nodes` not in `killed` to empty, then holds each node's acknowledgements (all
/// its incarnations together: a node restarted with its identity is the same node) against
/// `indexer`'s ledger, and audits its tally against the ledger.
pub fn reports_accounted(
    outcome: &mut CellOutcome,
    indexer: &indexer::daemon::Indexer,
    nodes: &[Arc<edge_node::stream::StreamNode>],
    killed: &[Arc<edge_node::stream::StreamNode>],
    settle: Duration,
) {
    let live = || {
        nodes
            .iter()
            .filter(|n| !killed.iter().any(|k| Arc::ptr_eq(k, n)))
    };
    let waiting = || {
        live()
            .map(|n| n.reports.waiting.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let deadline = Instant::now() + settle;
    while waiting() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (mut taken, mut lost) = (0, waiting());
    let ids: std::collections::BTreeSet<&str> = nodes.iter().map(|n| n.node_id()).collect();
    for id in ids {
        let stored = indexer.reports_of(id).expect("the ledger reads").len() as u64;
        taken += stored as usize;
        let mut acked = 0;
        for n in nodes.iter().filter(|n| n.node_id() == id) {
            let c = &n.reports;
            acked += c.accepted.load(Ordering::Relaxed)
                + c.replayed.load(Ordering::Relaxed)
                + c.dropped.load(Ordering::Relaxed);
        }
        lost += acked.saturating_sub(stored);
    }
    outcome.reports_taken = taken;
    outcome.reports_lost = lost;
    outcome.reports_refused = nodes
        .iter()
        .map(|n| n.reports.refused.load(Ordering::Relaxed))
        .sum();
    outcome.tally_differs = indexer
        .audit_open_epochs(pixelgrid_proto::clock::unix_ms())
        .expect("the ledger reads")
        .len();
}

/// Players running against a grid until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    players: Vec<tokio::task::JoinHandle<PlayerLog>>,
    watcher: tokio::task::JoinHandle<usize>,
}

impl Load {
    /// Starts `players` players on `grid`'s runtime, launching through the orchestrator at
    /// `url`, each playing for `play` per session, and a watcher sampling `store` for double
    /// bookings.
    pub fn start(
        grid: &TestGrid,
        url: String,
        store: Arc<dyn Store>,
        players: usize,
        play: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let api_key = grid.api_key.clone();
        let handles = (0..players)
            .map(|i| {
                let (stop, url, api_key) = (Arc::clone(&stop), url.clone(), api_key.clone());
                grid.runtime
                    .spawn(async move { player(i, &url, &api_key, play, &stop).await })
            })
            .collect();
        let watcher = {
            let stop = Arc::clone(&stop);
            grid.runtime.spawn(async move {
                let mut most = 0;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = double_bookings(store.as_ref()).await {
                        most = most.max(n);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                most
            })
        };
        Self {
            stop,
            players: handles,
            watcher,
        }
    }

    /// Stops the players (each ends its session) and waits for them.
    pub fn stop(self, grid: &TestGrid) -> (Vec<PlayerLog>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        grid.runtime.block_on(async {
            let mut logs = Vec::new();
            for p in self.players {
                logs.push(p.await.expect("a player task"));
            }
            (logs, self.watcher.await.unwrap_or(0))
        })
    }
}

async fn player(
    i: usize,
    url: &str,
    api_key: &str,
    play: Duration,
    stop: &AtomicBool,
) -> PlayerLog {
    let mut log = PlayerLog::default();
    let options = LaunchOptions {
        width: 320,
        height: 240,
        fps: 30,
        audio: false,
        ..LaunchOptions::default()
    };
    while !stop.load(Ordering::Relaxed) {
        let launched = match pixelgrid_client::Client::connect(url).await {
            Ok(c) => {
                c.with_api_key(api_key, &format!("fault-player-{i}"))
                    .launch("arena", options.clone())
                    .await
            }
            Err(e) => Err(e),
        };
        let mut s = match launched {
            Ok(s) => s,
            Err(e) => {
                log.launch_failures.push((Instant::now(), e.to_string()));
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        log.launches += 1;
        log.launched_at.push(Instant::now());
        let until = Instant::now() + play;
        let mut last_frame = Instant::now();
        let mut lost = None;
        // A player leaves only while its pictures are coming: one in the middle of a node
        // loss waits for the SDK to bring them back (or for LOST_AFTER to call it lost).
        while lost.is_none()
            && (Instant::now() < until || last_frame.elapsed() > Duration::from_millis(300))
        {
            match tokio::time::timeout(Duration::from_millis(500), s.next_frame()).await {
                Ok(Some(_)) => {
                    let gap = last_frame.elapsed().as_millis() as u64;
                    log.longest_gap_ms = log.longest_gap_ms.max(gap);
                    last_frame = Instant::now();
                }
                Ok(None) => lost = Some("the session ended under the player".to_owned()),
                Err(_) => {}
            }
            if last_frame.elapsed() > LOST_AFTER {
                lost = Some(format!("no frame for {:?}", last_frame.elapsed()));
            }
        }
        for e in std::iter::from_fn(|| s.try_event()) {
            match e {
                Event::Reconnected { after_ms, .. } => log.reconnects_ms.push(after_ms),
                Event::Ended { reason } if lost.is_none() => lost = Some(reason),
                _ => {}
            }
        }
        if let Some(why) = lost {
            log.lost.push(format!("{}: {why}", s.session_id()));
        }
        s.end().await;
    }
    log
}

/// Live sessions sharing a node's slot, from the store.
async fn double_bookings(store: &dyn Store) -> orchestrator::Result<usize> {
    let mut held = std::collections::HashMap::<(String, u32), usize>::new();
    for kv in store.range("/pixelgrid/v1/sessions/").await? {
        if let Ok(r) = serde_json::from_slice::<orchestrator::grid::SessionRecord>(&kv.value)
            && !r.state.is_final()
        {
            *held.entry((r.node, r.slot)).or_default() += 1;
        }
    }
    Ok(held.values().filter(|n| **n > 1).count())
}

/// Slot keys still held, after waiting up to `settle` for them to go.
pub fn slots_left(grid: &TestGrid, store: &dyn Store, settle: Duration) -> usize {
    let deadline = Instant::now() + settle;
    loop {
        let left = grid
            .runtime
            .block_on(store.range("/pixelgrid/v1/slots/"))
            .map_or(usize::MAX, |v| v.len());
        if left == 0 || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Sums the players' logs and the store's checks into a cell's outcome; `healed` is when the
/// fault was over.
pub fn outcome(
    logs: &[PlayerLog],
    double_bookings: usize,
    slots_leaked: usize,
    healed: Instant,
) -> CellOutcome {
    CellOutcome {
        players_back: logs
            .iter()
            .filter(|l| l.launched_at.iter().any(|t| *t > healed))
            .count(),
        launches: logs.iter().map(|l| l.launches).sum(),
        launch_failures: logs.iter().map(|l| l.launch_failures.len()).sum(),
        launches_out_s: {
            let times = || {
                logs.iter()
                    .flat_map(|l| l.launch_failures.iter().map(|(t, _)| *t))
            };
            match (times().min(), times().max()) {
                (Some(first), Some(last)) => (last - first).as_secs_f64(),
                _ => 0.0,
            }
        },
        sessions_lost: logs.iter().flat_map(|l| l.lost.clone()).collect(),
        reconnects: logs.iter().map(|l| l.reconnects_ms.len()).sum(),
        double_bookings,
        slots_leaked,
        recovery_s: logs.iter().map(|l| l.longest_gap_ms).max().unwrap_or(0) as f64 / 1000.0,
        // Counted by `reports_accounted`.
        ..CellOutcome::default()
    }
}

/// A TCP forwarder that can be cut, as a network partition between two daemons (this kernel has
/// no netem): while cut, every connection through it is dropped and new ones are closed at once.
/// With several targets it is also a load balancer in front of replicas: each new connection
/// goes to the next target that accepts it.
pub struct Partition {
    /// Where to connect instead of the target.
    pub addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Partition {
    /// Starts forwarding `addr` → `target` on `rt`.
    pub fn start(rt: &tokio::runtime::Runtime, target: std::net::SocketAddr) -> Self {
        Self::start_to_any(rt, vec![target])
    }

    /// Starts forwarding `addr` → one of `targets` (round robin, skipping those that refuse).
    pub fn start_to_any(rt: &tokio::runtime::Runtime, targets: Vec<std::net::SocketAddr>) -> Self {
        let (cut, _) = tokio::sync::watch::channel(false);
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let watch = cut.clone();
        let targets = Arc::new(targets);
        rt.spawn(async move {
            let mut turn = 0;
            while let Ok((inbound, _)) = listener.accept().await {
                let mut cut = watch.subscribe();
                if *cut.borrow() {
                    continue;
                }
                turn += 1;
                let targets = Arc::clone(&targets);
                tokio::spawn(async move {
                    let mut outbound = None;
                    for i in 0..targets.len() {
                        let target = targets[(turn + i) % targets.len()];
                        if let Ok(s) = tokio::net::TcpStream::connect(target).await {
                            outbound = Some(s);
                            break;
                        }
                    }
                    let Some(outbound) = outbound else {
                        return;
                    };
                    let (mut a, mut b) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Self { addr, cut }
    }

    /// Cuts (true) or heals (false) the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}
