//! Studios as tenants, against a running grid (real gRPC, the JSON gateway, real edge nodes on
//! loopback): every abuse gets its precise status and changes nothing — the other player keeps
//! playing, slots and sessions stay as they were; limits hold per studio; grants and session
//! tokens start one launch, once; a revoked key stops at once; the token key rotates under live
//! sessions without losing one.

use orchestrator::store::EmbeddedStore;
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_proto::orchestrator::v1::orchestrator_client::OrchestratorClient;
use pixelgrid_proto::types::v1 as types;
use pixelgrid_tests::viewer::{self, Viewer};
use pixelgrid_tests::{TEST_STUDIO, TestGrid, bearer};
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

type Orchestrator = OrchestratorClient<Channel>;

fn launch_request(game: &str, width: u32, height: u32) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        game: game.into(),
        constraints: Some(pb::LaunchConstraints {
            mode: Some(types::VideoMode {
                width_px: width,
                height_px: height,
                fps: 30,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn grant(c: &mut Orchestrator, api_key: &str) -> String {
    c.create_launch_grant(bearer(
        pb::CreateLaunchGrantRequest {
            player_id: "p".into(),
            ..Default::default()
        },
        api_key,
    ))
    .await
    .expect("a grant")
    .into_inner()
    .grant
}

/// Both launch steps with `grant` (a round trip of 1 ms to every candidate).
async fn launch_with(
    c: &mut Orchestrator,
    grant: &str,
    req: pb::CreateSessionRequest,
) -> Result<pb::ChooseNodeResponse, tonic::Status> {
    let launch = c.create_session(bearer(req, grant)).await?.into_inner();
    let latencies = launch
        .candidates
        .iter()
        .map(|cd| pb::LatencySample {
            node_id: cd.node_id.clone(),
            rtt_ms: 1,
        })
        .collect();
    Ok(c.choose_node(bearer(
        pb::ChooseNodeRequest {
            launch_id: launch.launch_id,
            latencies,
            player_key: Vec::new(),
        },
        grant,
    ))
    .await?
    .into_inner())
}

async fn launch(c: &mut Orchestrator, api_key: &str) -> pb::ChooseNodeResponse {
    let g = grant(c, api_key).await;
    launch_with(c, &g, launch_request("arena", 320, 240))
        .await
        .expect("placed")
}

/// A WHEP player of a placed session, receiving.
async fn watch(chosen: &pb::ChooseNodeResponse) -> Viewer {
    let url = chosen.whep_url.strip_prefix("http://").unwrap();
    let (host, path) = url.split_once('/').unwrap();
    let v = viewer::connect(
        host.parse().unwrap(),
        &format!("/{path}"),
        &chosen.session_token,
        MIME_TYPE_H264,
    )
    .await
    .expect("WHEP with the session token");
    assert!(v.wait_for_packets(20, Duration::from_secs(10)).await);
    v
}

async fn still_playing(v: &Viewer) {
    let now = v.packets.load(Ordering::Relaxed);
    assert!(
        v.wait_for_packets(now + 20, Duration::from_secs(5)).await,
        "the player's stream stopped"
    );
}

/// Serves `grid` (another replica over the same store) on a free loopback port; a client of it.
async fn serve_replica(grid: Arc<orchestrator::grid::Grid>) -> Orchestrator {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(orchestrator::serve(l, grid, std::future::pending()));
    OrchestratorClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// Waits (up to 5 s) for the node to report the session's player connected.
async fn wait_active(c: &mut Orchestrator, sid: &str, credential: &str) {
    for _ in 0..50 {
        let state = c
            .get_session(bearer(
                pb::GetSessionRequest {
                    session_id: sid.to_owned(),
                },
                credential,
            ))
            .await
            .unwrap()
            .into_inner()
            .state;
        if state == pb::SessionState::Active as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create_studio(
    c: &mut Orchestrator,
    operator: &str,
    req: pb::CreateStudioRequest,
) -> String {
    c.create_studio(bearer(req, operator))
        .await
        .expect("studio")
        .into_inner()
        .api_key
}

fn session_of(chosen: &pb::ChooseNodeResponse) -> String {
    chosen.session.as_ref().unwrap().session_id.clone()
}

async fn free_slots(c: &mut Orchestrator) -> u32 {
    c.list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .nodes
        .iter()
        .map(|n| n.free_slots)
        .sum()
}

async fn wait_nodes(c: &mut Orchestrator, n: usize) {
    for _ in 0..100 {
        let listed = c
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .nodes
            .len();
        if listed >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{n} nodes did not register");
}

#[test]
fn strangers_and_other_studios_are_refused_and_change_nothing() {
    let grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 1, 3);
    let g = &grid;
    grid.runtime.block_on(async {
        let mut c = g.client().await;
        wait_nodes(&mut c, 1).await;
        let rival = create_studio(
            &mut c,
            &g.operator,
            pb::CreateStudioRequest {
                studio_id: "rival".into(),
                ..Default::default()
            },
        )
        .await;
        let chosen = launch(&mut c, &g.api_key).await;
        let sid = session_of(&chosen);
        let player = watch(&chosen).await;
        let free_before = free_slots(&mut c).await;
        let node_id = chosen.session.as_ref().unwrap().node_id.clone();

        // No credential.
        let anonymous: Vec<(&str, tonic::Status)> = vec![
            (
                "ListSessions",
                c.list_sessions(pb::ListSessionsRequest::default())
                    .await
                    .unwrap_err(),
            ),
            (
                "GetSession",
                c.get_session(pb::GetSessionRequest {
                    session_id: sid.clone(),
                })
                .await
                .unwrap_err(),
            ),
            (
                "EndSession",
                c.end_session(pb::EndSessionRequest {
                    session_id: sid.clone(),
                    reason: "griefing".into(),
                })
                .await
                .unwrap_err(),
            ),
            (
                "DrainNode",
                c.drain_node(pb::DrainNodeRequest {
                    node_id: node_id.clone(),
                    deadline_ms: 0,
                })
                .await
                .unwrap_err(),
            ),
            (
                "CreateSession",
                c.create_session(launch_request("arena", 320, 240))
                    .await
                    .unwrap_err(),
            ),
            (
                "CreateStudio",
                c.create_studio(pb::CreateStudioRequest {
                    studio_id: "mine".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            ),
            (
                "CreateLaunchGrant",
                c.create_launch_grant(pb::CreateLaunchGrantRequest {
                    player_id: "p".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            ),
        ];
        for (call, e) in anonymous {
            assert_eq!(e.code(), Code::Unauthenticated, "{call}: {e:?}");
            assert!(e.message().contains("Bearer"), "{call}: {}", e.message());
        }

        // Forged and malformed credentials are refused, never taken as anonymous.
        for bad in [
            "pgk_test-studio_00000000_00000000000000000000000000000000",
            "pgo_0000000000000000000000000000000000000000000000000000000000000000",
            "v4.public.AAAA",
            "hello",
        ] {
            let e = c
                .list_nodes(bearer(pb::ListNodesRequest::default(), bad))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::Unauthenticated, "{bad}: {e:?}");
        }

        // Another studio: sees none of it, may not end it, drain, or administer.
        let listed = c
            .list_sessions(bearer(pb::ListSessionsRequest::default(), &rival))
            .await
            .unwrap()
            .into_inner()
            .sessions;
        assert!(listed.is_empty(), "{listed:?}");
        let own = c
            .list_sessions(bearer(pb::ListSessionsRequest::default(), &g.api_key))
            .await
            .unwrap()
            .into_inner()
            .sessions;
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].studio_id, TEST_STUDIO);
        for e in [
            c.end_session(bearer(
                pb::EndSessionRequest {
                    session_id: sid.clone(),
                    reason: String::new(),
                },
                &rival,
            ))
            .await
            .unwrap_err(),
            c.get_session(bearer(
                pb::GetSessionRequest {
                    session_id: sid.clone(),
                },
                &rival,
            ))
            .await
            .unwrap_err(),
            c.drain_node(bearer(
                pb::DrainNodeRequest {
                    node_id: node_id.clone(),
                    deadline_ms: 0,
                },
                &rival,
            ))
            .await
            .unwrap_err(),
            c.list_studios(bearer(pb::ListStudiosRequest {}, &rival))
                .await
                .unwrap_err(),
            // An API key is not a launch grant.
            c.create_session(bearer(launch_request("arena", 320, 240), &rival))
                .await
                .unwrap_err(),
        ] {
            assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        }
        // A player's session token reaches its own session only.
        let other = launch(&mut c, &rival).await;
        let e = c
            .end_session(bearer(
                pb::EndSessionRequest {
                    session_id: sid.clone(),
                    reason: String::new(),
                },
                &other.session_token,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        // The public node view hides addresses and telemetry; the operator sees them.
        let public = c
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .nodes;
        assert!(public.iter().all(|n| n.whep_base_url.is_empty()));
        let full = c
            .list_nodes(bearer(pb::ListNodesRequest::default(), &g.operator))
            .await
            .unwrap()
            .into_inner()
            .nodes;
        assert!(full.iter().all(|n| n.whep_base_url.starts_with("http://")));

        // The same through the JSON gateway, and the node lists no session ids.
        let gw = g.gateway;
        let del = format!("/api/sessions/{sid}");
        let rival_auth = format!("Bearer {rival}");
        for (headers, want) in [
            (vec![], 401),
            (vec![("authorization", rival_auth.as_str())], 403),
            (vec![("authorization", "Bearer junk")], 401),
        ] {
            let (status, _, body) = viewer::http(gw, "DELETE", &del, &headers, b"")
                .await
                .unwrap();
            assert_eq!(status, want, "{body}");
        }
        let (status, _, _) = viewer::http(
            gw,
            "POST",
            "/api/sessions",
            &[("content-type", "application/json")],
            br#"{"game":"arena"}"#,
        )
        .await
        .unwrap();
        assert_eq!(status, 401);
        let huge = vec![b' '; 64 * 1024];
        let (status, _, _) = viewer::http(
            gw,
            "POST",
            "/api/sessions",
            &[("content-type", "application/json")],
            &huge,
        )
        .await
        .unwrap();
        assert_eq!(status, 413, "bodies over the limit are refused");
        let node_addr = g.nodes[0].0;
        let (status, _, body) = viewer::http(node_addr, "GET", "/sessions", &[], b"")
            .await
            .unwrap();
        assert_eq!(status, 404, "a production node lists no sessions: {body}");

        // Nothing changed: the player plays on, its slot is still held, the session active.
        still_playing(&player).await;
        assert_eq!(
            free_slots(&mut c).await,
            free_before - 1,
            "only the rival's launch took a slot"
        );
        let s = c
            .get_session(bearer(
                pb::GetSessionRequest {
                    session_id: sid.clone(),
                },
                &chosen.session_token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.state, pb::SessionState::Active as i32, "{s:?}");
        let metrics = g.grid.metrics_text();
        assert!(
            metrics.contains("pixelgrid_orchestrator_refusals_total{reason=\"unauthenticated\"}"),
            "{metrics}"
        );
    });
}

#[test]
fn a_grant_launches_once_and_an_ended_sessions_token_starts_nothing() {
    let grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 1, 2);
    let g = &grid;
    grid.runtime.block_on(async {
        let mut c = g.client().await;
        wait_nodes(&mut c, 1).await;
        let first = grant(&mut c, &g.api_key).await;
        let chosen = launch_with(&mut c, &first, launch_request("arena", 320, 240))
            .await
            .unwrap();
        let e = c
            .create_session(bearer(launch_request("arena", 320, 240), &first))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().contains("already used"), "{}", e.message());
        // Concurrent ChooseNode calls completing one launch place one session, not several.
        let racing = grant(&mut c, &g.api_key).await;
        let launch = c
            .create_session(bearer(launch_request("arena", 320, 240), &racing))
            .await
            .unwrap()
            .into_inner();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let (mut c, racing, launch) = (c.clone(), racing.clone(), launch.clone());
            calls.spawn(async move {
                let latencies = launch
                    .candidates
                    .iter()
                    .map(|cd| pb::LatencySample {
                        node_id: cd.node_id.clone(),
                        rtt_ms: 1,
                    })
                    .collect();
                c.choose_node(bearer(
                    pb::ChooseNodeRequest {
                        launch_id: launch.launch_id,
                        latencies,
                        player_key: Vec::new(),
                    },
                    &racing,
                ))
                .await
            });
        }
        let mut placed = Vec::new();
        while let Some(r) = calls.join_next().await {
            if let Ok(chosen) = r.unwrap() {
                placed.push(chosen.into_inner());
            }
        }
        assert_eq!(placed.len(), 1, "one launch, one session");
        c.end_session(bearer(
            pb::EndSessionRequest {
                session_id: session_of(&placed[0]),
                reason: String::new(),
            },
            &g.operator,
        ))
        .await
        .unwrap();
        // A launch belongs to the grant that started it.
        let second = grant(&mut c, &g.api_key).await;
        let launch = c
            .create_session(bearer(launch_request("arena", 320, 240), &second))
            .await
            .unwrap()
            .into_inner();
        let third = grant(&mut c, &g.api_key).await;
        let e = c
            .choose_node(bearer(
                pb::ChooseNodeRequest {
                    launch_id: launch.launch_id,
                    latencies: vec![],
                    player_key: Vec::new(),
                },
                &third,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        // A grant for one game launches no other.
        let arena_only = c
            .create_launch_grant(bearer(
                pb::CreateLaunchGrantRequest {
                    player_id: "p".into(),
                    game: "arena".into(),
                    ttl_s: 30,
                },
                &g.api_key,
            ))
            .await
            .unwrap()
            .into_inner()
            .grant;
        let e = c
            .create_session(bearer(launch_request("supertux", 320, 240), &arena_only))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

        // The player plays, ends the session, and its token no longer starts anything.
        let player = watch(&chosen).await;
        let sid = session_of(&chosen);
        c.end_session(bearer(
            pb::EndSessionRequest {
                session_id: sid.clone(),
                reason: "done".into(),
            },
            &chosen.session_token,
        ))
        .await
        .unwrap();
        let node = Arc::clone(&g.nodes[0].1);
        for _ in 0..50 {
            if node.session_ids().await.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(node.session_ids().await.is_empty(), "the node ended it");
        drop(player);
        let url = chosen.whep_url.strip_prefix("http://").unwrap();
        let (host, path) = url.split_once('/').unwrap();
        let again = viewer::connect(
            host.parse().unwrap(),
            &format!("/{path}"),
            &chosen.session_token,
            MIME_TYPE_H264,
        )
        .await;
        let e = again.err().expect("the ended session's token is refused");
        assert!(e.to_string().contains("403"), "{e}");
        assert!(node.session_ids().await.is_empty(), "nothing restarted");
    });
}

#[test]
fn a_studio_is_held_to_its_limits_while_another_launches() {
    let grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 1, 4);
    let g = &grid;
    grid.runtime.block_on(async {
        let mut c = g.client().await;
        wait_nodes(&mut c, 1).await;
        let small = create_studio(
            &mut c,
            &g.operator,
            pb::CreateStudioRequest {
                studio_id: "small".into(),
                games: vec!["arena".into()],
                limits: Some(pb::StudioLimits {
                    max_concurrent_sessions: 1,
                    max_minutes_per_day: 0,
                    max_mode: Some(types::VideoMode {
                        width_px: 640,
                        height_px: 360,
                        fps: 30,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await;
        let held = launch(&mut c, &small).await;
        // Over the concurrent limit: refused, naming it; nothing reserved.
        let free = free_slots(&mut c).await;
        let g2 = grant(&mut c, &small).await;
        let e = launch_with(&mut c, &g2, launch_request("arena", 320, 240))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("1 concurrent"), "{}", e.message());
        assert_eq!(free_slots(&mut c).await, free);
        // Meanwhile another studio launches.
        launch(&mut c, &g.api_key).await;
        // Above its highest mode, or a game it may not launch.
        let g3 = grant(&mut c, &small).await;
        let e = launch_with(&mut c, &g3, launch_request("arena", 1280, 720))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("640x360@30"), "{}", e.message());
        let e = launch_with(&mut c, &g3, launch_request("supertux", 320, 240))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        // Its session ended, its seat is free again.
        c.end_session(bearer(
            pb::EndSessionRequest {
                session_id: session_of(&held),
                reason: String::new(),
            },
            &small,
        ))
        .await
        .unwrap();
        launch_with(&mut c, &g3, launch_request("arena", 320, 240))
            .await
            .expect("a seat after one ended");
    });
}

/// A studio caps what it pays per minute: its players are never placed on a node asking more
/// (the node's price is what the studio is charged for attested play), while a studio without
/// a cap is placed there.
#[test]
fn a_studio_is_never_placed_on_a_node_above_its_price_ceiling() {
    let mut grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 0, 4);
    grid.node_price = 500;
    grid.add_node(0, 4);
    let g = &grid;
    grid.runtime.block_on(async {
        let mut c = g.client().await;
        wait_nodes(&mut c, 1).await;
        let thrifty = create_studio(
            &mut c,
            &g.operator,
            pb::CreateStudioRequest {
                studio_id: "thrifty".into(),
                limits: Some(pb::StudioLimits {
                    max_micro_credits_per_minute: 100,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await;
        let free = free_slots(&mut c).await;
        let g1 = grant(&mut c, &thrifty).await;
        let e = launch_with(&mut c, &g1, launch_request("arena", 320, 240))
            .await
            .unwrap_err();
        assert!(e.message().contains("price"), "{e:?}");
        // A player asking for a higher limit than its studio's gets the studio's.
        let g2 = grant(&mut c, &thrifty).await;
        let mut generous = launch_request("arena", 320, 240);
        generous
            .constraints
            .as_mut()
            .unwrap()
            .max_micro_credits_per_minute = 1_000;
        let e = launch_with(&mut c, &g2, generous).await.unwrap_err();
        assert!(e.message().contains("price"), "{e:?}");
        assert_eq!(free_slots(&mut c).await, free, "nothing reserved");
        // The test studio has no ceiling: placed there at the node's price.
        launch(&mut c, &g.api_key).await;
    });
}

#[test]
fn a_revoked_key_stops_at_once_and_usage_is_metered_per_studio() {
    let grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 1, 2);
    let g = &grid;
    grid.runtime.block_on(async {
        let mut c = g.client().await;
        wait_nodes(&mut c, 1).await;
        let old = create_studio(
            &mut c,
            &g.operator,
            pb::CreateStudioRequest {
                studio_id: "acme".into(),
                ..Default::default()
            },
        )
        .await;
        let added = c
            .add_studio_key(bearer(
                pb::AddStudioKeyRequest {
                    studio_id: "acme".into(),
                },
                &g.operator,
            ))
            .await
            .unwrap()
            .into_inner();
        // Play a little, then end: one usage record with the time played.
        let chosen = launch(&mut c, &old).await;
        let player = watch(&chosen).await;
        let sid = session_of(&chosen);
        wait_active(&mut c, &sid, &old).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.end_session(bearer(
            pb::EndSessionRequest {
                session_id: sid.clone(),
                reason: String::new(),
            },
            &old,
        ))
        .await
        .unwrap();
        drop(player);

        // Rotate: revoke the first key; it fails at once, the second works.
        let first_id = old.split('_').nth(2).unwrap().to_owned();
        c.revoke_studio_key(bearer(
            pb::RevokeStudioKeyRequest {
                studio_id: "acme".into(),
                key_id: first_id,
            },
            &g.operator,
        ))
        .await
        .unwrap();
        let e = c
            .create_launch_grant(bearer(
                pb::CreateLaunchGrantRequest {
                    player_id: "p".into(),
                    ..Default::default()
                },
                &old,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        // One answer for every refused key (nobody learns which studios or key ids exist).
        assert!(e.message().contains("API key refused"), "{}", e.message());
        let usage = c
            .list_usage(bearer(pb::ListUsageRequest::default(), &added.api_key))
            .await
            .unwrap()
            .into_inner()
            .records;
        assert_eq!(usage.len(), 1, "{usage:?}");
        assert_eq!(usage[0].session_id, sid);
        assert!(usage[0].played_ms >= 1000, "{usage:?}");
        assert_eq!(usage[0].mode.unwrap().width_px, 320);
        // Another studio reads only its own; the operator names the studio.
        let e = c
            .list_usage(bearer(
                pb::ListUsageRequest {
                    studio_id: "acme".into(),
                    ..Default::default()
                },
                &g.api_key,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let by_operator = c
            .list_usage(bearer(
                pb::ListUsageRequest {
                    studio_id: "acme".into(),
                    from_unix_ms: usage[0].ended_unix_ms,
                    to_unix_ms: usage[0].ended_unix_ms + 1,
                },
                &g.operator,
            ))
            .await
            .unwrap()
            .into_inner()
            .records;
        assert_eq!(by_operator, usage);
    });
}

/// The orchestrator's signing key changes under live sessions: nodes pinned to old and new
/// keep every session, a replica with the new key accepts the old key's grants and tokens, and
/// no session is lost.
#[test]
fn the_token_key_rotates_under_live_sessions_and_loses_none() {
    use orchestrator::grid::{Grid, GridConfig};
    use pixelgrid_proto::token::TokenSigner;
    let mut grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 0, 4);
    let new_key = TokenSigner::from_seed(&[42; 32]);
    let old_public = TokenSigner::from_seed(&pixelgrid_tests::GRID_TOKEN_SEED).public_key_hex();
    // Step 1: nodes trust both keys.
    grid.trusted_token_keys.push(new_key.public_key_hex());
    grid.add_node(1, 4);
    let g = &grid;
    grid.runtime.block_on(async {
        let mut old_replica = g.client().await;
        wait_nodes(&mut old_replica, 1).await;
        let before = launch(&mut old_replica, &g.api_key).await;
        let player = watch(&before).await;
        let old_grant = grant(&mut old_replica, &g.api_key).await;

        // Step 2: a replica signing with the new key, still accepting the old one.
        let rotated = Arc::new(
            Grid::new(
                Arc::clone(g.grid.store()),
                new_key.clone(),
                Default::default(),
                GridConfig::default(),
            )
            .with_operator(&g.operator)
            .with_previous_keys(&[old_public])
            .unwrap(),
        );
        let mut new_replica = serve_replica(rotated).await;

        // New sessions get new-key tokens, which the node takes.
        let after = launch(&mut new_replica, &g.api_key).await;
        assert!(after.session_token.contains('.'));
        let second = watch(&after).await;
        // A grant minted before the rotation still launches.
        launch_with(
            &mut new_replica,
            &old_grant,
            launch_request("arena", 320, 240),
        )
        .await
        .expect("an old-key grant on the new replica");
        // The first player never noticed, and its old-key token still ends its own session.
        still_playing(&player).await;
        still_playing(&second).await;
        new_replica
            .end_session(bearer(
                pb::EndSessionRequest {
                    session_id: session_of(&before),
                    reason: "done".into(),
                },
                &before.session_token,
            ))
            .await
            .expect("an old-key session token on the new replica");
        let live = new_replica
            .list_sessions(bearer(
                pb::ListSessionsRequest {
                    node_id_hex: String::new(),
                    state: pb::SessionState::Failed as i32,
                },
                &g.operator,
            ))
            .await
            .unwrap()
            .into_inner()
            .sessions;
        assert!(live.is_empty(), "no session failed: {live:?}");
    });
}

/// Every place untrusted bytes arrive has a bound with its own precise answer, and hitting one
/// changes nothing for the player already playing.
#[test]
fn oversized_and_overflowing_requests_get_precise_refusals() {
    use pixelgrid_proto::identity::{NodeKey, SignedRequest};
    let grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 1, 2);
    let g = &grid;
    grid.runtime.block_on(async {
        let mut c = g.client().await;
        wait_nodes(&mut c, 1).await;
        let chosen = launch(&mut c, &g.api_key).await;
        let player = watch(&chosen).await;

        // gRPC: a message over the decoding limit is refused before any handler runs.
        let huge = "x".repeat(orchestrator::MAX_MESSAGE_BYTES + 1);
        let e = c
            .create_session(launch_request(&huge, 320, 240))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
        // A registration with an oversized field, properly signed: INVALID_ARGUMENT naming it.
        let key = NodeKey::from_seed(&[55; 32]);
        let mut reg = pixelgrid_tests::signed_registration(&key, 2);
        reg.region = Some(types::Region {
            code: "r".repeat(100),
        });
        reg.signature = None;
        let e = c.register_node(reg.sign_with(&key)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("region.code"), "{}", e.message());

        // The node: trickle-ICE fragments bounded in size and in candidates.
        let node = g.nodes[0].0;
        let resource = player.whep.resource.clone();
        let auth = format!("Bearer {}", chosen.session_token);
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/trickle-ice-sdpfrag"),
        ];
        let big = vec![b'a'; 20 * 1024];
        let (status, _, _) = viewer::http(node, "PATCH", &resource, &headers, &big)
            .await
            .unwrap();
        assert_eq!(status, 413);
        let many: String = (0..33)
            .map(|i| {
                format!(
                    "a=candidate:{i} 1 udp 1 127.0.0.1 {} typ host\r\n",
                    40000 + i
                )
            })
            .collect();
        let (status, _, body) = viewer::http(node, "PATCH", &resource, &headers, many.as_bytes())
            .await
            .unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("at most 32"), "{body}");

        // The gateway: one address gets a burst of launch-path calls, then 429.
        let mut statuses = Vec::new();
        for _ in 0..orchestrator::grid::ADDRESS_BURST + 5 {
            let (status, _, _) = viewer::http(g.gateway, "POST", "/api/demo-grant", &[], b"")
                .await
                .unwrap();
            statuses.push(status);
        }
        assert!(
            statuses[..orchestrator::grid::ADDRESS_BURST as usize]
                .iter()
                .all(|s| *s == 200),
            "{statuses:?}"
        );
        assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
        let (_, _, metrics) = viewer::http(node, "GET", "/metrics", &[], b"")
            .await
            .unwrap();
        assert!(
            metrics.contains("pixelgrid_edge_requests_refused_total{reason=\"too_large\"} 1"),
            "{metrics}"
        );
        still_playing(&player).await;
    });
}

/// An operator's drain holds through the node's re-registration; only the operator lifts it.
#[test]
fn a_drained_node_stays_drained_when_it_registers_again_until_undrained() {
    use pixelgrid_proto::identity::NodeKey;
    let grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 0, 1);
    let g = &grid;
    grid.runtime.block_on(async {
        let mut c = g.client().await;
        let key = NodeKey::from_seed(&[66; 32]);
        c.register_node(pixelgrid_tests::signed_registration(&key, 2))
            .await
            .unwrap();
        let id = Some(types::NodeId { hex: key.node_id() });
        c.drain_node(bearer(
            pb::DrainNodeRequest {
                node_id: id.clone(),
                deadline_ms: 0,
            },
            &g.operator,
        ))
        .await
        .unwrap();
        let state = |c: &mut Orchestrator| {
            let mut c = c.clone();
            async move {
                c.list_nodes(pb::ListNodesRequest::default())
                    .await
                    .unwrap()
                    .into_inner()
                    .nodes[0]
                    .state
            }
        };
        c.register_node(pixelgrid_tests::signed_registration(&key, 2))
            .await
            .unwrap();
        assert_eq!(state(&mut c).await, pb::NodeState::Draining as i32);
        c.undrain_node(bearer(pb::UndrainNodeRequest { node_id: id }, &g.operator))
            .await
            .unwrap();
        assert_eq!(state(&mut c).await, pb::NodeState::Ready as i32);
    });
}

/// A studio cannot hoard slots by launching and never playing: past its allowance of
/// reservations waiting for players, launches are refused until players connect.
#[test]
fn reservations_nobody_plays_are_capped_per_studio() {
    use orchestrator::grid::{Grid, GridConfig};
    let grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 1, 4);
    let g = &grid;
    grid.runtime.block_on(async {
        let mut c = g.client().await;
        wait_nodes(&mut c, 1).await;
        // A replica of the same grid allowing two waiting reservations per studio.
        let strict = Arc::new(
            Grid::new(
                Arc::clone(g.grid.store()),
                pixelgrid_proto::token::TokenSigner::from_seed(&pixelgrid_tests::GRID_TOKEN_SEED),
                Default::default(),
                GridConfig {
                    max_pending_per_studio: 2,
                    ..GridConfig::default()
                },
            )
            .with_operator(&g.operator),
        );
        let mut s = serve_replica(strict).await;
        let first = launch(&mut s, &g.api_key).await;
        launch(&mut s, &g.api_key).await;
        let g3 = grant(&mut s, &g.api_key).await;
        let e = launch_with(&mut s, &g3, launch_request("arena", 320, 240))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(
            e.message().contains("waiting for their players"),
            "{}",
            e.message()
        );
        // A player connects: its reservation stops waiting, and a launch fits again.
        let player = watch(&first).await;
        let sid = session_of(&first);
        wait_active(&mut s, &sid, &g.operator).await;
        launch_with(&mut s, &g3, launch_request("arena", 320, 240))
            .await
            .expect("room once a player connected");
        drop(player);
    });
}

/// Players get TURN credentials for their own session only, expiring, never the shared secret.
#[test]
fn each_session_gets_its_own_expiring_turn_credential() {
    use orchestrator::grid::{Grid, GridConfig};
    let grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 1, 4);
    let g = &grid;
    grid.runtime.block_on(async {
        let mut c = g.client().await;
        wait_nodes(&mut c, 1).await;
        let with_turn = Arc::new(
            Grid::new(
                Arc::clone(g.grid.store()),
                pixelgrid_proto::token::TokenSigner::from_seed(&pixelgrid_tests::GRID_TOKEN_SEED),
                Default::default(),
                GridConfig::default(),
            )
            .with_turn(orchestrator::turn::TurnConfig {
                urls: vec!["turn:127.0.0.1:3478".into()],
                secret: b"shared-with-coturn".to_vec(),
                ttl_s: 600,
            }),
        );
        let mut t = serve_replica(with_turn).await;
        let now_s = orchestrator::grid::now_ms() / 1000;
        let (a, b) = (
            launch(&mut t, &g.api_key).await,
            launch(&mut t, &g.api_key).await,
        );
        let mut seen = Vec::new();
        for chosen in [&a, &b] {
            let [turn] = chosen.ice_servers.as_slice() else {
                panic!("one TURN entry: {:?}", chosen.ice_servers);
            };
            assert_eq!(turn.urls, ["turn:127.0.0.1:3478"]);
            let (expiry, session) = turn.username.split_once(':').unwrap();
            assert_eq!(session, session_of(chosen));
            let expiry: u64 = expiry.parse().unwrap();
            assert!((now_s + 590..=now_s + 610).contains(&expiry), "{expiry}");
            let expected = orchestrator::turn::credential(b"shared-with-coturn", session, expiry).1;
            assert_eq!(turn.credential, expected);
            assert!(!turn.credential.contains("shared-with-coturn"));
            seen.push(turn.credential.clone());
        }
        assert_ne!(seen[0], seen[1], "credentials are per session");
        // A grid without TURN hands out none.
        assert!(launch(&mut c, &g.api_key).await.ice_servers.is_empty());
    });
}
