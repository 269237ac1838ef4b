//! The control plane survives losing a replica or an etcd member.

use orchestrator::grid::{Grid, GridConfig};
use orchestrator::placement::{NodeView, Policy, Request};
use orchestrator::slots;
use orchestrator::store::{EtcdStore, Store};
use pixelgrid_proto::token::TokenSigner;
use pixelgrid_tests::{Etcd, EtcdCluster};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn node(i: usize, capacity: u32) -> NodeView {
    NodeView {
        id: format!("node-{i}"),
        ready: true,
        region: "local".into(),
        games: vec!["arena".into()],
        offers: Default::default(),
        capacity,
        used: 0,
        price: 0,
    }
}

/// Both tests time fail-overs against etcd; run beside each other on two cores, the cluster
/// start-up of one delayed the other's lease expiry by seconds. One at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn request(nodes: usize) -> Request {
    Request {
        game: "arena".into(),
        rtt_ms: (0..nodes).map(|i| (format!("node-{i}"), 5)).collect(),
        ..Request::default()
    }
}

#[test]
fn killing_the_leader_hands_the_sweeps_to_another_replica_within_the_lease() {
    let _serial = serial();
    let etcd = Etcd::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ttl = Duration::from_secs(2);
        let config = GridConfig {
            reservation_ttl: Duration::from_secs(1),
            ..GridConfig::default()
        };
        let mut replicas = Vec::new();
        for name in ["a", "b"] {
            let store: Arc<dyn Store> = Arc::new(
                EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
                    .await
                    .unwrap(),
            );
            let grid = Arc::new(Grid::new(
                store,
                TokenSigner::from_seed(&[9; 32]),
                Policy::default(),
                config.clone(),
            ));
            let leading = Arc::new(AtomicBool::new(false));
            let task = tokio::spawn(orchestrator::leader::run(
                Arc::clone(&grid),
                name.into(),
                ttl,
                Duration::from_millis(200),
                Arc::clone(&leading),
            ));
            replicas.push((grid, leading, task));
        }
        let one_leader = || {
            replicas
                .iter()
                .filter(|(_, l, _)| l.load(Ordering::SeqCst))
                .count()
                == 1
        };
        let t = Instant::now();
        while !one_leader() && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(one_leader(), "exactly one replica leads");
        let leader = replicas
            .iter()
            .position(|(_, l, _)| l.load(Ordering::SeqCst))
            .unwrap();
        let other = 1 - leader;

        // "kill -9" the leader: its task stops without revoking its lease.
        replicas[leader].2.abort();
        let killed = Instant::now();
        while !replicas[other].1.load(Ordering::SeqCst)
            && killed.elapsed() < ttl + Duration::from_secs(6)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = killed.elapsed();
        assert!(
            replicas[other].1.load(Ordering::SeqCst),
            "the other replica must take over (waited {:?})",
            killed.elapsed()
        );
        assert!(
            took <= ttl + Duration::from_secs(1),
            "handover took {took:?} with a {ttl:?} lease"
        );

        // Its sweeps run: a reservation nobody uses expires and its slot is freed.
        let survivor = &replicas[other].0;
        slots::put_node(survivor.store().as_ref(), &node(0, 1), 0)
            .await
            .unwrap();
        let r = slots::reserve(
            survivor.store().as_ref(),
            "ghost",
            &request(1),
            &Policy::default(),
        )
        .await
        .unwrap();
        // A session record for it, pending, old enough to expire.
        let rec = orchestrator::grid::SessionRecord {
            v: 1,
            id: "ghost".into(),
            game: "arena".into(),
            node: r.node.clone(),
            slot: r.slot,
            width: 320,
            height: 240,
            fps: 30,
            codec: 1,
            state: orchestrator::lifecycle::SessionState::Pending,
            created_ms: orchestrator::grid::now_ms(),
            updated_ms: 0,
            reason: String::new(),
            studio: String::new(),
            player: String::new(),
            seat: None,
            connected_ms: 0,
        };
        survivor
            .store()
            .put(
                "/pixelgrid/v1/sessions/ghost",
                serde_json::to_vec(&rec).unwrap(),
                0,
            )
            .await
            .unwrap();
        let t = Instant::now();
        let mut expired = false;
        while t.elapsed() < Duration::from_secs(5) {
            if survivor
                .session("ghost")
                .await
                .unwrap()
                .is_some_and(|s| s.state == orchestrator::lifecycle::SessionState::Expired)
            {
                expired = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            expired,
            "the new leader's sweep must expire the unused reservation"
        );
        assert!(
            slots::nodes(survivor.store().as_ref()).await.unwrap()[0]
                .0
                .used
                == 0,
            "its slot is free again"
        );
    });
}

#[test]
fn launches_keep_succeeding_when_an_etcd_member_dies() {
    let _serial = serial();
    let mut cluster = EtcdCluster::start(3).expect("a 3-member etcd cluster");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(
        rt.block_on(EtcdStore::connect(&cluster.endpoints))
            .expect("connect to the cluster"),
    );
    rt.block_on(async {
        for i in 0..4 {
            slots::put_node(store.as_ref(), &node(i, 20), 0)
                .await
                .unwrap();
        }
        for i in 0..20 {
            slots::reserve(
                store.as_ref(),
                &format!("before-{i}"),
                &request(4),
                &Policy::default(),
            )
            .await
            .expect("launch before the failure");
        }
    });
    cluster.kill(0);
    rt.block_on(async {
        for i in 0..20 {
            slots::reserve(
                store.as_ref(),
                &format!("after-{i}"),
                &request(4),
                &Policy::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("launch {i} after losing a member: {e}"));
        }
        let booked = store.range("/pixelgrid/v1/slots/").await.unwrap();
        assert_eq!(booked.len(), 40, "every launch holds exactly one slot");
    });
}
