//! Real networks: a player who may use only TURN relays plays through coturn, and the stream
//! follows a link whose capacity drops and comes back. The media crosses a user-space impairment
//! relay placed in front of coturn (this kernel has no netem).

use orchestrator::store::EmbeddedStore;
use pixelgrid_client::{LaunchOptions, Session, Stats};
use pixelgrid_tests::TestGrid;
use pixelgrid_tests::impair::{Direction, LinkConfig, UdpRelay};
use pixelgrid_tests::turn::Coturn;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A grid whose players get TURN credentials for `coturn`, reached through an impairment relay
/// whose downlink behaves as `down`; one node.
fn grid_behind_relay(
    rt: &tokio::runtime::Runtime,
    coturn: &Coturn,
    down: LinkConfig,
) -> (TestGrid, Arc<UdpRelay>) {
    let relay = Arc::new(
        rt.block_on(UdpRelay::start(coturn.addr, down, LinkConfig::default(), 7))
            .expect("a relay"),
    );
    let turn = coturn.turn_config(relay.addr);
    let mut grid =
        TestGrid::start_configured(Arc::new(EmbeddedStore::new()), 0, 2, |g| g.with_turn(turn));
    grid.add_node(5, 2);
    (grid, relay)
}

fn relay_only(width: u32, height: u32, fps: u32) -> LaunchOptions {
    LaunchOptions {
        width,
        height,
        fps,
        relay_only: true,
        audio: false,
        reconnect: false,
        node_lost_after: Duration::from_secs(5),
        ..LaunchOptions::default()
    }
}

/// Decodes frames for `wait` at most, until `done` holds for the stats; returns the last stats
/// and the frames decoded meanwhile.
async fn play_until(
    s: &mut Session,
    wait: Duration,
    done: impl Fn(&Stats) -> bool,
) -> (Stats, u64) {
    let started = Instant::now();
    let mut frames = 0;
    loop {
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), s.next_frame()).await
        {
            frames += 1;
        }
        while s.try_next_frame().is_some() {
            frames += 1;
        }
        let stats = s.stats();
        if done(&stats) || started.elapsed() > wait {
            return (stats, frames);
        }
    }
}

#[test]
fn a_player_allowed_only_relays_plays_through_coturn_and_sees_the_link_estimate() {
    let coturn = Coturn::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (grid, relay) = grid_behind_relay(&rt, &coturn, LinkConfig::default());
    rt.block_on(async {
        let client = grid.player().await;
        let mut s = client
            .launch("arena", relay_only(640, 360, 30))
            .await
            .expect("a relay-only player connects through TURN");
        let (stats, frames) = play_until(&mut s, Duration::from_secs(15), |st| {
            st.frames_decoded >= 60 && st.link_estimate_kbps.is_some()
        })
        .await;
        assert!(
            frames >= 60,
            "frames decoded through the relay: {frames}; relay {:?}; coturn said:\n{}",
            relay.stats(),
            coturn.log()
        );
        let estimate = stats
            .link_estimate_kbps
            .expect("the node's link estimate reaches the player's stats");
        assert!(estimate > 100, "{stats:?}");
        // Every byte of media crossed the relay in front of coturn: the player had no other path.
        let (down, up) = relay.stats();
        assert!(
            down.delivered_bytes > 100_000 && up.delivered > 10,
            "down {down:?} up {up:?}"
        );
        s.end().await;
    });
}

#[test]
fn the_stream_follows_a_link_that_drops_under_its_bitrate_and_comes_back() {
    let coturn = Coturn::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // 640x360@30 wants ≈ 690 kbit/s; the link carries 400.
    let cap = 400_000;
    let capped = LinkConfig {
        queue_bytes: 25_000,
        ..LinkConfig::default().capped(cap)
    };
    let (grid, relay) = grid_behind_relay(&rt, &coturn, capped);
    rt.block_on(async {
        let client = grid.player().await;
        let mut s = client
            .launch("arena", relay_only(640, 360, 30))
            .await
            .expect("connects");
        let (low, frames) = play_until(&mut s, Duration::from_secs(20), |st| {
            st.target_kbps.is_some_and(|t| t * 1000 < cap)
                && st.link_estimate_kbps.is_some_and(|e| e * 1000 < cap)
        })
        .await;
        assert!(
            low.target_kbps.is_some_and(|t| t * 1000 < cap),
            "the encoder came under the link's {cap} bit/s: {low:?}"
        );
        assert!(frames > 0, "frames kept coming while it adapted");
        // Under the cap the stream keeps up: nearly every frame the node encodes (at the
        // ladder's frame rate, which may be half the mode's) gets through.
        let before = relay.stats();
        let (under, frames) = play_until(&mut s, Duration::from_secs(5), |_| false).await;
        let encoded_fps = under.node_fps.unwrap_or(30);
        assert!(
            frames * 10 >= encoded_fps * 5 * 8,
            "{frames} frames in 5 s on the capped link; relay before {before:?} after {:?}; {under:?}",
            relay.stats()
        );

        // The link recovers: the bitrate climbs back toward the mode's full rate.
        relay.set(Direction::Down, LinkConfig::default());
        let (high, frames) = play_until(&mut s, Duration::from_secs(40), |st| {
            st.target_kbps.is_some_and(|t| t >= 600)
        })
        .await;
        assert!(
            high.target_kbps.is_some_and(|t| t >= 600),
            "the bitrate came back up: {high:?}"
        );
        assert!(frames > 0, "frames kept coming as it recovered");
        s.end().await;
    });
}

#[test]
fn a_player_whose_network_blocks_udp_plays_over_ice_tcp() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 0, 2);
    grid.add_node(5, 2);
    rt.block_on(async {
        let client = grid.player().await;
        // The player opens no UDP socket at all: every packet of its session, media included,
        // crosses the TCP connection to the node's passive ICE-TCP candidate.
        let mut s = client
            .launch(
                "arena",
                LaunchOptions {
                    tcp_only: true,
                    relay_only: false,
                    ..relay_only(640, 360, 30)
                },
            )
            .await
            .expect("a TCP-only player connects");
        let (stats, frames) = play_until(&mut s, Duration::from_secs(15), |st| {
            st.frames_decoded >= 60
        })
        .await;
        assert!(frames >= 60, "frames over ICE-TCP: {frames}; {stats:?}");
        s.end().await;
    });
}

/// Chromium as the player, restricted to relay candidates (`iceTransportPolicy: "relay"`), plays
/// through coturn with the per-session credential the orchestrator handed out.
#[test]
fn chromium_allowed_only_relays_plays_through_coturn() {
    if !pixelgrid_tests::in_own_network_namespace(
        "chromium_allowed_only_relays_plays_through_coturn",
    ) {
        return;
    }
    let coturn = Coturn::start();
    let turn = coturn.turn_config(coturn.addr);
    let grid =
        TestGrid::start_configured(Arc::new(EmbeddedStore::new()), 1, 2, |g| g.with_turn(turn));
    let url = format!(
        "http://{}/?autotest=play&mode=640x360@30&relay=1",
        grid.gateway
    );
    let r = pixelgrid_tests::chromium_result(&url, Duration::from_secs(40));
    eprintln!("result: {r}");
    assert!(r["framesDecoded"].as_u64().unwrap_or(0) >= 60, "{r}");
    assert_eq!(
        r["localCandidateType"], "relay",
        "the browser's media went through the TURN relay: {r}"
    );
}
