//! The player's journey through the Rust SDK, on a real grid: etcd, the orchestrator, an indexer
//! and two edge nodes reporting to it, all on loopback.

use orchestrator::store::EtcdStore;
use pixelgrid_client::{Client, Event, LaunchOptions};
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_tests::{Etcd, TestGrid, player_centroid};
use std::sync::Arc;
use std::time::{Duration, Instant};

const EPOCH_MS: u64 = 4_000;

/// A grid on a real etcd; nodes report to an in-process indexer with 4-second epochs.
struct Journey {
    grid: TestGrid,
    indexer: pixelgrid_tests::TestIndexer,
    _etcd: Etcd,
    /// The etcd client's runtime; it must outlive the grid.
    _store_runtime: tokio::runtime::Runtime,
}

impl Journey {
    fn start() -> Self {
        let etcd = Etcd::start();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = rt
            .block_on(EtcdStore::connect(std::slice::from_ref(&etcd.endpoint)))
            .unwrap();
        let mut grid = TestGrid::start(Arc::new(store), 0, 2);
        let indexer = grid.start_indexer(indexer::tally::TallyConfig {
            epoch_ms: EPOCH_MS,
            slot_ms: 1_000,
            max_clock_skew_ms: 1_000,
            max_report_delay_ms: 1_000,
            sla_floor_ppm: 0,
            // Delivery counts for sessions this grid's orchestrator placed.
            orchestrator_keys: vec![
                pixelgrid_proto::token::TokenSigner::from_seed(&pixelgrid_tests::GRID_TOKEN_SEED)
                    .public_key_hex(),
            ],
            ..Default::default()
        });
        Self {
            grid,
            indexer,
            _etcd: etcd,
            _store_runtime: rt,
        }
    }

    fn orchestrator_url(&self) -> String {
        format!("http://{}", self.grid.orchestrator)
    }
}

fn options(width: u32, height: u32, fps: u32) -> LaunchOptions {
    LaunchOptions {
        width,
        height,
        fps,
        ..LaunchOptions::default()
    }
}

/// Waits for the player square in the next frames.
async fn player_position(session: &mut pixelgrid_client::Session) -> (f64, f64) {
    for _ in 0..60 {
        let f = session.next_frame().await.expect("frames");
        if let Some(p) = player_centroid(&f.data, f.width as usize, 40) {
            return p;
        }
    }
    panic!("the player square is not in the picture");
}

