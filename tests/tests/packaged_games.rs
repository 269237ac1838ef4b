//! Real, unmodified third-party games hosted by the grid: Debian's `vkcube` (Vulkan through X11)
//! and `supertux2` (SDL2 + OpenGL), packaged only by the manifests in `deploy/games/`, launched
//! through the orchestrator and played through the Rust SDK.
//!
//! Needs Xvfb, bubblewrap, vulkan-tools and supertux (deploy/install-deps.sh); a missing one
//! fails the test with the package to install.

use orchestrator::store::EmbeddedStore;
use pixelgrid_client::{Event, LaunchOptions};
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_tests::{SUPERTUX_MENU_720P, TestGrid, eventually, region_diff as diff};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
        || Path::new(program).is_file();
    assert!(
        found,
        "{program} is missing: install Debian's {package} (deploy/install-deps.sh)"
    );
}

/// A package made by the test: a manifest only, for a program of the system's.
fn test_package(root: &Path, id: &str, executable: &str, args: &str, ready_s: u32) -> PathBuf {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("pixelgrid-game.toml"),
        format!(
            "id = \"{id}\"\nname = \"{id}\"\nversion = \"1\"\n[run]\nexecutable = \"{executable}\"\nargs = [{args}]\n[video]\nmodes = [\"640x480@30\"]\n[ready]\ntimeout_s = {ready_s}\n"
        ),
    )
    .unwrap();
    dir
}

struct Rig {
    grid: TestGrid,
    sessions: tempfile::TempDir,
    _games: tempfile::TempDir,
    _sources: tempfile::TempDir,
}

fn rig() -> Rig {
    // RUST_LOG=info shows the node's side of each step.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    require("Xvfb", "xvfb");
    require("bwrap", "bubblewrap");
    require("vkcube", "vulkan-tools");
    require("/usr/games/supertux2", "supertux");
    let games = tempfile::tempdir().unwrap();
    // The game user (nobody) must reach its package and its session directory.
    std::fs::set_permissions(games.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sessions = tempfile::tempdir().unwrap();
    std::fs::set_permissions(sessions.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let store = edge_node::runtime::store::GameStore::open(games.path()).unwrap();
    for game in ["vkcube", "supertux"] {
        let dir = repo().join("deploy/games").join(game);
        store.add(dir.to_str().unwrap(), None).unwrap();
    }
    let sources = tempfile::tempdir().unwrap();
    for dir in [
        test_package(sources.path(), "crasher", "/bin/false", "", 10),
        test_package(sources.path(), "no-window", "/bin/sleep", "\"30\"", 2),
    ] {
        store.add(dir.to_str().unwrap(), None).unwrap();
    }
    let mut grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 0, 4);
    grid.add_node_hosting(1, 4, &store, sessions.path());
    Rig {
        grid,
        sessions,
        _games: games,
        _sources: sources,
    }
}

fn options(width: u32, height: u32, fps: u32) -> LaunchOptions {
    LaunchOptions {
        width,
        height,
        fps,
        // The default loss detector: a game loading its data must not look like a lost node.
        reconnect: false,
        ..LaunchOptions::default()
    }
}

async fn next_frame(s: &mut pixelgrid_client::Session) -> pixelgrid_client::Frame {
    tokio::time::timeout(Duration::from_secs(20), s.next_frame())
        .await
        .expect("frames keep coming")
        .expect("a frame")
}

/// The newest decoded frame, after letting `settle` pass.
async fn frame_after(
    s: &mut pixelgrid_client::Session,
    settle: Duration,
) -> pixelgrid_client::Frame {
    tokio::time::sleep(settle).await;
    while s.try_next_frame().is_some() {}
    next_frame(s).await
}

/// Spread of the picture's values: 0 for a blank picture.
fn spread(rgba: &[u8]) -> f64 {
    let values: Vec<f64> = rgba.iter().step_by(4 * 7).map(|&v| f64::from(v)).collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt()
}

/// Running (not zombie: a container's init may never reap) processes with one of `names`.
fn count_processes(names: &[&str]) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            names.contains(&comm.trim()) && !state.starts_with('Z')
        })
        .count()
}

