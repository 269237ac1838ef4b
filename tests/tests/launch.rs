//! The two-step launch through the orchestrator to a registered edge node, session lifecycle,
//! node loss, and the orchestrator's error statuses — real gRPC, real edge nodes, on loopback.

use orchestrator::store::{EmbeddedStore, EtcdStore, Store};
use pixelgrid_proto::identity::{NodeKey, SignedRequest};
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_proto::types::v1 as types;
use pixelgrid_tests::viewer;
use pixelgrid_tests::{Etcd, TestGrid, bearer};
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn launch_request(game: &str) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        game: game.into(),
        player_region: Some(types::Region {
            code: "local".into(),
        }),
        constraints: Some(pb::LaunchConstraints {
            mode: Some(types::VideoMode {
                width_px: 320,
                height_px: 240,
                fps: 30,
            }),
            ..Default::default()
        }),
        max_candidates: 0,
        game_version: String::new(),
    }
}

/// The whole journey on one store: launch, stream, player connects, end, slot freed.
fn player_journey(store: Arc<dyn Store>) {
    let grid = TestGrid::start(store, 2, 2);
    let g = &grid;
    grid.runtime.block_on(async {
        let mut c = g.client().await;
        assert!(
            tokio::time::timeout(Duration::from_secs(10), async {
                while c
                    .list_nodes(pb::ListNodesRequest::default())
                    .await
                    .unwrap()
                    .into_inner()
                    .nodes
                    .len()
                    < 2
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await
            .is_ok(),
            "both nodes registered"
        );
        let grant = g.grant().await;
        let launch = c
            .create_session(bearer(launch_request("arena"), &grant))
            .await
            .expect("candidates")
            .into_inner();
        assert_eq!(launch.candidates.len(), 2);
        // Measure each candidate's probe like a client does.
        let mut latencies = Vec::new();
        for cand in &launch.candidates {
            let addr: std::net::SocketAddr = cand.probe_address.parse().unwrap();
            let t = Instant::now();
            let (status, _, _) = viewer::http(addr, "GET", "/probe", &[], b"").await.unwrap();
            assert_eq!(status, 204);
            latencies.push(pb::LatencySample {
                node_id: cand.node_id.clone(),
                rtt_ms: t.elapsed().as_millis() as u32,
            });
        }
        let chosen = c
            .choose_node(bearer(
                pb::ChooseNodeRequest {
                    launch_id: launch.launch_id.clone(),
                    latencies,
                    player_key: Vec::new(),
                },
                &grant,
            ))
            .await
            .expect("placed")
            .into_inner();
        let session = chosen.session.clone().unwrap();
        assert_eq!(session.state, pb::SessionState::Pending as i32);
        let node_id = session.node_id.clone().unwrap().hex;
        let url = chosen.whep_url.strip_prefix("http://").unwrap();
        let (host, path) = url.split_once('/').unwrap();
        let v = viewer::connect(
            host.parse().unwrap(),
            &format!("/{path}"),
            &chosen.session_token,
            MIME_TYPE_H264,
        )
        .await
        .expect("WHEP with the orchestrator's token");
        assert!(
            v.wait_for_packets(20, Duration::from_secs(10)).await,
            "the stream flows"
        );

        // The node reports the player connected: pending → active.
        let sid = session.session_id.clone();
        let active = wait_for_state(
            &mut c,
            &g.operator,
            &sid,
            pb::SessionState::Active,
            Duration::from_secs(5),
        )
        .await;
        assert!(
            active.is_some(),
            "the session must become active once the player connected"
        );

        // The launch id was used up.
        let again = c
            .choose_node(bearer(
                pb::ChooseNodeRequest {
                    launch_id: launch.launch_id,
                    latencies: vec![],
                    player_key: Vec::new(),
                },
                &grant,
            ))
            .await;
        assert_eq!(again.unwrap_err().code(), tonic::Code::NotFound);

        // The player ends it through the orchestrator (its session token is its credential):
        // the slot is freed and the node tears the session down.
        let ended = c
            .end_session(bearer(
                pb::EndSessionRequest {
                    session_id: sid.clone(),
                    reason: "player quit".into(),
                },
                &chosen.session_token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ended.session.unwrap().state, pb::SessionState::Ended as i32);
        let node = g
            .nodes
            .iter()
            .find(|(_, n)| n.node_id() == node_id)
            .map(|(_, n)| Arc::clone(n))
            .unwrap();
        let torn_down = tokio::time::timeout(Duration::from_secs(5), async {
            while !node.session_ids().await.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            torn_down.is_ok(),
            "the node must end a session the orchestrator ended"
        );
        let nodes = c
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .nodes;
        assert!(
            nodes.iter().all(|n| n.free_slots == 2),
            "every slot is free again: {nodes:?}"
        );
        drop(v);
    });
}

#[test]
fn a_player_launches_through_the_orchestrator_and_plays_embedded_store() {
    player_journey(Arc::new(EmbeddedStore::new()));
}

#[test]
fn a_player_launches_through_the_orchestrator_and_plays_etcd_store() {
    let etcd = Etcd::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(EtcdStore::connect(std::slice::from_ref(&etcd.endpoint)))
        .unwrap();
    player_journey(Arc::new(store));
    drop(rt);
}

/// A node that registers and then goes silent: gone, and its session failed, within TTL + 1 s.
#[test]
fn a_node_that_stops_heartbeating_disappears_and_its_sessions_fail() {
    let grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 0, 1);
    let g = &grid;
    grid.runtime.block_on(async {
        let mut c = g.client().await;
        let key = NodeKey::from_seed(&[77; 32]);
        let register = pixelgrid_tests::signed_registration(&key, 4);
        let reply = c.register_node(register).await.unwrap().into_inner();
        let sid = place_on(g, &mut c, &key.node_id()).await;
        // No heartbeats from here on.
        let ttl = Duration::from_millis(u64::from(reply.lease_ttl_ms));
        let (s, failed_after) = wait_for_state(
            &mut c,
            &g.operator,
            &sid,
            pb::SessionState::Failed,
            ttl + Duration::from_secs(3),
        )
        .await
        .expect("the session must fail when its node is lost");
        assert!(s.end_reason.contains("node lost"), "{s:?}");
        assert!(
            failed_after <= ttl + Duration::from_secs(1),
            "failed after {failed_after:?}, TTL {ttl:?}"
        );
        assert!(
            c.list_nodes(pb::ListNodesRequest::default())
                .await
                .unwrap()
                .into_inner()
                .nodes
                .is_empty(),
            "the node is gone"
        );
    });
}

#[test]
fn bad_requests_get_precise_grpc_statuses() {
    let grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 1, 1);
    let g = &grid;
    grid.runtime.block_on(async {
        let mut c = g.client().await;
        assert!(
            eventually_async(|| async {
                c.clone()
                    .list_nodes(pb::ListNodesRequest::default())
                    .await
                    .unwrap()
                    .into_inner()
                    .nodes
                    .len()
                    == 1
            })
            .await
        );
        let grant = g.grant().await;
        let e = c
            .create_session(bearer(launch_request("tetris"), &grant))
            .await
            .unwrap_err();
        // A game no ready node has is not a capacity problem: it is answered as such.
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(
            e.message().contains("no ready node has game \"tetris\"")
                && e.message().contains("arena"),
            "{}",
            e.message()
        );
        let mut odd = launch_request("arena");
        odd.constraints
            .as_mut()
            .unwrap()
            .mode
            .as_mut()
            .unwrap()
            .width_px = 321;
        let e = c.create_session(bearer(odd, &grant)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("constraints.mode.width_px"),
            "{}",
            e.message()
        );
        let e = c
            .choose_node(bearer(
                pb::ChooseNodeRequest {
                    launch_id: "nope".into(),
                    latencies: vec![],
                    player_key: Vec::new(),
                },
                &grant,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        // A registration signed by another key than the one it names.
        let (real, impostor) = (NodeKey::from_seed(&[1; 32]), NodeKey::from_seed(&[2; 32]));
        let forged = pb::RegisterNodeRequest {
            node_id: Some(types::NodeId {
                hex: real.node_id(),
            }),
            ..Default::default()
        }
        .sign_with(&impostor);
        let e = c.register_node(forged).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        // One slot: the second launch is refused, naming the constraint.
        let mut sessions = 0;
        for _ in 0..2 {
            let grant = g.grant().await;
            let launch = c
                .create_session(bearer(launch_request("arena"), &grant))
                .await;
            let Ok(launch) = launch else { break };
            let launch = launch.into_inner();
            let latencies = launch
                .candidates
                .iter()
                .map(|cd| pb::LatencySample {
                    node_id: cd.node_id.clone(),
                    rtt_ms: 1,
                })
                .collect();
            match c
                .choose_node(bearer(
                    pb::ChooseNodeRequest {
                        launch_id: launch.launch_id,
                        latencies,
                        player_key: Vec::new(),
                    },
                    &grant,
                ))
                .await
            {
                Ok(_) => sessions += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(sessions, 1);
        let e = c
            .create_session(bearer(launch_request("arena"), &g.grant().await))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("no free slot"), "{}", e.message());
    });
}

async fn eventually_async<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[test]
fn a_node_that_deregisters_leaves_at_once_and_its_sessions_fail() {
    let grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 0, 1);
    let g = &grid;
    grid.runtime.block_on(async {
        let mut c = g.client().await;
        let key = NodeKey::from_seed(&[88; 32]);
        let register = pixelgrid_tests::signed_registration(&key, 2);
        c.register_node(register).await.unwrap();
        let sid = place_on(g, &mut c, &key.node_id()).await;

        let unsigned = pb::DeregisterNodeRequest {
            node_id: Some(types::NodeId { hex: key.node_id() }),
            sent_unix_ms: orchestrator::grid::now_ms(),
            signature: None,
        };
        assert_eq!(
            c.deregister_node(unsigned.clone())
                .await
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        let reply = c
            .deregister_node(unsigned.sign_with(&key))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.sessions_failed, 1);
        assert!(
            c.list_nodes(pb::ListNodesRequest::default())
                .await
                .unwrap()
                .into_inner()
                .nodes
                .is_empty()
        );
        let s = c
            .get_session(bearer(
                pb::GetSessionRequest { session_id: sid },
                &g.operator,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.state, pb::SessionState::Failed as i32);
        assert!(s.end_reason.contains("left the grid"), "{s:?}");
    });
}

/// Polls a session until it reaches `state`; returns it and how long that took.
/// Launches `arena` and places it on `node` (the only round trip measured); the session id.
async fn place_on(
    g: &TestGrid,
    c: &mut pb::orchestrator_client::OrchestratorClient<tonic::transport::Channel>,
    node: &str,
) -> String {
    let grant = g.grant().await;
    let launch = c
        .create_session(bearer(launch_request("arena"), &grant))
        .await
        .unwrap()
        .into_inner();
    c.choose_node(bearer(
        pb::ChooseNodeRequest {
            launch_id: launch.launch_id,
            latencies: vec![pb::LatencySample {
                node_id: Some(types::NodeId {
                    hex: node.to_owned(),
                }),
                rtt_ms: 3,
            }],
            player_key: Vec::new(),
        },
        &grant,
    ))
    .await
    .unwrap()
    .into_inner()
    .session
    .unwrap()
    .session_id
}

async fn wait_for_state(
    c: &mut pb::orchestrator_client::OrchestratorClient<tonic::transport::Channel>,
    credential: &str,
    sid: &str,
    state: pb::SessionState,
    timeout: Duration,
) -> Option<(pb::Session, Duration)> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let s = c
            .get_session(bearer(
                pb::GetSessionRequest {
                    session_id: sid.to_owned(),
                },
                credential,
            ))
            .await
            .ok()?
            .into_inner();
        if s.state == state as i32 {
            return Some((s, start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}
