//! Streaming to players: WHEP, tokens, input and teardown against real webrtc-rs, GStreamer,
//! lavapipe and (inside a network namespace of the test's own) headless Chromium.

use orchestrator::store::EmbeddedStore;
use pixelgrid_tests::viewer;
use pixelgrid_tests::{
    self as support, TestGrid, TestNode, chromium_result, eventually, http,
    in_own_network_namespace,
};
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_VP8};
use std::time::Duration;

fn page(node: &TestNode, scenario: &str, mode: &str) -> String {
    format!(
        "http://{}/?autotest={scenario}&mode={mode}&seconds=2",
        node.addr
    )
}

#[test]
fn chromium_plays_the_stream_at_the_requested_size() {
    if !in_own_network_namespace("chromium_plays_the_stream_at_the_requested_size") {
        return;
    }
    let node = TestNode::start();
    let r = chromium_result(&page(&node, "play", "1280x720@30"), Duration::from_secs(40));
    eprintln!("result: {r}");
    assert!(r["framesDecoded"].as_u64().unwrap_or(0) >= 60, "{r}");
    assert_eq!(r["frameWidth"], 1280, "{r}");
    assert_eq!(r["frameHeight"], 720, "{r}");
    assert_eq!(r["codec"], "video/H264", "{r}");
    // The game's sound reaches the browser too (Opus on the same stream).
    assert!(r["audioPackets"].as_u64().unwrap_or(0) >= 50, "{r}");
    assert!(
        r["ttffMs"].as_f64().is_some(),
        "first frame time measured: {r}"
    );
}

#[test]
fn a_key_pressed_in_the_page_moves_the_player_in_the_video() {
    if !in_own_network_namespace("a_key_pressed_in_the_page_moves_the_player_in_the_video") {
        return;
    }
    let node = TestNode::start();
    let r = chromium_result(&page(&node, "input", "640x360@30"), Duration::from_secs(40));
    eprintln!("result: {r}");
    let (bx, by) = (
        r["before"]["x"].as_f64().expect("player seen before"),
        r["before"]["y"].as_f64().unwrap(),
    );
    let (ax, ay) = (
        r["after"]["x"].as_f64().expect("player seen after"),
        r["after"]["y"].as_f64().unwrap(),
    );
    // 0.7 s of ArrowRight at half an arena width per second ≈ 200 px at 640x360.
    assert!(ax - bx > 60.0, "player moved {:.1} px right: {r}", ax - bx);
    assert!((ay - by).abs() < 10.0, "player moved vertically: {r}");
    assert!(
        r["node"]["input_accepted"].as_u64().unwrap_or(0) >= 2,
        "{r}"
    );
}

#[test]
fn bogus_requests_and_garbled_input_do_not_disturb_a_playing_session() {
    if !in_own_network_namespace(
        "bogus_requests_and_garbled_input_do_not_disturb_a_playing_session",
    ) {
        return;
    }
    let node = TestNode::start();
    let addr = node.addr;
    let url = page(&node, "abuse", "640x360@30");
    let browser = std::thread::spawn(move || chromium_result(&url, Duration::from_secs(40)));
    assert!(
        eventually(Duration::from_secs(20), || node.live_sessions() == 1),
        "the page never started a session"
    );
    let sid = node.runtime.block_on(node.node.sessions())[0]
        .session_id
        .clone();
    let forged = node.token(&sid, "someone-else", 60);
    let bogus: Vec<_> = (0..20)
        .map(|i| {
            let (path, forged) = (format!("/whep/{sid}"), forged.clone());
            std::thread::spawn(move || {
                let (status, _, _) = match i % 4 {
                    0 => http(
                        addr,
                        "POST",
                        &path,
                        &[
                            ("Content-Type", "application/sdp"),
                            ("Authorization", "Bearer nonsense"),
                        ],
                        b"v=0",
                    ),
                    1 => http(
                        addr,
                        "POST",
                        &path,
                        &[("Content-Type", "application/sdp")],
                        b"v=0\r\n",
                    ),
                    2 => http(
                        addr,
                        "POST",
                        &path,
                        &[
                            ("Content-Type", "application/sdp"),
                            ("Authorization", &format!("Bearer {forged}")),
                        ],
                        b"v=0",
                    ),
                    _ => http(
                        addr,
                        "POST",
                        &path,
                        &[("Content-Type", "text/plain")],
                        &[0xff; 2000],
                    ),
                };
                status
            })
        })
        .collect();
    for b in bogus {
        let status = b.join().unwrap();
        assert!((400..500).contains(&status), "bogus request got {status}");
    }
    let r = browser.join().unwrap();
    eprintln!("result: {r}");
    let (before, after) = (
        r["before"].as_u64().unwrap(),
        r["framesDecoded"].as_u64().unwrap(),
    );
    assert!(
        after >= before + 30,
        "the stream stalled: {before} → {after} frames"
    );
    assert!(
        r["node"]["input_dropped"].as_u64().unwrap_or(0) >= 5,
        "garbled messages not counted: {r}"
    );
    assert_eq!(
        node.live_sessions(),
        1,
        "the playing session must be untouched"
    );
}

