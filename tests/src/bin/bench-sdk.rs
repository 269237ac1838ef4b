//! `bench-sdk`: what a player of the Rust SDK feels, on a local grid (orchestrator on the embedded
//! store, two edge nodes, loopback):
//! - time to first frame: the `launch` call → first decoded frame, over N launches;
//! - glass-to-glass at 1280x720@60: capture on the node → decoded by the SDK;
//! - reconnect: the serving node is killed → first frame decoded from the other node;
//! - sound: launch → first decoded audio, and the A/V offset at the player;
//! - packaged games (deploy/games): launch → first frame for SuperTux and vkcube beside arena;
//! - click-to-photon: a key press sent → the first decoded picture that shows it, for `arena`
//!   (the player square moves) and SuperTux (its menu selection moves).
//!
//! `cargo run --release -p pixelgrid-tests --bin bench-sdk`

#![allow(clippy::print_stdout)]

use clap::Parser;
use orchestrator::store::EmbeddedStore;
use pixelgrid_client::LaunchOptions;
use pixelgrid_tests::TestGrid;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// Launches timed for time to first frame.
    #[arg(long, default_value_t = 20)]
    launches: usize,
    /// Seconds of 1280x720@60 play for glass-to-glass.
    #[arg(long, default_value_t = 10)]
    play_s: u64,
    /// Ask for no sound (compares glass-to-glass with and without the audio track).
    #[arg(long)]
    no_audio: bool,
    /// Launches of each packaged game in deploy/games (0 to skip them).
    #[arg(long, default_value_t = 3)]
    packaged_launches: usize,
}

/// Click-to-photon: (p50, p95, the session's glass-to-glass p50, RTT), ms.
type Reaction = (f64, f64, f64, f64);
/// Launch → first frame per packaged game: (game, p50, p95), ms.
type Launches = Vec<(String, f64, f64)>;

/// One key press → the first decoded frame `changed` says shows it, ms (`None`: not within 3 s).
async fn click_to_photon(
    s: &mut pixelgrid_client::Session,
    key: &str,
    hold: Duration,
    changed: &dyn Fn(&pixelgrid_client::Frame, &pixelgrid_client::Frame) -> bool,
) -> Option<f64> {
    tokio::time::sleep(Duration::from_millis(400)).await;
    while s.try_next_frame().is_some() {}
    let before = s.next_frame().await?;
    let sent = pixelgrid_proto::clock::unix_ms_f64();
    s.input().key(key, true).await.ok()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut seen = None;
    while let Ok(Some(f)) = tokio::time::timeout_at(deadline, s.next_frame()).await {
        if changed(&before, &f) {
            seen = Some(f.decoded_unix_ms - sent);
            break;
        }
    }
    let held =
        Duration::from_secs_f64(((pixelgrid_proto::clock::unix_ms_f64() - sent) / 1e3).max(0.0));
    tokio::time::sleep(hold.saturating_sub(held)).await;
    s.input().key(key, false).await.ok()?;
    seen
}

/// Click-to-photon over `trials` presses alternating `keys`: (p50, p95, session's g2g p50, RTT).
async fn reactions(
    s: &mut pixelgrid_client::Session,
    keys: [&str; 2],
    hold: Duration,
    trials: usize,
    changed: &dyn Fn(&pixelgrid_client::Frame, &pixelgrid_client::Frame) -> bool,
) -> Reaction {
    let mut times = Vec::new();
    for i in 0..trials {
        if let Some(t) = click_to_photon(s, keys[i % 2], hold, changed).await {
            times.push(t);
        }
    }
    assert!(!times.is_empty(), "no key press ever showed");
    let stats = s.stats();
    (
        quantile(&mut times, 0.5),
        quantile(&mut times, 0.95),
        stats.glass_to_glass_p50_ms.unwrap_or(f64::NAN),
        stats.rtt_ms.unwrap_or(f64::NAN),
    )
}

