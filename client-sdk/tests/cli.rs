//! `pixelgrid` against a running orchestrator with a registered edge node.

use orchestrator::store::EmbeddedStore;
use pixelgrid_tests::{TestGrid, eventually};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// Runs `pixelgrid` as the grid's operator (and with the test studio's API key).
fn pixelgrid(grid: &TestGrid, args: &[&str]) -> (i32, String, String) {
    let operator_file = std::env::temp_dir().join(format!(
        "pixelgrid-cli-test-{}-{}.key",
        std::process::id(),
        grid.orchestrator.port()
    ));
    std::fs::write(&operator_file, &grid.operator).unwrap();
    pixelgrid_as(
        grid,
        args,
        &[
            (
                "PIXELGRID_OPERATOR_KEY_FILE",
                operator_file.to_str().unwrap(),
            ),
            ("PIXELGRID_API_KEY", &grid.api_key),
        ],
    )
}

fn pixelgrid_as(grid: &TestGrid, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_pixelgrid"))
        .args(args)
        .env(
            "PIXELGRID_ORCHESTRATOR",
            format!("http://{}", grid.orchestrator),
        )
        .env_remove("PIXELGRID_OPERATOR_KEY_FILE")
        .env_remove("PIXELGRID_API_KEY")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn operators_list_nodes_and_sessions_and_drain_a_node() {
    let grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 1, 3);
    let node_id = grid.nodes[0].1.node_id().to_owned();
    assert!(eventually(Duration::from_secs(10), || pixelgrid(
        &grid,
        &["nodes", "--json"]
    )
    .1
    .contains(&node_id)));

    let (code, out, _) = pixelgrid(&grid, &["nodes"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("NODE") && out.contains("READY") && out.contains("arena"),
        "{out}"
    );
    let (code, out, _) = pixelgrid(&grid, &["nodes", "--json"]);
    assert_eq!(code, 0);
    let nodes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(nodes[0]["free"], 3);
    // Heartbeats carry telemetry: recent, and NVML's answer (no driver on CI machines).
    assert!(
        nodes[0]["heartbeat_age_ms"].as_u64().unwrap() < 3000,
        "{nodes}"
    );
    let gpu = nodes[0]["gpu"].as_str().unwrap();
    assert!(
        gpu.starts_with("unavailable: no NVIDIA driver") || gpu.contains("util"),
        "{gpu}"
    );

    let (code, out, _) = pixelgrid(&grid, &["sessions", "--json"]);
    assert_eq!((code, out.trim()), (0, "[]"));
    let (code, _, err) = pixelgrid(&grid, &["sessions", "--state", "sleeping"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid --state"), "{err}");

    let (code, out, _) = pixelgrid(&grid, &["drain", &node_id]);
    assert_eq!(code, 0, "{out}");
    // The node hears it on its next heartbeat and refuses new sessions.
    let node = Arc::clone(&grid.nodes[0].1);
    assert!(
        eventually(Duration::from_secs(5), || node.is_draining()),
        "the node must start draining"
    );
    assert!(pixelgrid(&grid, &["nodes"]).1.contains("DRAINING"));

    let (code, _, err) = pixelgrid(&grid, &["drain", "no-such-node"]);
    assert_eq!(code, 1);
    assert!(err.contains("NotFound"), "{err}");
    // Without the operator credential, or with a studio's key: refused, saying why.
    let (code, _, err) = pixelgrid_as(&grid, &["undrain", &node_id], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("Unauthenticated"), "{err}");
    let (code, _, err) = pixelgrid_as(
        &grid,
        &["undrain", &node_id],
        &[("PIXELGRID_API_KEY", &grid.api_key)],
    );
    assert_eq!(code, 1);
    assert!(err.contains("PermissionDenied"), "{err}");
    let (code, out, err) = pixelgrid(&grid, &["undrain", &node_id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("takes sessions again"), "{out}");
    assert!(
        eventually(Duration::from_secs(5), || !node.is_draining()),
        "an undrained node takes sessions again"
    );
}

/// Studio administration and usage from the command line.
#[test]
fn operators_administer_studios_and_export_usage() {
    let grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 0, 1);
    let (code, out, err) = pixelgrid(
        &grid,
        &[
            "studios",
            "create",
            "acme",
            "--games",
            "arena",
            "--max-sessions",
            "2",
            "--max-mode",
            "1280x720@60",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let created: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let key = created["api_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("pgk_acme_"), "{out}");
    let (code, out, _) = pixelgrid(&grid, &["studios", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("acme") && out.contains("1280x720@60") && !out.contains(&key),
        "the list shows key ids, never keys: {out}"
    );
    let (code, out, err) = pixelgrid(&grid, &["studios", "keys", "add", "acme", "--json"]);
    assert_eq!(code, 0, "{err}");
    let added: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let (code, out, err) = pixelgrid(
        &grid,
        &[
            "studios",
            "keys",
            "revoke",
            "acme",
            added["key_id"].as_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(added["key_id"].as_str().unwrap()), "{out}");
    // A studio reads its own usage (none yet) as CSV; the header names the columns.
    let (code, out, err) = pixelgrid_as(
        &grid,
        &["usage", "--format", "csv"],
        &[("PIXELGRID_API_KEY", &key)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("session,studio,player,game,node,mode"),
        "{out}"
    );
    // A studio's key cannot create studios.
    let (code, _, err) = pixelgrid_as(
        &grid,
        &["studios", "create", "mine"],
        &[("PIXELGRID_API_KEY", &key)],
    );
    assert_eq!(code, 1);
    assert!(err.contains("PermissionDenied"), "{err}");
}

#[test]
fn an_unreachable_orchestrator_is_a_clear_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_pixelgrid"))
        .args(["--orchestrator", "http://127.0.0.1:9", "nodes"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refused the connection") && err.contains("127.0.0.1:9"),
        "{err}"
    );
}

/// `pixelgrid play` plays headless: a JSON summary with frames and timings, PNGs and a
/// recording on disk; an unknown game fails with a non-zero exit and the reason.
#[test]
fn play_launches_headless_saves_frames_and_records_and_fails_clearly() {
    let grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 1, 2);
    let dir = tempfile::tempdir().unwrap();
    let pngs = dir.path().join("frames");
    let recording = dir.path().join("stream.h264");
    let (code, out, err) = pixelgrid(
        &grid,
        &[
            "play",
            "--mode",
            "640x360@30",
            "--frames",
            "60",
            "--png-dir",
            pngs.to_str().unwrap(),
            "--record",
            recording.to_str().unwrap(),
            "--input",
            "100:key:ArrowRight:down,600:key:ArrowRight:up",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(summary["frames"].as_u64().unwrap() >= 60, "{summary}");
    assert!(summary["ttff_ms"].as_f64().unwrap() > 0.0, "{summary}");
    assert!(
        summary["glass_to_glass_p50_ms"].as_f64().is_some(),
        "{summary}"
    );
    assert_eq!(summary["node"], grid.nodes[0].1.node_id(), "{summary}");
    assert!(summary["pngs"].as_u64().unwrap() >= 2, "{summary}");
    let first = std::fs::read(pngs.join("frame-000001.png")).unwrap();
    assert_eq!(&first[1..4], b"PNG");
    let h264 = std::fs::read(&recording).unwrap();
    assert!(h264.len() > 10_000, "{} bytes recorded", h264.len());
    assert_eq!(&h264[..4], &[0, 0, 0, 1], "Annex B start code");

    let (code, _, err) = pixelgrid(&grid, &["play", "no-such-game", "--json"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("error:") && err.contains("no-such-game"),
        "{err}"
    );
}

/// `pixelgrid check` watches the node it names (not the one placement would pick): a real
/// session there, a nonce drawn into the live picture in time, a result signed by the checker.
#[test]
fn a_checker_watches_the_node_it_names_and_signs_what_it_saw() {
    let grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 2, 2);
    let key_dir = tempfile::tempdir().unwrap();
    let key = key_dir.path().join("checker.key");
    // The key a checker names itself by, as the indexers' --checker-key takes it.
    let (code, checker, _) = pixelgrid(&grid, &["checker-key", "--key", key.to_str().unwrap()]);
    assert_eq!(code, 0);
    // Every ready node the orchestrator lists, one signed JSON line each.
    let (code, out, err) = pixelgrid(
        &grid,
        &[
            "check",
            "--all-nodes",
            "--mode",
            "320x240@30",
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut checked: Vec<&str> = lines.iter().map(|r| r["node"].as_str().unwrap()).collect();
    checked.sort_unstable();
    let mut ids: Vec<&str> = grid.nodes.iter().map(|(_, n)| n.node_id()).collect();
    ids.sort_unstable();
    assert_eq!(checked, ids, "{out}");
    for r in &lines {
        assert_eq!(r["checker"], checker.trim(), "{r}");
        assert_eq!(r["passed"], true, "{r}");
        assert_eq!(
            (r["width"].as_u64(), r["height"].as_u64()),
            (Some(320), Some(240))
        );
        // The checker's signature over what it saw.
        let text = format!(
            "pixelgrid/check/v1\n{}\n{}\n{}\n1\n{}\n{}\n{}\n{}\n1\n{}\n",
            r["node"].as_str().unwrap(),
            r["session"].as_str().unwrap(),
            r["nonce"],
            r["seen_after_ms"],
            r["width"],
            r["height"],
            r["fps"],
            r["at_unix_ms"]
        );
        let sig = pixelgrid_proto::token::unhex(r["signature"].as_str().unwrap()).unwrap();
        assert!(pixelgrid_proto::identity::verify(
            r["checker"].as_str().unwrap(),
            text.as_bytes(),
            &sig
        ));
    }
    // A capacity check: as many sessions at once as the node advertises, each its own nonce.
    let (code, out, err) = pixelgrid(
        &grid,
        &[
            "check",
            "--node",
            grid.nodes[0].1.node_id(),
            "--mode",
            "320x240@30",
            "--sessions",
            "2",
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (r["passed"].as_bool(), r["sessions"].as_u64()),
        (Some(true), Some(2)),
        "{r}"
    );
    // A node that is not there fails with a reason.
    let (code, _, err) = pixelgrid(
        &grid,
        &[
            "check",
            "--node",
            &"ab".repeat(32),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(!err.is_empty());
}

/// Runs `pixelgrid check` of `node` handing the result to `indexer`; its exit code and result.
fn check(
    grid: &TestGrid,
    indexer: &str,
    node: &str,
    key: &std::path::Path,
) -> (i32, serde_json::Value) {
    let (code, out, err) = pixelgrid(
        grid,
        &[
            "check",
            "--node",
            node,
            "--mode",
            "320x240@30",
            "--key",
            key.to_str().unwrap(),
            "--submit-to",
            indexer,
        ],
    );
    let r = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, r)
}

/// A named checker's results decide a node's epoch at a real indexer: its passed watch of a live
/// node is taken and the node earns; its watch of a node that died mid-epoch fails, and that node
/// earns nothing for the epoch (uptime it had before included); a checker the indexer does not
/// name is refused with the reason.
#[test]
fn a_checkers_signed_results_decide_a_nodes_epoch_at_the_indexer() {
    const EPOCH_MS: u64 = 8_000;
    let mut grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 0, 2);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("checker.key");
    let (checker, _) = pixelgrid_proto::identity::NodeKey::load_or_create(&key).unwrap();
    let indexer = grid.start_indexer(indexer::tally::TallyConfig {
        epoch_ms: EPOCH_MS,
        slot_ms: 1_000,
        max_clock_skew_ms: 1_000,
        max_report_delay_ms: 1_000,
        sla_floor_ppm: 0,
        checker_keys: vec![checker.node_id()],
        ..Default::default()
    });
    grid.add_node(1, 2);
    grid.add_node(2, 2);
    let ids: Vec<String> = grid
        .nodes
        .iter()
        .map(|(_, n)| n.node_id().to_owned())
        .collect();
    let (live, dead) = (ids[0].clone(), ids[1].clone());
    assert!(
        eventually(Duration::from_secs(15), || ids.iter().all(|id| indexer
            .indexer
            .reports_of(id)
            .unwrap()
            .len()
            >= 2)),
        "both nodes report to the indexer"
    );
    let (code, passed) = check(&grid, &indexer.url, &live, &key);
    assert_eq!(code, 0, "{passed}");
    assert_eq!(passed["passed"], true, "{passed}");
    assert_eq!(
        passed["indexers"][0]["verdict"], "REPORT_VERDICT_ACCEPTED",
        "{passed}"
    );

    // Die a little into an epoch, so the node has uptime in it before the check.
    while indexer::daemon::now_ms() % EPOCH_MS > 2_000
        || indexer::daemon::now_ms() % EPOCH_MS < 1_200
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    grid.kill_node(&dead);
    let (code, failed) = check(&grid, &indexer.url, &dead, &key);
    assert_ne!(code, 0, "{failed}");
    assert_eq!(failed["passed"], false, "{failed}");
    assert!(!failed["why"].as_str().unwrap().is_empty(), "{failed}");
    assert_eq!(
        failed["indexers"][0]["verdict"], "REPORT_VERDICT_ACCEPTED",
        "{failed}"
    );
    let epoch = failed["at_unix_ms"].as_u64().unwrap() / EPOCH_MS;

    let (code, refused) = check(
        &grid,
        &indexer.url,
        &live,
        &keys.path().join("stranger.key"),
    );
    assert_ne!(code, 0, "{refused}");
    assert_eq!(
        refused["indexers"][0]["verdict"], "REPORT_VERDICT_UNKNOWN_CHECKER",
        "{refused}"
    );
    assert!(
        refused["indexers"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("--checker-key"),
        "{refused}"
    );

    assert!(
        eventually(Duration::from_secs(20), || indexer
            .indexer
            .payouts(epoch)
            .is_ok()),
        "epoch {epoch} closes"
    );
    let (_, payouts) = indexer.indexer.payouts(epoch).unwrap();
    let of = |id: &str| {
        payouts
            .iter()
            .find(|p| p.payout.node_id == id)
            .unwrap_or_else(|| panic!("{id} has a payout row: {payouts:?}"))
            .payout
            .clone()
    };
    let dead_payout = of(&dead);
    assert!(dead_payout.checks_failed, "{dead_payout:?}");
    assert!(
        dead_payout.uptime_ms > 0,
        "it was up before it died: {dead_payout:?}"
    );
    assert_eq!(dead_payout.amount, 0, "{dead_payout:?}");
    let live_payout = of(&live);
    assert!(
        !live_payout.checks_failed && live_payout.amount > 0,
        "{live_payout:?}"
    );
}
