//! A day of heartbeats and sessions against a real etcd compacting itself as the deploy files
//! set it up: records of ended sessions and their usage expire with their retention, so the
//! keyspace and etcd's database stay bounded instead of growing with every session ever played.

use orchestrator::store::{EtcdStore, LocalEtcd, Store};
use pixelgrid_proto::identity::{NodeKey, SignedRequest};
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_proto::types::v1 as types;
use pixelgrid_tests::TestGrid;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One node heartbeating once a second for a day.
const HEARTBEATS: u64 = 86_400;
/// A busy day of a four-slot node (ten-minute sessions, around the clock), rounded up.
const SESSIONS: u64 = 1_000;
const NODES: usize = 8;
/// The compressed day: sessions and heartbeats are paced to fill it evenly, so the records
/// alive at any moment are the rate times their lifetimes, whatever the machine's speed.
const DAY: Duration = Duration::from_secs(40);

#[test]
fn a_days_heartbeats_and_sessions_leave_the_keyspace_and_etcd_bounded() {
    // The deploy files keep an hour of history; a few seconds here, as time is compressed.
    let etcd = LocalEtcd::start_with(
        1,
        &[
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "5s",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Arc::new(rt.block_on(EtcdStore::connect(&etcd.endpoints)).unwrap());
    // A day in a minute: ended sessions readable for 2 s and usage kept 4 s (an hour and 35
    // days by default), grants living 2 s (5 minutes) and trusted 1 s off the clock (60 s).
    let g = TestGrid::start_configured(Arc::clone(&store) as Arc<dyn Store>, 0, 4, |grid| {
        grid.with_config(|c| {
            c.session_retention = Duration::from_secs(2);
            c.usage_retention = Duration::from_secs(4);
            c.grant_ttl_max = Duration::from_secs(2);
            c.launch_ttl = Duration::from_secs(2);
            c.max_clock_skew = Duration::from_secs(1);
        })
    });
    let grid = Arc::clone(&g.grid);
    let keys: Vec<NodeKey> = (0..NODES)
        .map(|i| NodeKey::from_seed(&[100 + i as u8; 32]))
        .collect();
    let samples = g.runtime.block_on(async {
        for k in keys.iter() {
            grid.register(pixelgrid_tests::signed_registration(k, 4))
                .await
                .expect("registered");
        }
        // Heartbeats from every node, a day's worth spread over the compressed day, until the
        // sessions are done.
        let beats = Arc::new(AtomicU64::new(0));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut beaters = Vec::new();
        for k in keys {
            let (grid, beats, done) = (Arc::clone(&grid), Arc::clone(&beats), Arc::clone(&done));
            beaters.push(tokio::spawn(async move {
                let mut every = tokio::time::interval(DAY * NODES as u32 / HEARTBEATS as u32);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut sequence = 0;
                while !done.load(Ordering::Relaxed) {
                    every.tick().await;
                    sequence += 1;
                    let hb = pb::HeartbeatRequest {
                        node_id: Some(types::NodeId { hex: k.node_id() }),
                        sequence,
                        sent_unix_ms: orchestrator::grid::now_ms(),
                        state: pb::NodeState::Ready as i32,
                        ..Default::default()
                    }
                    .sign_with(&k);
                    grid.heartbeat(hb).await.expect("heartbeat taken");
                    beats.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // Sessions launched and ended one after another while the heartbeats go on; the keys
        // and the database are measured every tenth of the way.
        let mut samples = Vec::new();
        let started = Instant::now();
        for i in 0..SESSIONS {
            tokio::time::sleep_until((started + DAY * i as u32 / SESSIONS as u32).into()).await;
            let grant = g.grant().await;
            let player = grid.authenticate(Some(&grant)).await.unwrap();
            let launch = grid
                .create_session(
                    &player,
                    pb::CreateSessionRequest {
                        game: "arena".into(),
                        player_region: Some(types::Region {
                            code: "local".into(),
                        }),
                        ..Default::default()
                    },
                )
                .await
                .expect("candidates");
            let chosen = grid
                .choose_node(
                    &player,
                    pb::ChooseNodeRequest {
                        latencies: launch
                            .candidates
                            .iter()
                            .map(|c| pb::LatencySample {
                                node_id: c.node_id.clone(),
                                rtt_ms: 5,
                            })
                            .collect(),
                        launch_id: launch.launch_id,
                        player_key: Vec::new(),
                    },
                )
                .await
                .expect("placed");
            let id = chosen.session.unwrap().session_id;
            grid.end_session(&orchestrator::auth::Caller::Operator, &id, "played")
                .await
                .expect("ended");
            if (i + 1) % (SESSIONS / 10) == 0 {
                // Wait for the heartbeats to keep pace with the sessions.
                let due = HEARTBEATS * (i + 1) / SESSIONS;
                while beats.load(Ordering::Relaxed) < due {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let keys = store.range(orchestrator::slots::ROOT).await.unwrap().len();
                let (db, revision) = store.db_size().await.unwrap();
                eprintln!(
                    "{:>3} % of the day ({:.0} s): {keys} keys, db {db} bytes, revision {revision}",
                    (i + 1) * 100 / SESSIONS,
                    started.elapsed().as_secs_f64()
                );
                samples.push((keys, db));
            }
        }
        done.store(true, Ordering::Relaxed);
        for b in beaters {
            b.await.unwrap();
        }
        assert!(beats.load(Ordering::Relaxed) >= HEARTBEATS * 9 / 10);
        samples
    });
    // From 40 % of the day: records have lived out their retention and compaction has run.
    let (keys_early, db_early) = samples[3];
    let (keys_end, db_end) = *samples.last().unwrap();
    // Without lifetimes every ended session left two records behind: 2,000 keys by now.
    assert!(
        keys_end as u64 <= SESSIONS / 2 && keys_end <= keys_early * 2 + 50,
        "keys must stay bounded: {samples:?}"
    );
    assert!(
        db_end <= db_early * 3 / 2,
        "etcd's database must stop growing once compaction catches up: {samples:?}"
    );
}
