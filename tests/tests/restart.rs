//! The orchestrator on its embedded store restarts without ending anyone's game: the nodes find
//! it again, and the sessions they run stay placed and keep streaming.

use orchestrator::store::EmbeddedStore;
use pixelgrid_client::LaunchOptions;
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_tests::{TestGrid, bearer};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn restarting_the_orchestrator_on_its_embedded_store_ends_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orchestrator-state.db");
    let mut grid = TestGrid::start(Arc::new(EmbeddedStore::open(&path).unwrap()), 1, 2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut s = rt.block_on(async {
        let client = grid.player().await;
        let mut s = client
            .launch(
                "arena",
                LaunchOptions {
                    width: 640,
                    height: 360,
                    fps: 30,
                    audio: false,
                    reconnect: false,
                    node_lost_after: Duration::from_secs(5),
                    ..LaunchOptions::default()
                },
            )
            .await
            .expect("a launch");
        for _ in 0..30 {
            tokio::time::timeout(Duration::from_secs(10), s.next_frame())
                .await
                .expect("frames")
                .expect("a frame");
        }
        s
    });
    let session_id = s.session_id();

    // The process goes, and comes back on the same file.
    grid.restart_orchestrator(Arc::new(EmbeddedStore::open(&path).unwrap()));

    // Over the next 4 s (several heartbeats and the node's re-registration) the game goes on.
    let frames = rt.block_on(async {
        let started = Instant::now();
        let mut frames = 0;
        while started.elapsed() < Duration::from_secs(4) {
            if let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(500), s.next_frame()).await
            {
                frames += 1;
            }
        }
        frames
    });
    assert!(frames >= 90, "{frames} frames in 4 s after the restart");
    let state = grid.runtime.block_on(async {
        let mut c = grid.client().await;
        c.get_session(bearer(
            pb::GetSessionRequest {
                session_id: session_id.clone(),
            },
            &grid.operator,
        ))
        .await
        .expect("the restarted orchestrator knows the session")
        .into_inner()
        .state
    });
    assert_eq!(
        state,
        pb::SessionState::Active as i32,
        "still placed and active after the restart"
    );
    rt.block_on(s.end());
}