#[test]
fn bad_whep_requests_get_precise_statuses_and_start_nothing() {
    let node = TestNode::start();
    let a = node.addr;
    let dev = node.dev_session(320, 240, 30);
    let sid = dev.session_id.clone();
    let good = format!("Bearer {}", dev.token);
    let sdp = [("Content-Type", "application/sdp")];
    fn with(auth: &str) -> [(&str, &str); 2] {
        [("Content-Type", "application/sdp"), ("Authorization", auth)]
    }
    let path = format!("/whep/{sid}");
    let expired = format!("Bearer {}", node.token(&sid, support::NODE_ID, -5));
    let other_node = format!("Bearer {}", node.token(&sid, "another-node", 60));
    let other_session = format!(
        "Bearer {}",
        node.token("another-session", support::NODE_ID, 60)
    );
    let foreign_key = format!(
        "Bearer {}",
        pixelgrid_proto::token::TokenSigner::from_seed(&[1; 32]).sign(
            &pixelgrid_proto::token::SessionClaims {
                sid: sid.clone(),
                nid: support::NODE_ID.into(),
                game: "arena".into(),
                width: 320,
                height: 240,
                fps: 30,
                iat: "2026-01-01T00:00:00Z".into(),
                exp: "2099-01-01T00:00:00Z".into(),
                aud: support::NODE_ID.into(),
                nbf: String::new(),
                pk: String::new(),
                ..Default::default()
            }
        )
    );
    let cases: Vec<(&str, u16, support::HttpReply)> = vec![
        (
            "malformed SDP",
            400,
            http(a, "POST", &path, &with(&good), b"hello"),
        ),
        (
            "SDP without video",
            400,
            http(
                a,
                "POST",
                &path,
                &with(&good),
                b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n",
            ),
        ),
        (
            "wrong content type",
            415,
            http(
                a,
                "POST",
                &path,
                &[("Content-Type", "text/plain"), ("Authorization", &good)],
                b"v=0",
            ),
        ),
        ("missing token", 401, http(a, "POST", &path, &sdp, b"v=0")),
        (
            "garbage token",
            401,
            http(a, "POST", &path, &with("Bearer v4.public.AAAA"), b"v=0"),
        ),
        (
            "token signed by another key",
            401,
            http(a, "POST", &path, &with(&foreign_key), b"v=0"),
        ),
        (
            "expired token",
            401,
            http(a, "POST", &path, &with(&expired), b"v=0"),
        ),
        (
            "token for another node",
            403,
            http(a, "POST", &path, &with(&other_node), b"v=0"),
        ),
        (
            "token for another session",
            403,
            http(a, "POST", &path, &with(&other_session), b"v=0"),
        ),
        (
            "unknown viewer",
            404,
            http(
                a,
                "DELETE",
                &format!("{path}/nobody"),
                &[("Authorization", &good)],
                b"",
            ),
        ),
        (
            "unknown viewer trickle",
            404,
            http(
                a,
                "PATCH",
                &format!("{path}/nobody"),
                &[
                    ("Content-Type", "application/trickle-ice-sdpfrag"),
                    ("Authorization", &good),
                ],
                b"a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n",
            ),
        ),
        (
            "dev session with odd width",
            400,
            http(a, "POST", "/dev/sessions", &[], br#"{"width":641}"#),
        ),
        (
            "dev session for an unknown game",
            404,
            http(a, "POST", "/dev/sessions", &[], br#"{"game":"tetris"}"#),
        ),
    ];
    for (what, want, (status, _, body)) in cases {
        assert_eq!(status, want, "{what}: {body}");
        assert!(!body.trim().is_empty(), "{what}: the refusal must say why");
    }
    assert_eq!(
        node.live_sessions(),
        0,
        "no refused request may start a session"
    );
}

#[test]
fn a_webrtc_viewer_gets_h264_and_a_vp8_only_viewer_gets_vp8() {
    let node = TestNode::start();
    for (mime, want) in [(MIME_TYPE_H264, "video/H264"), (MIME_TYPE_VP8, "video/VP8")] {
        let dev = node.dev_session(320, 240, 30);
        node.runtime.block_on(async {
            let v = viewer::connect(node.addr, &dev.whep_url, &dev.token, mime)
                .await
                .unwrap();
            assert!(
                v.wait_for_packets(20, Duration::from_secs(10)).await,
                "{mime}: no RTP arrived"
            );
            assert_eq!(
                v.codec
                    .lock()
                    .unwrap()
                    .as_deref()
                    .map(str::to_ascii_lowercase),
                Some(want.to_ascii_lowercase())
            );
            assert_eq!(v.leave(node.addr).await.unwrap(), 200);
        });
    }
    assert!(
        eventually(Duration::from_secs(5), || node.live_sessions() == 0),
        "sessions must end with their last viewer"
    );
}

#[test]
fn a_session_ends_when_its_token_expires() {
    let node = TestNode::start_with(Duration::from_secs(2));
    let dev = node.dev_session(320, 240, 30);
    // The viewer stays connected throughout: only the token's expiry can end the session.
    let v = node.runtime.block_on(async {
        let v = viewer::connect(node.addr, &dev.whep_url, &dev.token, MIME_TYPE_H264)
            .await
            .unwrap();
        assert!(v.wait_for_packets(10, Duration::from_secs(10)).await);
        v
    });
    assert_eq!(node.live_sessions(), 1);
    assert!(
        eventually(Duration::from_secs(6), || node.live_sessions() == 0),
        "an expired session must be torn down"
    );
    let seen = v.packets.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        v.packets.load(std::sync::atomic::Ordering::Relaxed),
        seen,
        "media must stop with the session"
    );
}

#[test]
fn fifty_sessions_open_and_close_without_leaking_threads_files_or_memory() {
    let node = TestNode::start();
    let run = |n: usize| {
        for _ in 0..n {
            let dev = node.dev_session(320, 240, 30);
            node.runtime.block_on(async {
                let v = viewer::connect(node.addr, &dev.whep_url, &dev.token, MIME_TYPE_H264)
                    .await
                    .unwrap();
                assert!(
                    v.wait_for_packets(5, Duration::from_secs(10)).await,
                    "no RTP arrived"
                );
                assert_eq!(v.leave(node.addr).await.unwrap(), 200);
            });
        }
        assert!(eventually(Duration::from_secs(10), || node.live_sessions() == 0));
        // Every viewer's connection is freed with it, not only closed (a connection kept alive
        // by its own event handler once held ≈ 800 kB of packets per session for good).
        let freed = || {
            node.node
                .peer_connections
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        assert!(
            eventually(Duration::from_secs(10), || freed() == 0),
            "{} peer connections outlived their sessions",
            freed()
        );
    };
    let settle = || std::thread::sleep(Duration::from_millis(1500));
    run(3); // warm up: first-use allocations, thread pools, shader caches
    settle();
    let (threads, fds, rss_kb) = (
        support::proc_status("Threads"),
        support::open_fds(),
        support::proc_status("VmRSS"),
    );
    run(50);
    settle();
    let (threads2, fds2, rss2_kb) = (
        support::proc_status("Threads"),
        support::open_fds(),
        support::proc_status("VmRSS"),
    );
    eprintln!("threads {threads} → {threads2}, fds {fds} → {fds2}, rss {rss_kb} kB → {rss2_kb} kB");
    assert!(
        threads2 <= threads + 2,
        "threads grew from {threads} to {threads2}"
    );
    assert!(
        fds2 <= fds + 2,
        "file descriptors grew from {fds} to {fds2}"
    );
    assert!(
        rss2_kb <= rss_kb + 32 * 1024,
        "memory grew from {rss_kb} kB to {rss2_kb} kB"
    );
}

#[test]
fn chromium_plays_through_the_orchestrators_player_page() {
    if !in_own_network_namespace("chromium_plays_through_the_orchestrators_player_page") {
        return;
    }
    let grid = TestGrid::start(std::sync::Arc::new(EmbeddedStore::new()), 2, 2);
    let url = format!("http://{}/?autotest=play&mode=640x360@30", grid.gateway);
    let r = chromium_result(&url, Duration::from_secs(40));
    eprintln!("result: {r}");
    assert!(r["framesDecoded"].as_u64().unwrap_or(0) >= 60, "{r}");
    assert_eq!(r["frameWidth"], 640, "{r}");
    // The orchestrator placed it and the node reported the player: the session is active.
    let active = grid
        .runtime
        .block_on(
            grid.grid
                .sessions("", Some(orchestrator::lifecycle::SessionState::Active)),
        )
        .unwrap();
    assert_eq!(active.len(), 1, "one active session in the registry");
    // The page signed delivery receipts (WebCrypto Ed25519, the key registered with the
    // launch) and the serving node kept them for its reports.
    assert!(r["receiptsSent"].as_u64().unwrap_or(0) >= 3, "{r}");
    let kept: u64 = grid
        .nodes
        .iter()
        .map(|(_, n)| n.receipts.kept.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert!(kept >= 2, "the node kept {kept} of the browser's receipts");
}

/// The browser SDK moves the session by itself when its node dies: the test kills the serving
/// node while Chromium plays through the orchestrator's page; the page re-launches on the other
/// node and frames resume.
#[test]
fn chromium_moves_to_the_other_node_when_its_node_dies() {
    if !in_own_network_namespace("chromium_moves_to_the_other_node_when_its_node_dies") {
        return;
    }
    let mut grid = TestGrid::start(std::sync::Arc::new(EmbeddedStore::new()), 2, 2);
    let url = format!(
        "http://{}/?autotest=reconnect&mode=640x360@30",
        grid.gateway
    );
    let browser = std::thread::spawn(move || chromium_result(&url, Duration::from_secs(60)));
    let serving = grid.runtime.block_on(async {
        for _ in 0..300 {
            let active = grid
                .grid
                .sessions("", Some(orchestrator::lifecycle::SessionState::Active))
                .await
                .unwrap();
            if let Some(s) = active.first() {
                return s.node.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the page never started playing");
    });
    std::thread::sleep(Duration::from_secs(2));
    grid.kill_node(&serving);
    let r = browser.join().unwrap();
    eprintln!("result: {r}");
    assert_eq!(r["firstNode"], serving.as_str(), "{r}");
    assert_eq!(r["moved"], true, "{r}");
    assert_ne!(r["node"], serving.as_str(), "{r}");
    assert_eq!(r["after"], true, "frames resume on the new node: {r}");
    let events = r["events"].as_array().unwrap();
    let reconnected = events
        .iter()
        .find(|e| e["type"] == "reconnected")
        .expect("a reconnected event");
    assert!(
        reconnected["afterMs"].as_f64().unwrap() < 5000.0,
        "{reconnected}"
    );
    assert!(events.iter().any(|e| e["type"] == "node_lost"), "{r}");
}

/// A game that crashes after about a second: the node drops its session, lets the player go
/// and hands it to the reporter once, marked for a refund.
#[test]
fn a_session_whose_game_crashes_is_dropped_and_reported_once_for_a_refund() {
    struct Crashy(u32);
    impl edge_node::game::Game for Crashy {
        fn advance(&mut self, _dt: Duration, _input: &edge_node::input::InputState) {
            self.0 += 1;
            assert!(self.0 < 30, "the test game crashes, as games do");
        }
        fn record(&self, _frame: &edge_node::game::FrameInfo, out: &mut edge_node::game::DrawList) {
            out.reset([0.1, 0.1, 0.1, 1.0]);
        }
    }
    let mut games = edge_node::game::Catalogue::default();
    games.add("crashy", || Box::new(Crashy(0)));
    let node = TestNode::start_hosting(games, Duration::from_secs(600));
    let dev = node
        .node
        .dev_session(
            "crashy",
            edge_node::video::VideoMode::new(320, 180, 30).unwrap(),
        )
        .unwrap();
    node.runtime.block_on(async {
        let v = viewer::connect(node.addr, &dev.whep_url, &dev.token, MIME_TYPE_H264)
            .await
            .unwrap();
        assert!(v.wait_for_packets(5, Duration::from_secs(10)).await);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !node.node.session_ids().await.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the crashed session is still listed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert_eq!(node.node.take_dropped(), vec![dev.session_id.clone()]);
    assert!(node.node.take_dropped().is_empty(), "reported once");
}

/// An offer whose player never connects (no candidate ever arrives: the player went away after
/// POSTing) is dropped after the node's connect deadline: the session ends and its slot is free,
/// instead of a task waiting for ever.
#[test]
fn an_abandoned_offer_is_dropped_after_the_connect_deadline() {
    let node = TestNode::start_with_connect_deadline(Duration::from_millis(1_500));
    let s = node.dev_session(320, 240, 30);
    // A complete offer without a single candidate, as a player that trickles them (and then
    // never does) sends it.
    let offer = "v=0\r\n\
        o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        t=0 0\r\n\
        a=group:BUNDLE 0 1\r\n\
        a=ice-options:trickle\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 102\r\n\
        c=IN IP4 0.0.0.0\r\n\
        a=rtcp:9 IN IP4 0.0.0.0\r\n\
        a=ice-ufrag:abcd\r\n\
        a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
        a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
        a=setup:actpass\r\n\
        a=mid:0\r\n\
        a=recvonly\r\n\
        a=rtcp-mux\r\n\
        a=rtpmap:102 H264/90000\r\n\
        a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
        c=IN IP4 0.0.0.0\r\n\
        a=ice-ufrag:abcd\r\n\
        a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
        a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
        a=setup:actpass\r\n\
        a=mid:1\r\n\
        a=sctp-port:5000\r\n";
    let auth = format!("Bearer {}", s.token);
    let r = http(
        node.addr,
        "POST",
        &s.whep_url,
        &[
            ("Content-Type", "application/sdp"),
            ("Authorization", &auth),
        ],
        offer.as_bytes(),
    );
    assert_eq!(r.0, 201, "the node answers the offer: {r:?}");
    let sessions = || node.runtime.block_on(node.node.sessions()).len();
    assert_eq!(sessions(), 1, "the session started for its viewer");
    assert!(
        eventually(Duration::from_secs(10), || sessions() == 0),
        "the abandoned viewer and its session are still there"
    );
    // Its token starts nothing again: a launch that was abandoned is over.
    let again = http(
        node.addr,
        "POST",
        &s.whep_url,
        &[
            ("Content-Type", "application/sdp"),
            ("Authorization", &auth),
        ],
        offer.as_bytes(),
    );
    assert_eq!(again.0, 403, "{again:?}");
}
