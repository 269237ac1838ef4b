//! The `orchestrator` binary as operators run it: it serves, reports ready, and stops cleanly on
//! SIGTERM (what systemd, Docker and Kubernetes send).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn the_daemon_becomes_ready_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["--listen", &format!("127.0.0.1:{grpc}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .arg("--token-key")
        .arg(dir.path().join("token.key"))
        .arg("--operator-key-file")
        .arg(dir.path().join("operator.key"))
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let ready = loop {
        if let Some(r) = get(http, "/readyz") {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let metrics = get(http, "/metrics").unwrap();
    assert!(
        metrics.contains("pixelgrid_orchestrator_placements_total"),
        "{metrics}"
    );

    pixelgrid_tests::sigterm(&child);
    let exit = pixelgrid_tests::wait_for_exit(&mut child, Duration::from_secs(5))
        .expect("still running 5 s after SIGTERM");
    assert!(exit.success(), "exited with {exit}");
}
