//! The fault matrix (issue #15): under a steady load of players joining, playing and leaving, a
//! daemon or store member is killed (SIGKILL, or its in-process equivalent) and comes back; each
//! cell asserts what players and the store saw — sessions lost (only those a killed node served
//! may need the SDK's reconnect, and they must play again within 5 s), double bookings 0, slots
//! leaked 0 once everyone left. `cargo test -p pixelgrid-tests --test faults -- --nocapture`
//! prints each cell's row of the README's table.

// Each cell prints its row of the table.
#![allow(clippy::print_stdout)]

use orchestrator::store::{EtcdStore, Store};
use pixelgrid_tests::faults::{self, CellOutcome, Load, Partition};
use pixelgrid_tests::{EtcdCluster, TestGrid};
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
    let link = Partition::start(&grid.runtime, grid.orchestrator);
    grid.orchestrator_for_nodes = Some(format!("http://{}", link.addr));
    grid.add_node(0, 3);
    grid.add_node(1, 3);
    let load = Load::start(&grid, Arc::clone(&store), PLAYERS, PLAY);
    let mut f = Fixture {
        grid,
        etcd,
        store,
        link,
    };
    std::thread::sleep(before);
    fault(&mut f);
    let healed = std::time::Instant::now();
    std::thread::sleep(after);
    let (logs, double_bookings) = load.stop(&f.grid);
    let leaked = faults::slots_left(&f.grid, f.store.as_ref(), Duration::from_secs(15));
    let o = faults::outcome(&logs, double_bookings, leaked, healed);
    println!(
        "| {name} | {} | {} ({:.1} s) | {} | {} | {} | {} | {:.1} |",
        o.launches,
        o.launch_failures,
        o.launches_out_s,
        o.sessions_lost.len(),
        o.reconnects,
        o.double_bookings,
        o.slots_leaked,
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
    let o = cell(
        "edge node kill -9 (sessions on it re-launch elsewhere)",
        Duration::from_secs(6),
        Duration::from_secs(8),
        |f| {
            let grid = &mut f.grid;
            // The node serving the most players.
            let victim = grid.runtime.block_on(async {
                let mut busiest = (0, String::new());
                for (_, n) in &grid.nodes {
                    busiest = busiest.max((n.session_ids().await.len(), n.node_id().to_owned()));
                }
                busiest.1
            });
            grid.kill_node(&victim);
        },
    );
    assert_clean(&o);
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
