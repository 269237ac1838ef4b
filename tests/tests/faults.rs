//! The fault matrix (issue #15): under a steady load of players joining, playing and leaving, a
//! daemon or store member is killed (SIGKILL, or its in-process equivalent) and comes back; each
//! cell asserts what players, the store and the indexer saw — sessions lost (only those a
//! killed node served may need the SDK's reconnect, and they must play again within 5 s), double
//! bookings 0, slots leaked 0 once everyone left, reports lost or credited twice 0. `cargo test -p pixelgrid-tests --test faults -- --nocapture`
//! prints each cell's row of the README's table.

// Each cell prints its row of the table.
#![allow(clippy::print_stdout)]

use orchestrator::store::{EtcdStore, Store};
use pixelgrid_tests::faults::{self, CellOutcome, Load, Partition};
use pixelgrid_tests::{EtcdCluster, Replica, TestGrid, TestIndexer};
use std::sync::Arc;
use std::time::Duration;

/// Cells run one at a time: each loads both cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const PLAYERS: usize = 3;
const PLAY: Duration = Duration::from_secs(2);

/// What a fault can reach.
struct Fixture {
    grid: TestGrid,
    etcd: EtcdCluster,
    store: Arc<dyn Store>,
    /// Between the nodes and the orchestrator.
    link: Partition,
    /// Takes the nodes' reports.
    indexer: TestIndexer,
    /// Nodes the fault killed (their unsent reports die with them).
    killed: Vec<Arc<edge_node::stream::StreamNode>>,
    /// A second orchestrator replica, in the cells that have one (players and nodes then reach
    /// the two through a balancer).
    replica: Option<Replica>,
}

/// A grid of two nodes (three sessions each, reaching the orchestrator through a link that can
/// be cut) on a 3-member etcd, players on it for `before`, then `fault`, then `after` more;
/// then everyone leaves and the store settles.
fn cell(
    name: &str,
    before: Duration,
    after: Duration,
    fault: impl FnOnce(&mut Fixture),
) -> CellOutcome {
    cell_with_replicas(name, 1, before, after, fault)
}

/// [`cell`] with `replicas` orchestrator replicas (1 or 2) behind a balancer.
fn cell_with_replicas(
    name: &str,
    replicas: usize,
    before: Duration,
    after: Duration,
    fault: impl FnOnce(&mut Fixture),
) -> CellOutcome {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let etcd = EtcdCluster::start(3).expect("a 3-member etcd cluster");
    let store_rt = tokio::runtime::Runtime::new().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        store_rt
            .block_on(EtcdStore::connect(&etcd.endpoints))
            .expect("connect to etcd"),
    );
    let mut grid = TestGrid::start(Arc::clone(&store), 0, 3);
    // The first replica leads the sweeps before a second one campaigns.
    std::thread::sleep(Duration::from_millis(500));
    let replica = (replicas > 1).then(|| grid.start_replica(Arc::clone(&store)));
    let control_planes: Vec<_> = std::iter::once(grid.orchestrator)
        .chain(replica.as_ref().map(|r| r.orchestrator))
        .collect();
    let link = Partition::start_to_any(&grid.runtime, control_planes.clone());
    // What players reach: the orchestrator, or a balancer in front of the replicas.
    let front = Partition::start_to_any(&grid.runtime, control_planes);
    grid.orchestrator_for_nodes = Some(format!("http://{}", link.addr));
    let indexer = grid.start_indexer(indexer::tally::TallyConfig {
        epoch_ms: 60_000,
        slot_ms: 1_000,
        max_clock_skew_ms: 1_000,
        // Reports held back by a fault still count when they arrive.
        max_report_delay_ms: 30_000,
        ..indexer::tally::TallyConfig::default()
    });
    grid.add_node(0, 3);
    grid.add_node(1, 3);
    let load = Load::start(
        &grid,
        format!("http://{}", front.addr),
        Arc::clone(&store),
        PLAYERS,
        PLAY,
    );
    let mut f = Fixture {
        grid,
        etcd,
        store,
        link,
        indexer,
        killed: Vec::new(),
        replica,
    };
    std::thread::sleep(before);
    fault(&mut f);
    let healed = std::time::Instant::now();
    std::thread::sleep(after);
    let (logs, double_bookings) = load.stop(&f.grid);
    let leaked = faults::slots_left(&f.grid, f.store.as_ref(), Duration::from_secs(15));
    let mut o = faults::outcome(&logs, double_bookings, leaked, healed);
    let nodes: Vec<_> = f.grid.nodes.iter().map(|(_, n)| Arc::clone(n)).collect();
    faults::reports_accounted(
        &mut o,
        &f.indexer.indexer,
        &nodes,
        &f.killed,
        Duration::from_secs(10),
    );
    println!(
        "| {name} | {} | {} ({:.1} s) | {} | {} | {} | {} | {} / {} of {} | {} | {:.1} |",
        o.launches,
        o.launch_failures,
        o.launches_out_s,
        o.sessions_lost.len(),
        o.reconnects,
        o.double_bookings,
        o.slots_leaked,
        o.reports_lost,
        o.reports_refused,
        o.reports_taken,
        if o.tally_differs == 0 { "yes" } else { "NO" },
        o.recovery_s
    );
    o
}