/// Launch through the orchestrator, ≥ 60 decoded frames, input moves the player; after an epoch
/// closes, the indexer has credited both nodes' uptime and the session's play time.
#[test]
fn the_sdk_plays_its_input_moves_the_player_and_the_indexer_credits_the_play() {
    let mut j = Journey::start();
    // The studio pays what the nodes ask, per minute its player's receipts attest.
    const PRICE: u64 = 6_000;
    j.grid.node_price = PRICE;
    j.grid.add_node(1, 2);
    j.grid.add_node(2, 2);
    let url = j.orchestrator_url();
    let api_key = j.grid.api_key.clone();
    let nodes: Vec<String> = j
        .grid
        .nodes
        .iter()
        .map(|(_, n)| n.node_id().to_owned())
        .collect();
    // A cheating node beside them: registered for real, it reports sessions nobody played —
    // invented ones, and one "placed" by a token it signed itself with a receipt from a player
    // key of its own.
    let cheat = pixelgrid_proto::identity::NodeKey::from_seed(&[66; 32]);
    j.grid.runtime.block_on(async {
        j.grid
            .client()
            .await
            .register_node(pixelgrid_tests::signed_registration(&cheat, 2))
            .await
            .unwrap();
    });
    let cheating = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let cheater = {
        let (indexer, cheat, cheating) = (
            Arc::clone(&j.indexer.indexer),
            cheat.clone(),
            Arc::clone(&cheating),
        );
        std::thread::spawn(move || {
            let own_orchestrator = pixelgrid_proto::token::TokenSigner::from_seed(&[67; 32]);
            let own_player = pixelgrid_proto::receipt::PlayerKey::from_seed(&[68; 32]);
            let now_s = indexer::daemon::now_ms() / 1000;
            let token = own_orchestrator.sign(&pixelgrid_proto::token::SessionClaims {
                sid: "forged".into(),
                nid: cheat.node_id(),
                game: "arena".into(),
                width: 640,
                height: 360,
                fps: 30,
                iat: pixelgrid_proto::token::format_rfc3339(now_s),
                exp: pixelgrid_proto::token::format_rfc3339(now_s + 600),
                aud: cheat.node_id(),
                nbf: String::new(),
                pk: own_player.public_hex(),
                // A price it made up, billed to a studio it never served.
                price: 1_000_000,
                studio: "victim".into(),
            });
            let mut seq = 0;
            while cheating.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                let receipt = pixelgrid_proto::receipt::Receipt {
                    sequence: seq,
                    frames: seq * 30,
                    played_ms: seq * 1_000,
                    width: 640,
                    height: 360,
                    fps: 30,
                    at_unix_ms: indexer::daemon::now_ms(),
                };
                let mode = Some(pixelgrid_proto::types::v1::VideoMode {
                    width_px: 640,
                    height_px: 360,
                    fps: 30,
                });
                let invented = |i: u64| pixelgrid_proto::indexer::v1::SessionDelivery {
                    session_id: format!("invented-{i}"),
                    promised: mode,
                    achieved: mode,
                    delivered_ms: 60_000,
                    ..Default::default()
                };
                let forged = pixelgrid_proto::indexer::v1::SessionDelivery {
                    session_id: "forged".into(),
                    promised: mode,
                    achieved: mode,
                    delivered_ms: 60_000,
                    session_token: token.clone(),
                    receipt: Some(receipt.to_proto(own_player.sign("forged", &receipt))),
                    ..Default::default()
                };
                let now = indexer::daemon::now_ms();
                let r = indexer::report::ready(
                    &cheat,
                    seq,
                    now,
                    vec![invented(1), invented(2), invented(3), forged],
                );
                let _ = indexer.ingest(&[r], now);
                std::thread::sleep(Duration::from_millis(1_000));
            }
        })
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (serving, epoch) = rt.block_on(async {
        let client = Client::connect(&url)
            .await
            .unwrap()
            .with_api_key(&api_key, "journey-player");
        let mut s = client.launch("arena", options(640, 360, 30)).await.unwrap();
        let Some(Event::Connected { node_id, .. }) = s.next_event().await else {
            panic!("first event is Connected");
        };
        let mut frames = 0;
        while frames < 60 {
            let f = tokio::time::timeout(Duration::from_secs(10), s.next_frame())
                .await
                .expect("frames keep coming")
                .unwrap();
            assert_eq!((f.width, f.height), (640, 360));
            assert_eq!(f.data.len(), 640 * 360 * 4);
            frames += 1;
        }
        let before = player_position(&mut s).await;
        let input = s.input();
        assert!(input.is_open());
        input.key("ArrowRight", true).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        input.key("ArrowRight", false).await.unwrap();
        // Frames already decoded before the key was seen are skipped by waiting a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while s.try_next_frame().is_some() {}
        let after = player_position(&mut s).await;
        assert!(
            after.0 - before.0 > 60.0,
            "player moved {:.1} px right",
            after.0 - before.0
        );
        let stats = s.stats();
        assert!(stats.fps > 20.0, "{stats:?}");
        assert!(stats.glass_to_glass_p50_ms.is_some(), "{stats:?}");
        assert!(stats.rtt_ms.is_some(), "{stats:?}");
        // Keep playing through one whole epoch.
        let epoch = indexer::daemon::now_ms() / EPOCH_MS + 1;
        while indexer::daemon::now_ms() < (epoch + 1) * EPOCH_MS {
            let _ = s.next_frame().await;
        }
        s.end().await;
        (node_id, epoch)
    });
    let indexer = Arc::clone(&j.indexer.indexer);
    assert!(
        pixelgrid_tests::eventually(Duration::from_secs(5), || indexer.payouts(epoch).is_ok()),
        "epoch {epoch} closes"
    );
    cheating.store(false, std::sync::atomic::Ordering::Relaxed);
    cheater.join().unwrap();
    let (_, payouts) = indexer.payouts(epoch).unwrap();
    let cheat_payout = payouts
        .iter()
        .find(|p| p.payout.node_id == cheat.node_id())
        .expect("the cheating node's reports were accepted");
    assert_eq!(
        cheat_payout.payout.delivered_ms, 0,
        "invented and self-attested sessions earn nothing: {:?}",
        cheat_payout.payout
    );
    for node in &nodes {
        let p = payouts
            .iter()
            .find(|p| &p.payout.node_id == node)
            .unwrap_or_else(|| panic!("node {node} is in the epoch"));
        assert!(p.payout.uptime_ms >= EPOCH_MS / 2, "{:?}", p.payout);
        if *node == serving {
            // Its player's receipts attest the play: about the whole epoch.
            assert!(p.payout.delivered_ms >= EPOCH_MS / 2, "{:?}", p.payout);
            assert_eq!(
                p.payout.studio_paid,
                PRICE * p.payout.delivered_ms / 60_000,
                "the studio paid the node's price for the attested play"
            );
        } else {
            assert_eq!(p.payout.delivered_ms, 0, "{:?}", p.payout);
            assert_eq!(p.payout.studio_paid, 0, "{:?}", p.payout);
        }
    }
    // What funded it: the test studio owes exactly what the serving node was paid; the
    // cheat's made-up studio owes nothing.
    let served = payouts
        .iter()
        .find(|p| p.payout.node_id == serving)
        .unwrap();
    assert_eq!(
        indexer.charges(epoch).unwrap(),
        vec![indexer::tally::StudioCharge {
            studio: pixelgrid_tests::TEST_STUDIO.into(),
            delivered_ms: served.payout.delivered_ms,
            amount: served.payout.studio_paid,
        }]
    );
}

