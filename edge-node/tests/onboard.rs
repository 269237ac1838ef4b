//! `edge-node onboard` on this CPU-only machine, against a running orchestrator.

use orchestrator::grid::{Grid, GridConfig};
use orchestrator::store::EmbeddedStore;
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_proto::token::TokenSigner;
use std::process::Command;
use std::sync::Arc;

fn onboard(dir: &std::path::Path, extra: &[&str]) -> (i32, String, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-node"))
        .current_dir(dir)
        .args(["onboard", "--identity", "node.key", "--bench-frames", "30"])
        .args(extra)
        .output()
        .unwrap();
    let report = std::fs::read_to_string(dir.join("onboard.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        report,
    )
}

#[test]
fn onboarding_checks_the_machine_keeps_the_key_and_registers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let orchestrator = rt.block_on(async {
        let grid = Arc::new(Grid::new(
            Arc::new(EmbeddedStore::new()),
            TokenSigner::from_seed(&[3; 32]),
            Default::default(),
            GridConfig::default(),
        ));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(orchestrator::serve(l, grid, std::future::pending()));
        format!("http://{addr}")
    });
    let dir = tempfile::tempdir().unwrap();
    // The port `serve` will listen on is the one registered for probes: a real one.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let (code, table, report) = onboard(
        dir.path(),
        &["--listen", &listen, "--orchestrator", &orchestrator],
    );
    assert_eq!(code, 0, "{table}");
    let node_id = report["node_id"].as_str().unwrap().to_owned();
    assert_eq!(report["identity_created"], true);
    assert_eq!(report["registered_with"], orchestrator.as_str());
    let checks = report["checks"].as_array().unwrap();
    assert!(checks.iter().all(|c| c["ok"] == true), "{table}");
    for name in [
        "identity key",
        "vulkan",
        "h264 encoder",
        "nvidia",
        "memory",
        "listen port",
        "encode 1280x720",
        "registration",
    ] {
        assert!(checks.iter().any(|c| c["name"] == name), "{name}: {table}");
    }
    // CPU-only here: lavapipe, x264, and NVML says why it is absent.
    let found = |name: &str| {
        checks.iter().find(|c| c["name"] == name).unwrap()["found"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(found("vulkan").contains("lavapipe"), "{table}");
    assert!(found("h264 encoder").starts_with("x264enc"), "{table}");
    assert!(found("nvidia").contains("NVIDIA"), "{table}");
    let fps = report["encode_fps"][0][1].as_f64().unwrap();
    assert!(fps > 30.0, "{report}");
    assert_eq!(report["hardware_fingerprint"].as_str().unwrap().len(), 64);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let listed = rt.block_on(async {
        let mut c = pb::orchestrator_client::OrchestratorClient::connect(orchestrator.clone())
            .await
            .unwrap();
        c.list_nodes(pb::ListNodesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .nodes
    });
    assert!(
        listed
            .iter()
            .any(|n| n.node_id.as_ref().is_some_and(|i| i.hex == node_id)),
        "registered: {listed:?}"
    );

    // Again: the key is kept (same node id, same fingerprint) unless --force.
    let (code, _, again) = onboard(dir.path(), &["--listen", "127.0.0.1:0"]);
    assert_eq!(code, 0);
    assert_eq!(again["node_id"], node_id.as_str());
    assert_eq!(again["identity_created"], false);
    assert_eq!(
        again["hardware_fingerprint"],
        report["hardware_fingerprint"]
    );
    // The same key on other hardware is refused until --force makes it a new node.
    std::fs::write(dir.path().join("node.fingerprint"), "0".repeat(64)).unwrap();
    let (code, table, _) = onboard(dir.path(), &["--listen", "127.0.0.1:0"]);
    assert_eq!(code, 1, "{table}");
    assert!(table.contains("FAIL  hardware"), "{table}");
    let (code, _, forced) = onboard(dir.path(), &["--listen", "127.0.0.1:0", "--force"]);
    assert_eq!(code, 0);
    assert_ne!(forced["node_id"], node_id.as_str());
}

#[test]
fn a_failed_check_exits_non_zero_with_the_advice() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (code, table, report) = onboard(dir.path(), &["--listen", &addr]);
    assert_eq!(code, 1, "{table}");
    assert!(table.contains("FAIL  listen port"), "{table}");
    assert!(table.contains("→ free the port"), "{table}");
    let port = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "listen port")
        .unwrap()
        .clone();
    assert_eq!(port["ok"], false);
    assert!(port["advice"].as_str().unwrap().contains("--listen"));
}