/// Launch → first frame for each game in deploy/games on a third node hosting them, then
/// click-to-photon for SuperTux.
fn packaged_launches(
    grid: &mut TestGrid,
    rt: &tokio::runtime::Runtime,
    launches: usize,
) -> (Launches, Option<Reaction>) {
    use std::os::unix::fs::PermissionsExt;
    if launches == 0 {
        return (Vec::new(), None);
    }
    let games_dir = tempfile::tempdir().unwrap();
    let sessions = tempfile::tempdir().unwrap();
    for (d, mode) in [(games_dir.path(), 0o755), (sessions.path(), 0o711)] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let store = edge_node::runtime::store::GameStore::open(games_dir.path()).unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(repo.join("deploy/games"))
        .unwrap()
        .flatten()
    {
        let g = store.add(entry.path().to_str().unwrap(), None).unwrap();
        ids.push(g.manifest.id);
    }
    ids.sort();
    // Only this node has the packaged games: the launches land on it.
    grid.add_node_hosting(9, 2, &store, sessions.path());
    let client = rt.block_on(grid.player());
    let options = LaunchOptions {
        width: 1280,
        height: 720,
        fps: 30,
        ..LaunchOptions::default()
    };
    let mut out = Vec::new();
    for id in ids {
        let mut times = Vec::new();
        for _ in 0..launches {
            rt.block_on(async {
                let started = Instant::now();
                let mut s = client.launch(&id, options.clone()).await.unwrap();
                let first = tokio::time::timeout(Duration::from_secs(60), s.next_frame()).await;
                if !matches!(first, Ok(Some(_))) {
                    let mut events = Vec::new();
                    while let Some(e) = s.try_event() {
                        events.push(format!("{e:?}"));
                    }
                    panic!("{id}: no frame within 60 s; events: {events:?}");
                }
                times.push(started.elapsed().as_secs_f64() * 1000.0);
                s.end().await;
            });
        }
        out.push((id, quantile(&mut times, 0.5), quantile(&mut times, 0.95)));
    }
    // SuperTux reads its keys once per frame of its own: hold each press long enough.
    let tux = rt.block_on(async {
        let mut s = client.launch("supertux", options.clone()).await.ok()?;
        s.next_frame().await?;
        tokio::time::sleep(Duration::from_secs(8)).await;
        let menu_moved = |a: &pixelgrid_client::Frame, b: &pixelgrid_client::Frame| {
            pixelgrid_tests::region_diff(
                &a.data,
                &b.data,
                1280,
                pixelgrid_tests::SUPERTUX_MENU_720P,
            ) > 4.0
        };
        let r = reactions(
            &mut s,
            ["ArrowDown", "ArrowUp"],
            Duration::from_millis(150),
            10,
            &menu_moved,
        )
        .await;
        s.end().await;
        Some(r)
    });
    (out, tux)
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let mut grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 2, 4);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(grid.player());
    let hd = LaunchOptions {
        width: 1280,
        height: 720,
        fps: 60,
        audio: !args.no_audio,
        ..LaunchOptions::default()
    };

    // Packaged games first, on a third node of their own, before any node is killed.
    let (packaged, tux_c2p) = packaged_launches(&mut grid, &rt, args.packaged_launches);

    let mut ttff = Vec::new();
    let mut first_audio = Vec::new();
    for _ in 0..args.launches {
        rt.block_on(async {
            let started = Instant::now();
            let mut s = client.launch("arena", hd.clone()).await.unwrap();
            s.next_frame().await.unwrap();
            ttff.push(started.elapsed().as_secs_f64() * 1000.0);
            if s.next_audio().await.is_some() {
                first_audio.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            s.end().await;
        });
    }

    let (g2g_p50, g2g_p99, fps, node) = rt.block_on(async {
        let mut s = client.launch("arena", hd.clone()).await.unwrap();
        let end = Instant::now() + Duration::from_secs(args.play_s);
        let mut g2g = Vec::new();
        let mut audio = Vec::new();
        let mut frames = 0u64;
        let started = Instant::now();
        while Instant::now() < end {
            let f = s.next_frame().await.unwrap();
            frames += 1;
            if let Some(c) = f.capture_unix_ms {
                g2g.push(f.decoded_unix_ms - c);
            }
            while let Some(a) = s.try_next_audio() {
                if let Some(c) = a.capture_unix_ms {
                    audio.push(a.decoded_unix_ms - c);
                }
            }
        }
        let audio_p50 = if audio.is_empty() {
            f64::NAN
        } else {
            quantile(&mut audio, 0.5)
        };
        let fps = frames as f64 / started.elapsed().as_secs_f64();
        let square_moved = |a: &pixelgrid_client::Frame, b: &pixelgrid_client::Frame| {
            let at = |f: &pixelgrid_client::Frame| {
                pixelgrid_tests::player_centroid(&f.data, f.width as usize, 40)
            };
            matches!((at(a), at(b)), (Some(p), Some(q)) if (p.0 - q.0).abs() >= 2.0)
        };
        let arena_c2p = reactions(
            &mut s,
            ["ArrowRight", "ArrowLeft"],
            Duration::from_millis(100),
            20,
            &square_moved,
        )
        .await;
        let node = s.node_id();
        // Left playing for the reconnect measurement.
        let p50 = quantile(&mut g2g, 0.5);
        let p99 = quantile(&mut g2g, 0.99);
        (p50, p99, fps, (node, s, audio_p50, arena_c2p))
    });
    let (serving, mut s, audio_p50, arena_c2p) = node;
    let killed = Instant::now();
    grid.kill_node(&serving);
    let reconnect_ms = rt.block_on(async {
        loop {
            s.next_frame().await.unwrap();
            if s.node_id() != serving {
                break killed.elapsed().as_secs_f64() * 1000.0;
            }
        }
    });
    rt.block_on(s.end());

    let ttff_p50 = quantile(&mut ttff, 0.5);
    let (audio1_p50, audio1_p95) = if first_audio.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        (
            quantile(&mut first_audio, 0.5),
            quantile(&mut first_audio, 0.95),
        )
    };
    let av_offset = audio_p50 - g2g_p50;
    let ttff_p95 = quantile(&mut ttff, 0.95);
    println!("| figure | measured | goal |");
    println!("| --- | --- | --- |");
    println!(
        "| launch → first decoded frame, {} launches at 1280x720@60 | p50 {ttff_p50:.0} ms, p95 {ttff_p95:.0} ms | p95 ≤ 800 ms |",
        ttff.len()
    );
    println!(
        "| glass-to-glass at 1280x720@60, capture → decoded by the Rust SDK ({fps:.1} fps) | p50 {g2g_p50:.1} ms, p99 {g2g_p99:.1} ms | p50 ≤ 12 ms |"
    );
    println!(
        "| serving node killed → first frame from the other node | {reconnect_ms:.0} ms | ≤ 750 ms |"
    );
    println!(
        "| launch → first decoded sound (arena's soundtrack) | p50 {audio1_p50:.0} ms, p95 {audio1_p95:.0} ms | |"
    );
    println!(
        "| A/V offset at the player: sound made → decoded ({audio_p50:.1} ms) minus glass-to-glass | {av_offset:+.1} ms | \\|offset\\| ≤ 40 ms |"
    );
    for (game, p50, p95) in &packaged {
        println!(
            "| launch → first decoded frame, {game} at 1280x720@30 ({} launches) | p50 {p50:.0} ms, p95 {p95:.0} ms | |",
            args.packaged_launches
        );
    }
    let c2p_row = |what: &str, (p50, p95, g2g, rtt): Reaction, goal: &str| {
        // What is left after the picture's way back and the key's way there is the game's.
        let game = p50 - g2g - rtt / 2.0;
        println!(
            "| key press → picture showing it, {what} | p50 {p50:.1} ms, p95 {p95:.1} ms (of it the game ≈ {game:.1} ms: p50 − glass-to-glass {g2g:.1} − RTT/2 {:.1}) | {goal} |",
            rtt / 2.0
        );
    };
    c2p_row("`arena` 1280x720@60", arena_c2p, "p50 ≤ 25, p95 ≤ 35 ms");
    if let Some(t) = tux_c2p {
        c2p_row("SuperTux 1280x720@30 (menu)", t, "");
    }
    println!(
        "{}",
        serde_json::json!({
            "arena_click_to_photon_p50_ms": arena_c2p.0, "arena_click_to_photon_p95_ms": arena_c2p.1,
            "supertux_click_to_photon_p50_ms": tux_c2p.map(|t| t.0), "supertux_click_to_photon_p95_ms": tux_c2p.map(|t| t.1),
            "first_audio_p50_ms": audio1_p50, "first_audio_p95_ms": audio1_p95,
            "audio_latency_p50_ms": audio_p50, "av_offset_ms": av_offset,
            "packaged": packaged.iter().map(|(g, p50, p95)| serde_json::json!({"game": g, "ttff_p50_ms": p50, "ttff_p95_ms": p95})).collect::<Vec<_>>(),
            "launches": ttff.len(), "ttff_p50_ms": ttff_p50, "ttff_p95_ms": ttff_p95,
            "g2g_p50_ms": g2g_p50, "g2g_p99_ms": g2g_p99, "fps": fps,
            "reconnect_ms": reconnect_ms,
        })
    );
}