/// A node behind a slow link (+80 ms each way on its probe) is passed over for the other.
#[test]
fn placement_picks_the_node_without_the_slow_link() {
    let mut j = Journey::start();
    j.grid
        .add_node_with_probe_delay(3, 2, Some(Duration::from_millis(80)));
    j.grid.add_node(4, 2);
    let fast = j.grid.nodes[1].1.node_id().to_owned();
    let url = j.orchestrator_url();
    let api_key = j.grid.api_key.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = Client::connect(&url)
            .await
            .unwrap()
            .with_api_key(&api_key, "journey-player");
        for _ in 0..3 {
            let mut s = client.launch("arena", options(640, 360, 30)).await.unwrap();
            match s.next_event().await {
                Some(Event::Connected {
                    node_id, rtt_ms, ..
                }) => {
                    assert_eq!(node_id, fast, "placed on the fast node");
                    assert!(rtt_ms < 80, "{rtt_ms} ms");
                }
                e => panic!("unexpected {e:?}"),
            }
            s.end().await;
        }
    });
}

/// Killing the serving node: the SDK re-launches on the other node by itself and frames resume
/// within 5 s; the dead node's session is failed and its slot freed.
#[test]
fn killing_the_serving_node_moves_the_session_to_the_other_node() {
    let mut j = Journey::start();
    j.grid.add_node(5, 1);
    j.grid.add_node(6, 1);
    let url = j.orchestrator_url();
    let api_key = j.grid.api_key.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut s = rt.block_on(async {
        let client = Client::connect(&url)
            .await
            .unwrap()
            .with_api_key(&api_key, "journey-player");
        client.launch("arena", options(640, 360, 30)).await.unwrap()
    });
    let (first_node, first_session) = (s.node_id(), s.session_id());
    rt.block_on(async {
        for _ in 0..30 {
            s.next_frame().await.unwrap();
        }
    });
    let killed = Instant::now();
    j.grid.kill_node(&first_node);
    let resumed = rt.block_on(async {
        // Drain what was decoded before the kill, then wait for a frame from the new node.
        loop {
            let f = tokio::time::timeout(Duration::from_secs(10), s.next_frame())
                .await
                .expect("frames resume")
                .unwrap();
            if s.node_id() != first_node && f.decoded_unix_ms > 0.0 {
                break killed.elapsed();
            }
        }
    });
    assert!(
        resumed < Duration::from_secs(5),
        "frames resumed after {resumed:?}"
    );
    let events: Vec<Event> = std::iter::from_fn(|| s.try_event()).collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::NodeLost { node_id, .. } if *node_id == first_node)),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Reconnected { node_id, .. } if *node_id != first_node)),
        "{events:?}"
    );
    // The dead node's session is failed (or ended by the SDK), the node is gone from the
    // registry with its slot, and only the new session is live.
    let grid = &j.grid;
    rt.block_on(async {
        let mut c = grid.client().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let old = c
                .get_session(pixelgrid_tests::bearer(
                    pb::GetSessionRequest {
                        session_id: first_session.clone(),
                    },
                    &grid.operator,
                ))
                .await
                .unwrap()
                .into_inner();
            let nodes = c
                .list_nodes(pb::ListNodesRequest::default())
                .await
                .unwrap()
                .into_inner()
                .nodes;
            let live = c
                .list_sessions(pixelgrid_tests::bearer(
                    pb::ListSessionsRequest {
                        node_id_hex: String::new(),
                        state: pb::SessionState::Active as i32,
                    },
                    &grid.operator,
                ))
                .await
                .unwrap()
                .into_inner()
                .sessions;
            let done = old.state == pb::SessionState::Failed as i32
                || old.state == pb::SessionState::Ended as i32;
            let gone = !nodes
                .iter()
                .any(|n| n.node_id.as_ref().is_some_and(|i| i.hex == first_node));
            if done && gone && live.len() == 1 && live[0].session_id == s.session_id() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "old session {old:?}, nodes {nodes:?}, live {live:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        s.end().await;
    });
}

