//! `edge-node serve` drains on SIGTERM: the playing session goes on, new sessions are refused,
//! and the process exits once the last player leaves.

use pixelgrid_tests::viewer;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn sigterm_drains_then_exits_when_the_last_player_leaves() {
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut node = Command::new(env!("CARGO_BIN_EXE_edge-node"))
        .args([
            "serve",
            "--insecure-dev",
            "--listen",
            &addr.to_string(),
            "--drain-timeout-s",
            "30",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let up = Instant::now();
        while viewer::http(addr, "GET", "/healthz", &[], b"")
            .await
            .is_err()
        {
            assert!(
                up.elapsed() < Duration::from_secs(30),
                "edge-node did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let new_session = || async {
            let (_, _, body) = viewer::http(
                addr,
                "POST",
                "/dev/sessions",
                &[],
                br#"{"width":320,"height":240,"fps":30}"#,
            )
            .await
            .unwrap();
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        };
        let s = new_session().await;
        let v = viewer::connect(
            addr,
            s["whep_url"].as_str().unwrap(),
            s["token"].as_str().unwrap(),
            MIME_TYPE_H264,
        )
        .await
        .unwrap();
        assert!(v.wait_for_packets(10, Duration::from_secs(10)).await);

        pixelgrid_tests::sigterm(&node);
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Draining: the running session still streams...
        let before = v.packets.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            v.packets.load(Ordering::Relaxed) > before + 5,
            "the running session must go on while draining"
        );
        // ...and a new one is refused with a reason.
        let s2 = new_session().await;
        let refused = viewer::connect(
            addr,
            s2["whep_url"].as_str().unwrap(),
            s2["token"].as_str().unwrap(),
            MIME_TYPE_H264,
        )
        .await;
        let err = refused
            .err()
            .expect("a draining node must refuse new sessions")
            .to_string();
        assert!(err.contains("503") && err.contains("draining"), "{err}");

        assert_eq!(v.leave(addr).await.unwrap(), 200);
    });
    let status = pixelgrid_tests::wait_for_exit(&mut node, Duration::from_secs(10))
        .expect("edge-node must exit once drained");
    assert!(status.success(), "edge-node exited with {status}");
}
