//! What operators scrape and probe: every daemon's `/metrics` passes `promtool check metrics`
//! (Debian `prometheus`) with live data in it, and `/healthz` / `/readyz` answer.

use orchestrator::store::EmbeddedStore;
use pixelgrid_client::{Client, LaunchOptions};
use pixelgrid_tests::{TestGrid, http};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// `promtool check metrics` on `text`; panics with its complaints.
fn promtool_accepts(what: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (Debian package `prometheus`; deploy/install-deps.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejects {what}'s metrics:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http(addr, "GET", path, &[], b"");
    (status, body)
}

#[test]
fn every_daemon_serves_metrics_promtool_accepts_and_health_endpoints() {
    let mut grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 0, 2);
    let ledger = tempfile::tempdir().unwrap();
    let indexer = indexer::daemon::Indexer::open(indexer::daemon::DaemonConfig {
        rules: indexer::tally::TallyConfig {
            epoch_ms: 2_000,
            slot_ms: 500,
            max_report_delay_ms: 500,
            ..Default::default()
        },
        ledger: ledger.path().join("l.db"),
        orchestrator: Some(format!("http://{}", grid.orchestrator)),
        probes_per_slot: 1,
        registry_refresh: Duration::from_millis(300),
        forget_after: std::time::Duration::from_secs(3_600),
        ledger_max_bytes: None,
    })
    .unwrap();
    let (indexer_grpc, indexer_http) = grid.runtime.block_on(async {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let web = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = (grpc.local_addr().unwrap(), web.local_addr().unwrap());
        tokio::spawn(indexer::daemon::serve(
            grpc,
            Arc::clone(&indexer),
            std::future::pending(),
        ));
        tokio::spawn(indexer::daemon::serve_http(
            web,
            Arc::clone(&indexer),
            std::future::pending(),
        ));
        addrs
    });
    grid.reporting = Some(edge_node::reporter::ReporterConfig {
        indexers: vec![format!("http://{indexer_grpc}")],
        interval: Duration::from_millis(250),
        outbox_capacity: 100,
        outbox_dir: None,
    });
    let node = grid.add_node(1, 1);

    // Live data: a session playing, placements made, reports accepted, an epoch closed.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("http://{}", grid.orchestrator);
    let mut session = rt.block_on(async {
        let client = Client::connect(&url)
            .await
            .unwrap()
            .with_api_key(&grid.api_key, "ops-player");
        let mut s = client
            .launch(
                "arena",
                LaunchOptions {
                    width: 640,
                    height: 360,
                    fps: 30,
                    ..LaunchOptions::default()
                },
            )
            .await
            .unwrap();
        for _ in 0..30 {
            s.next_frame().await.unwrap();
        }
        s
    });
    assert!(pixelgrid_tests::eventually(Duration::from_secs(8), || {
        get(indexer_http, "/metrics")
            .1
            .contains("pixelgrid_indexer_epochs_closed_total 1")
    }));

    let (status, edge) = get(node, "/metrics");
    assert_eq!(status, 200);
    assert!(edge.contains("pixelgrid_edge_sessions 1"), "{edge}");
    assert!(
        edge.contains("pixelgrid_edge_frames_sent_total{session="),
        "{edge}"
    );
    promtool_accepts("the edge node", &edge);

    let (status, orch) = get(grid.gateway, "/metrics");
    assert_eq!(status, 200);
    assert!(
        orch.contains("pixelgrid_orchestrator_placements_total{outcome=\"placed\"} 1"),
        "{orch}"
    );
    assert!(
        orch.contains("pixelgrid_orchestrator_placement_seconds_count 1"),
        "{orch}"
    );
    promtool_accepts("the orchestrator", &orch);

    let (status, ix) = get(indexer_http, "/metrics");
    assert_eq!(status, 200);
    assert!(
        ix.contains("pixelgrid_indexer_reports_total{verdict=\"Accepted\"}"),
        "{ix}"
    );
    promtool_accepts("the indexer", &ix);

    // Every metric the Grafana dashboard plots is one the daemons export.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/grafana/pixelgrid.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let exported: String = [&edge, &orch, &ix]
        .iter()
        .flat_map(|t| t.lines().filter(|l| l.starts_with("# TYPE ")))
        .collect::<Vec<_>>()
        .join("\n");
    let mut plotted = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("pixelgrid_") {
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(name);
                    assert!(
                        exported.contains(&format!("# TYPE pixelgrid_{family} ")),
                        "the dashboard plots pixelgrid_{name}, which no daemon exports"
                    );
                    plotted += 1;
                }
            }
        }
    }
    assert!(plotted >= 10, "{plotted}");

    for addr in [node, grid.gateway, indexer_http] {
        assert_eq!(get(addr, "/healthz").0, 200, "{addr}");
    }
    assert_eq!(get(grid.gateway, "/readyz").0, 200);
    assert_eq!(get(indexer_http, "/readyz").0, 200);
    // The node's one slot is taken: not ready for more; free again once the session ends.
    let (status, body) = get(node, "/readyz");
    assert_eq!((status, body.trim()), (503, "every session slot is taken"));
    rt.block_on(async {
        let _ = session.next_frame().await;
        session.end().await;
    });
    assert!(pixelgrid_tests::eventually(Duration::from_secs(5), || get(
        node, "/readyz"
    )
    .0
        == 200));
}