/// The SDK takes a node for lost after 500 ms of silence (nodes say they are alive every 100 ms);
/// that must not fire on healthy nodes working hard: five sessions on this 2-core machine, each
/// rendering, encoding and decoding, for 15 s, and not one is taken for lost.
#[test]
fn healthy_nodes_under_load_are_never_taken_for_lost() {
    let mut j = Journey::start();
    j.grid.add_node(7, 3);
    j.grid.add_node(8, 3);
    let url = j.orchestrator_url();
    let api_key = j.grid.api_key.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let frames_and_events = rt.block_on(async {
        let client = Client::connect(&url)
            .await
            .unwrap()
            .with_api_key(&api_key, "journey-player");
        let mut sessions = Vec::new();
        for _ in 0..5 {
            sessions.push(client.launch("arena", options(640, 360, 30)).await.unwrap());
        }
        let players = sessions.into_iter().map(|mut s| {
            tokio::spawn(async move {
                let until = Instant::now() + Duration::from_secs(15);
                let mut frames = 0u32;
                while Instant::now() < until {
                    if tokio::time::timeout(Duration::from_secs(5), s.next_frame())
                        .await
                        .is_ok_and(|f| f.is_some())
                    {
                        frames += 1;
                    }
                }
                let events: Vec<Event> = std::iter::from_fn(|| s.try_event()).collect();
                s.end().await;
                (frames, events)
            })
        });
        let mut out = Vec::new();
        for p in players {
            out.push(p.await.unwrap());
        }
        out
    });
    for (frames, events) in frames_and_events {
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Event::NodeLost { .. } | Event::Reconnected { .. })),
            "a healthy node was taken for lost: {events:?}"
        );
        assert!(frames > 100, "{frames} frames in 15 s: {events:?}");
    }
}

/// A render challenge through the real pipeline: the player asks the node to draw a nonce, and
/// reads it back from the pictures it decodes (H.264 through WebRTC) — what a checker does to
/// prove a node renders this stream live. A second nonce replaces the first.
#[test]
fn a_nonce_the_player_sends_is_drawn_into_the_live_picture_and_read_back() {
    let grid = TestGrid::start(Arc::new(orchestrator::store::EmbeddedStore::new()), 1, 2);
    let url = format!("http://{}", grid.orchestrator);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = Client::connect(&url)
            .await
            .unwrap()
            .with_api_key(&grid.api_key, "checker");
        let mut s = client.launch("arena", options(640, 360, 30)).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), s.next_frame())
            .await
            .expect("frames")
            .unwrap();
        assert_eq!(
            pixelgrid_proto::challenge::read(&first.data, first.width, first.height),
            None,
            "no nonce before it is asked for"
        );
        for nonce in [123_456_789u32, 40_302_017] {
            let asked = Instant::now();
            s.input().challenge(nonce).await.unwrap();
            let seen = loop {
                assert!(
                    asked.elapsed() < Duration::from_secs(5),
                    "nonce {nonce} never appeared in the picture"
                );
                let f = tokio::time::timeout(Duration::from_secs(5), s.next_frame())
                    .await
                    .expect("frames")
                    .unwrap();
                if pixelgrid_proto::challenge::read(&f.data, f.width, f.height) == Some(nonce) {
                    break asked.elapsed();
                }
            };
            eprintln!(
                "nonce {nonce} seen {} ms after it was sent",
                seen.as_millis()
            );
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        s.end().await;
    });
}