fn x_sockets() -> usize {
    std::fs::read_dir("/tmp/.X11-unix")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The loudest sound decoded over `span`, as an RMS level.
async fn loudest(s: &mut pixelgrid_client::Session, span: Duration) -> f32 {
    let deadline = tokio::time::Instant::now() + span;
    let mut loudest = 0.0f32;
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, s.next_audio()).await {
        loudest = loudest.max(chunk.level);
    }
    loudest
}

async fn wait_for_end(s: &mut pixelgrid_client::Session) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let event = tokio::time::timeout_at(deadline, s.next_event())
            .await
            .expect("the session ends")
            .expect("events");
        match event {
            Event::Ended { reason } => return reason,
            other => eprintln!("event while waiting for the end: {other:?}"),
        }
    }
}

#[test]
fn real_games_run_in_private_worlds_through_the_grid() {
    let rig = rig();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (procs_before, sockets_before) = (
        count_processes(&["Xvfb", "bwrap", "vkcube", "supertux2", "pulseaudio"]),
        x_sockets(),
    );
    let node = Arc::clone(&rig.grid.nodes[0].1);
    rt.block_on(async {
        let client = rig.grid.player().await;

        // The grid's catalogue names each game with its version, on the one ready node.
        let games = client.games().await.unwrap();
        let find = |id: &str| games.iter().find(|g| g.id == id).cloned();
        let vkcube = find("vkcube").expect("vkcube in the catalogue");
        assert_eq!(
            (vkcube.version.as_str(), vkcube.ready_nodes),
            ("1.3.239", 1)
        );
        assert!(vkcube.modes.contains(&"640x480@30".to_owned()));
        assert_eq!(find("supertux").expect("supertux").version, "0.6.3");
        assert!(find("arena").is_some());

        // A game, or a version, that no ready node has is answered as such.
        for (game, version) in [("tetris", None), ("vkcube", Some("9.9"))] {
            let mut o = options(640, 480, 30);
            o.version = version.map(str::to_owned);
            let e = client.launch(game, o).await.expect_err("refused");
            assert!(e.to_string().contains("no ready node has game"), "{e}");
        }

        // vkcube: frames that are neither blank nor frozen.
        let mut o = options(640, 480, 30);
        o.version = Some("1.3.239".into());
        let mut cube = client.launch("vkcube", o).await.unwrap();
        let first = next_frame(&mut cube).await;
        assert_eq!((first.width, first.height), (640, 480));
        let a = frame_after(&mut cube, Duration::from_millis(300)).await;
        let b = frame_after(&mut cube, Duration::from_millis(500)).await;
        assert!(spread(&b.data) > 10.0, "vkcube's picture is blank");
        let moved = diff(&a.data, &b.data, 640, (0, 0, 640, 480));
        assert!(moved > 0.5, "vkcube's picture is frozen (diff {moved:.2})");

        // Games that cannot start fail their launch with why, and the cube keeps spinning.
        let e = client
            .launch("crasher", options(640, 480, 30))
            .await
            .expect_err("a game that exits at once cannot be launched");
        assert!(e.to_string().contains("exited with code 1"), "{e}");
        let e = client
            .launch("no-window", options(640, 480, 30))
            .await
            .expect_err("a game without a window cannot be launched");
        assert!(e.to_string().contains("opened no window within 2 s"), "{e}");
        let c = frame_after(&mut cube, Duration::from_millis(300)).await;
        assert!(diff(&b.data, &c.data, 640, (0, 0, 640, 480)) > 0.5);
        let metrics = node.metrics().await;
        assert!(
            metrics.contains("reason=\"game_failed\"} 2"),
            "game failures are counted: {metrics}"
        );

        // Escape quits vkcube: the session ends with the game's exit, for the player and the
        // orchestrator alike.
        let session_id = cube.session_id();
        cube.input().key("Escape", true).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        cube.input().key("Escape", false).await.unwrap();
        let reason = wait_for_end(&mut cube).await;
        assert!(reason.contains("exited with code 0"), "{reason}");
        let mut grpc = rig.grid.client().await;
        let mut state = None;
        for _ in 0..50 {
            let s = grpc
                .get_session(pixelgrid_tests::bearer(
                    pb::GetSessionRequest {
                        session_id: session_id.clone(),
                    },
                    &rig.grid.operator,
                ))
                .await
                .unwrap()
                .into_inner();
            if s.state == pb::SessionState::Failed as i32 {
                state = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let state = state.expect("the orchestrator marks the session failed");
        assert!(
            state.end_reason.contains("exited with code 0"),
            "{}",
            state.end_reason
        );
    });

    // SuperTux: a key press moves its menu's selection (only input moves it; the level behind
    // the menu animates by itself, so the test looks at the menu's first two rows).
    rt.block_on(async {
        let client = rig.grid.player().await;
        let mut tux = client.launch("supertux", options(1280, 720, 30)).await.unwrap();
        next_frame(&mut tux).await;
        // Loading the data takes seconds on llvmpipe after the first picture.
        let menu = SUPERTUX_MENU_720P;
        let mut settled = frame_after(&mut tux, Duration::from_secs(3)).await;
        for _ in 0..30 {
            let next = frame_after(&mut tux, Duration::from_millis(700)).await;
            let still = diff(&settled.data, &next.data, 1280, menu) < 1.0;
            settled = next;
            if still && spread(&settled.data) > 10.0 {
                break;
            }
        }
        // Its music comes through the session's own sound server.
        let music = loudest(&mut tux, Duration::from_secs(3)).await;
        assert!(music > 0.01, "SuperTux is silent: level {music:.4}");
        let before = frame_after(&mut tux, Duration::from_millis(700)).await;
        let unprompted = diff(&settled.data, &before.data, 1280, menu);
        // SuperTux reads key state once per frame: hold the key long enough to be seen.
        tux.input().key("ArrowDown", true).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        tux.input().key("ArrowDown", false).await.unwrap();
        let after = frame_after(&mut tux, Duration::from_millis(1500)).await;
        let prompted = diff(&before.data, &after.data, 1280, menu);
        assert!(
            prompted > 3.0 * unprompted + 2.0,
            "the menu selection did not move: diff {prompted:.2} after the key, {unprompted:.2} without"
        );
        tux.end().await;
    });

    // The built-in game has sound too, stamped on the pictures' clock.
    rt.block_on(async {
        let client = rig.grid.player().await;
        let mut arena = client.launch("arena", options(640, 360, 30)).await.unwrap();
        next_frame(&mut arena).await;
        let level = loudest(&mut arena, Duration::from_secs(2)).await;
        assert!(level > 0.02, "arena is silent: level {level:.4}");
        let chunk = arena.next_audio().await.expect("sound keeps coming");
        assert!(
            chunk.capture_unix_ms.is_some(),
            "audio carries its capture time"
        );
        assert_eq!(chunk.pcm.len(), 960 * 2, "20 ms of 48 kHz stereo");
        let stats = arena.stats();
        assert!(stats.audio_packets_received >= 50, "{stats:?}");
        assert!(stats.av_offset_ms.is_some(), "{stats:?}");
        arena.end().await;
        // A player who wants no sound gets none.
        let mut quiet_options = options(640, 360, 30);
        quiet_options.audio = false;
        let mut quiet = client.launch("arena", quiet_options).await.unwrap();
        next_frame(&mut quiet).await;
        assert!(quiet.try_next_audio().is_none());
        assert_eq!(quiet.stats().audio_packets_received, 0);
        quiet.end().await;
    });

    // Twenty sessions later, nothing of any of them is left.
    rt.block_on(async {
        let client = rig.grid.player().await;
        for _ in 0..20 {
            let mut s = client
                .launch("vkcube", options(640, 480, 30))
                .await
                .unwrap();
            next_frame(&mut s).await;
            s.end().await;
        }
    });
    let sessions_dir = rig.sessions.path().to_path_buf();
    let clean = eventually(Duration::from_secs(30), || {
        rig.grid.runtime.block_on(node.sessions()).is_empty()
            && std::fs::read_dir(&sessions_dir).unwrap().count() == 0
            && count_processes(&["Xvfb", "bwrap", "vkcube", "supertux2", "pulseaudio"])
                <= procs_before
            && x_sockets() <= sockets_before
    });
    assert!(
        clean,
        "left behind: {} live sessions, {} session dirs, {} game/display processes (had {procs_before}), {} X sockets (had {sockets_before})",
        rig.grid.runtime.block_on(node.sessions()).len(),
        std::fs::read_dir(&sessions_dir).unwrap().count(),
        count_processes(&["Xvfb", "bwrap", "vkcube", "supertux2", "pulseaudio"]),
        x_sockets()
    );
}