fn assert_clean(o: &CellOutcome) {
    assert!(o.sessions_lost.is_empty(), "sessions lost: {o:#?}");
    assert_eq!(o.double_bookings, 0, "{o:#?}");
    assert_eq!(o.slots_leaked, 0, "{o:#?}");
    assert_eq!(
        o.players_back, PLAYERS,
        "every player launched again after: {o:#?}"
    );
    assert!(o.reports_taken > 0, "the nodes reported: {o:#?}");
    assert_eq!(o.reports_lost, 0, "{o:#?}");
    assert_eq!(o.reports_refused, 0, "reports credited nothing: {o:#?}");
    assert_eq!(
        o.tally_differs, 0,
        "the tally counts what the ledger holds: {o:#?}"
    );
}

#[test]
fn no_fault_the_baseline() {
    let o = cell(
        "no fault",
        Duration::from_secs(6),
        Duration::from_secs(4),
        |_| {},
    );
    assert_clean(&o);
    assert_eq!(o.reconnects, 0, "{o:#?}");
    assert_eq!(o.launch_failures, 0, "{o:#?}");
}

#[test]
fn an_edge_node_killed_while_streaming() {
    let mut back = None;
    let o = cell(
        "edge node kill -9 (sessions on it re-launch elsewhere), back after 3 s",
        Duration::from_secs(6),
        Duration::from_secs(8),
        |f| {
            let grid = &mut f.grid;
            // The node serving the most players.
            let (_, seed) = grid.runtime.block_on(async {
                let mut busiest = (0, 0);
                for (i, (_, n)) in grid.nodes.iter().enumerate() {
                    busiest = busiest.max((n.session_ids().await.len(), i));
                }
                busiest
            });
            let victim = Arc::clone(&grid.nodes[seed].1);
            grid.kill_node(victim.node_id());
            f.killed.push(victim);
            std::thread::sleep(Duration::from_secs(3));
            // The same identity (seed) starts again, as a restarted process would.
            grid.add_node(seed as u8, 3);
            back = grid.nodes.last().map(|(_, n)| Arc::clone(n));
        },
    );
    assert_clean(&o);
    let back = back.expect("the node started again");
    assert!(
        back.reports
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the restarted node reported again: {o:#?}"
    );
    assert!(
        o.reconnects >= 1,
        "someone played on the killed node: {o:#?}"
    );
    assert!(o.recovery_s < 5.0, "{o:#?}");
}

#[test]
fn the_orchestrator_killed_and_restarted() {
    let o = cell(
        "orchestrator kill -9, back after 1 s",
        Duration::from_secs(6),
        Duration::from_secs(8),
        |f| {
            f.grid
                .restart_orchestrator_after(Arc::clone(&f.store), Duration::from_secs(1));
        },
    );
    assert_clean(&o);
    assert!(
        o.launch_failures > 0,
        "launches failed while it was down: {o:#?}"
    );
    assert_eq!(o.reconnects, 0, "no node was lost: {o:#?}");
}

#[test]
fn an_etcd_member_killed_and_restarted() {
    let o = cell(
        "etcd member kill -9, back after 3 s",
        Duration::from_secs(6),
        Duration::from_secs(8),
        |f| {
            f.etcd.kill(0);
            std::thread::sleep(Duration::from_secs(3));
            f.etcd.restart(0).expect("etcd member restarts");
        },
    );
    assert_clean(&o);
    assert_eq!(o.reconnects, 0, "no node was lost: {o:#?}");
}

#[test]
fn all_of_etcd_down_for_longer_than_the_node_lease() {
    let o = cell(
        "all etcd members down 4 s (node lease 2 s)",
        Duration::from_secs(6),
        Duration::from_secs(10),
        |f| {
            for i in 0..3 {
                f.etcd.kill(i);
            }
            std::thread::sleep(Duration::from_secs(4));
            for i in 0..3 {
                f.etcd.restart(i).expect("etcd member restarts");
            }
        },
    );
    assert_clean(&o);
    assert!(
        o.launch_failures > 0,
        "launches failed while etcd was down: {o:#?}"
    );
}

#[test]
fn the_nodes_cut_off_from_the_orchestrator_for_longer_than_their_lease() {
    let o = cell(
        "network partition nodes ↔ orchestrator 4 s (node lease 2 s)",
        Duration::from_secs(6),
        Duration::from_secs(10),
        |f| {
            f.link.set_cut(true);
            std::thread::sleep(Duration::from_secs(4));
            f.link.set_cut(false);
        },
    );
    assert_clean(&o);
    assert!(
        o.launch_failures > 0,
        "the nodes' registrations lapsed: {o:#?}"
    );
}

#[test]
fn a_nodes_clock_jumping_an_hour_ahead_for_longer_than_its_lease() {
    let mut lapsed = false;
    let o = cell(
        "a node's clock jumps +1 h for 4 s (node lease 2 s)",
        Duration::from_secs(6),
        Duration::from_secs(10),
        |f| {
            let skew = &f.grid.node_clock_skews[0];
            skew.store(3_600_000, std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(3_500));
            // Felt: the orchestrator refused its heartbeats ("check NTP") and its registration
            // lapsed.
            let id = f.grid.nodes[0].1.node_id().to_owned();
            let record = f
                .grid
                .runtime
                .block_on(f.store.get(&orchestrator::slots::node_key(&id)));
            lapsed = matches!(record, Ok(None));
            std::thread::sleep(Duration::from_millis(500));
            skew.store(0, std::sync::atomic::Ordering::Relaxed);
        },
    );
    assert_clean(&o);
    assert!(lapsed, "the skewed node's registration lapsed: {o:#?}");
}

#[test]
fn the_indexers_ledger_full_for_a_while() {
    let mut refused = 0;
    let o = cell(
        "indexer's ledger full 4 s (disk quota), then room again",
        Duration::from_secs(6),
        Duration::from_secs(8),
        |f| {
            let indexer = &f.indexer.indexer;
            indexer.set_ledger_quota(Some(1)).expect("a quota");
            std::thread::sleep(Duration::from_secs(4));
            refused = indexer
                .counters
                .ledger_full
                .load(std::sync::atomic::Ordering::Relaxed);
            indexer.set_ledger_quota(None).expect("no quota");
        },
    );
    assert_clean(&o);
    assert!(refused > 0, "the full ledger refused commits: {o:#?}");
    assert_eq!(o.launch_failures, 0, "players never noticed: {o:#?}");
}

#[test]
fn the_indexer_killed_and_restarted() {
    let mut waiting = 0;
    let o = cell(
        "indexer kill -9, back after 3 s on its ledger",
        Duration::from_secs(6),
        Duration::from_secs(8),
        |f| {
            f.indexer.kill();
            std::thread::sleep(Duration::from_secs(3));
            waiting = f
                .grid
                .nodes
                .iter()
                .map(|(_, n)| n.reports.waiting.load(std::sync::atomic::Ordering::Relaxed))
                .sum();
            f.indexer.restart();
        },
    );
    assert_clean(&o);
    assert!(
        waiting > 0,
        "the nodes kept their reports meanwhile: {o:#?}"
    );
    assert_eq!(o.launch_failures, 0, "players never noticed: {o:#?}");
}

#[test]
fn the_other_orchestrator_replica_of_two_killed_and_restarted() {
    let mut led = true;
    let o = cell_with_replicas(
        "orchestrator replica kill -9 (not the leader, of two behind a balancer), back after 3 s",
        2,
        Duration::from_secs(6),
        Duration::from_secs(8),
        |f| {
            let replica = f.replica.take().expect("a second replica");
            led = replica.leading.load(std::sync::atomic::Ordering::SeqCst);
            let at = replica.addrs;
            drop(replica);
            std::thread::sleep(Duration::from_secs(3));
            f.replica = Some(f.grid.start_replica_at(Arc::clone(&f.store), Some(at)));
        },
    );
    assert_clean(&o);
    assert!(!led, "the killed replica did not lead");
    assert_eq!(o.reconnects, 0, "no node was lost: {o:#?}");
    assert!(
        o.launches_out_s < 1.0,
        "the other replica kept launching: {o:#?}"
    );
}

#[test]
fn the_leading_orchestrator_replica_of_two_killed_and_restarted() {
    let mut led = false;
    let mut taken_over = false;
    let o = cell_with_replicas(
        "orchestrator replica kill -9 (the leader, of two behind a balancer), back after 3 s",
        2,
        Duration::from_secs(6),
        Duration::from_secs(8),
        |f| {
            led = f.grid.leading.load(std::sync::atomic::Ordering::SeqCst);
            f.grid
                .restart_orchestrator_after(Arc::clone(&f.store), Duration::from_secs(3));
            taken_over = f
                .replica
                .as_ref()
                .is_some_and(|r| r.leading.load(std::sync::atomic::Ordering::SeqCst));
        },
    );
    assert_clean(&o);
    assert!(led, "the killed replica was the leader");
    assert!(taken_over, "the other replica took the sweeps over: {o:#?}");
    assert_eq!(o.reconnects, 0, "no node was lost: {o:#?}");
    assert!(
        o.launches_out_s < 1.0,
        "the other replica kept launching: {o:#?}"
    );
}

/// Where in a launch a kill is pinned, and what is killed.
#[derive(Debug, Clone, Copy)]
enum Pin {
    /// A candidate node, once CreateSession answered (before the round trips are measured).
    NodeAfterCreateSession,
    /// The chosen node, once ChooseNode reserved its slot (before the WHEP offer).
    NodeAfterChooseNode,
    /// The chosen node, 30 ms after the offer went (while it starts the session).
    NodeDuringWhep,
    /// The orchestrator, once CreateSession answered; back after 1 s.
    OrchestratorAfterCreateSession,
    /// The orchestrator, once ChooseNode answered; back after 1 s.
    OrchestratorAfterChooseNode,
    /// etcd (its one member), once CreateSession answered; back after 1 s.
    EtcdAfterCreateSession,
    /// etcd (its one member), once ChooseNode answered; back after 1 s.
    EtcdAfterChooseNode,
}

impl Pin {
    fn holds_at(self, phase: &pixelgrid_client::LaunchPhase) -> bool {
        use pixelgrid_client::LaunchPhase as P;
        match self {
            Pin::NodeAfterCreateSession
            | Pin::OrchestratorAfterCreateSession
            | Pin::EtcdAfterCreateSession => matches!(phase, P::Candidates { .. }),
            _ => matches!(phase, P::Chosen { .. }),
        }
    }
}

/// Kills pinned to each phase of a launch (rather than found there by a load): one player
/// launches, its launch is held at the phase by the SDK's [`LaunchObserver`] while the daemon is
/// killed, then goes on. The player must be playing within 5 s of the kill (by its own launch or
/// its next one), and once it left no slot may be left held and no slot held twice.
#[test]
fn kills_pinned_to_each_phase_of_a_launch() {
    use pixelgrid_client::{LaunchObserver, LaunchOptions, LaunchPhase};
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut etcd = EtcdCluster::start(1).expect("etcd");
    let store_rt = tokio::runtime::Runtime::new().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        store_rt
            .block_on(EtcdStore::connect(&etcd.endpoints))
            .expect("connect to etcd"),
    );
    let mut grid = TestGrid::start(Arc::clone(&store), 2, 2);
    let mut next_seed = 2;
    for pin in [
        Pin::NodeAfterCreateSession,
        Pin::NodeAfterChooseNode,
        Pin::NodeDuringWhep,
        Pin::OrchestratorAfterCreateSession,
        Pin::OrchestratorAfterChooseNode,
        Pin::EtcdAfterCreateSession,
        Pin::EtcdAfterChooseNode,
    ] {
        let (at_tx, at_rx) = std::sync::mpsc::channel::<LaunchPhase>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let observer = {
            let (at_tx, go_rx) = (std::sync::Mutex::new(at_tx), std::sync::Mutex::new(go_rx));
            LaunchObserver(Arc::new(move |phase: &LaunchPhase| {
                if pin.holds_at(phase) && !held.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    let _ = at_tx.lock().unwrap().send(phase.clone());
                    // Holds this launch (and one of the runtime's two workers) until the kill.
                    let _ = go_rx.lock().unwrap().recv_timeout(Duration::from_secs(30));
                }
            }))
        };
        let options = |observer: Option<LaunchObserver>| LaunchOptions {
            width: 320,
            height: 240,
            fps: 30,
            audio: false,
            on_phase: observer,
            ..LaunchOptions::default()
        };
        let (url, key) = (
            format!("http://{}", grid.orchestrator),
            grid.api_key.clone(),
        );
        let launch = |observer: Option<LaunchObserver>| {
            let (url, key, options) = (url.clone(), key.clone(), options(observer));
            async move {
                pixelgrid_client::Client::connect(&url)
                    .await?
                    .with_api_key(&key, "pinned-player")
                    .launch("arena", options)
                    .await
            }
        };
        let first = grid.runtime.spawn(launch(Some(observer)));
        let phase = at_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{pin:?}: the launch never reached its phase: {e}"));
        let killed_at = std::time::Instant::now();
        match pin {
            Pin::NodeAfterCreateSession | Pin::NodeAfterChooseNode => {
                let victim = match &phase {
                    LaunchPhase::Chosen { node_id } => node_id.clone(),
                    _ => grid.nodes[0].1.node_id().to_owned(),
                };
                grid.kill_node(&victim);
                let _ = go_tx.send(());
            }
            Pin::NodeDuringWhep => {
                let LaunchPhase::Chosen { node_id } = &phase else {
                    unreachable!()
                };
                let _ = go_tx.send(());
                std::thread::sleep(Duration::from_millis(30));
                grid.kill_node(node_id);
            }
            Pin::OrchestratorAfterCreateSession | Pin::OrchestratorAfterChooseNode => {
                grid.restart_orchestrator_after(Arc::clone(&store), Duration::from_secs(1));
                let _ = go_tx.send(());
            }
            Pin::EtcdAfterCreateSession | Pin::EtcdAfterChooseNode => {
                etcd.kill(0);
                std::thread::sleep(Duration::from_secs(1));
                etcd.restart(0).expect("etcd restarts");
                let _ = go_tx.send(());
            }
        }
        let first = grid.runtime.block_on(first).expect("the launch task");
        let first_verdict = match &first {
            Ok(s) => format!("went on ({})", &s.node_id()[..8]),
            Err(e) => format!("failed: {e}"),
        };
        // Playing: this launch's pictures, or the next launch's (as a player's page retries).
        let (frame_after, launches) = grid.runtime.block_on(async {
            let mut session = first.ok();
            let mut launches = 1;
            loop {
                if let Some(s) = session.as_mut() {
                    if let Ok(Some(_)) =
                        tokio::time::timeout(Duration::from_secs(5), s.next_frame()).await
                    {
                        let at = killed_at.elapsed();
                        s_end(session.take()).await;
                        return (at, launches);
                    }
                    s_end(session.take()).await;
                }
                assert!(
                    killed_at.elapsed() < Duration::from_secs(20),
                    "{pin:?}: the player never played again"
                );
                launches += 1;
                session = launch(None).await.ok();
                if session.is_none() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        });
        let leaked = faults::slots_left(&grid, store.as_ref(), Duration::from_secs(15));
        println!(
            "| {pin:?} | {first_verdict} | {launches} | {:.2} | {leaked} |",
            frame_after.as_secs_f64()
        );
        assert!(
            frame_after < faults::LOST_AFTER,
            "{pin:?}: playing again {frame_after:?} after the kill"
        );
        assert_eq!(leaked, 0, "{pin:?}: slots left held");
        if matches!(pin, Pin::NodeDuringWhep) {
            // Its process gone, the node refuses connections: the SDK need not wait out the 3 s
            // it gives a node before its first packet.
            assert!(
                frame_after < Duration::from_millis(2_500),
                "{pin:?}: the dead node was waited for ({frame_after:?})"
            );
        }
        match pin {
            // A dead candidate is skipped (its round trip fails); a launch past ChooseNode
            // needs no orchestrator.
            Pin::NodeAfterCreateSession | Pin::OrchestratorAfterChooseNode => {
                assert!(
                    first_verdict.starts_with("went on"),
                    "{pin:?}: {first_verdict}"
                );
            }
            _ => {}
        }
        if matches!(
            pin,
            Pin::NodeAfterCreateSession | Pin::NodeAfterChooseNode | Pin::NodeDuringWhep
        ) {
            // Two live nodes for the next pin.
            grid.add_node(next_seed, 2);
            next_seed += 1;
        }
    }
}

async fn s_end(session: Option<pixelgrid_client::Session>) {
    if let Some(s) = session {
        s.end().await;
    }
}
