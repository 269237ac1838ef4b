//! A node's reports survive `kill -9`: queued on disk while the indexer is down, sent after the
//! node starts again, each credited exactly once, and the sequence goes on where it was.

use edge_node::reporter::Outbox;
use orchestrator::store::EmbeddedStore;
use pixelgrid_proto::identity::NodeKey;
use pixelgrid_tests::{TestGrid, eventually, free_port, signed_registration};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The reports waiting in the node's outbox files, by sequence.
fn queued(dir: &std::path::Path) -> Vec<u64> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "outbox") {
            let bytes = std::fs::read(entry.path()).unwrap();
            let outbox = Outbox::from_bytes(&bytes, 10_000).expect("an outbox file reads back");
            seqs.extend(
                outbox
                    .after(0)
                    .iter()
                    .filter_map(|r| r.report.as_ref().map(|r| r.sequence)),
            );
        }
    }
    seqs
}

#[test]
fn reports_queued_before_kill_9_are_sent_after_the_restart_and_credited_once() {
    let dir = tempfile::tempdir().unwrap();
    let outbox_dir = dir.path().join("reports");
    let grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 0, 1);
    let key_path = dir.path().join("node.key");
    let (key, _) = NodeKey::load_or_create(&key_path).unwrap();
    grid.runtime.block_on(async {
        grid.client()
            .await
            .register_node(signed_registration(&key, 1))
            .await
            .expect("registration");
    });
    let indexer_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let args: Vec<String> = [
        "serve",
        "--insecure-dev",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--identity",
        &key_path.display().to_string(),
        "--indexer",
        &format!("http://{indexer_addr}"),
        "--report-interval-ms",
        "200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let spawn = || -> Child {
        Command::new(env!("CARGO_BIN_EXE_edge-node"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start edge-node")
    };

    // The indexer is down: reports wait on disk. Then the node dies without a word.
    let mut node = spawn();
    assert!(
        eventually(Duration::from_secs(30), || queued(&outbox_dir).len() >= 6),
        "the node did not queue reports in {}",
        outbox_dir.display()
    );
    node.kill().expect("SIGKILL");
    node.wait().unwrap();
    let before_kill = queued(&outbox_dir);

    // The indexer comes up, then the node again, from the same directory.
    let ledger = tempfile::tempdir().unwrap();
    let indexer = indexer::daemon::Indexer::open(indexer::daemon::DaemonConfig {
        rules: indexer::tally::TallyConfig {
            max_clock_skew_ms: 5_000,
            ..Default::default()
        },
        ledger: ledger.path().join("l.db"),
        orchestrator: Some(format!("http://{}", grid.orchestrator)),
        probes_per_slot: 1,
        registry_refresh: Duration::from_secs(60),
        forget_after: Duration::from_secs(3_600),
        ledger_max_bytes: None,
    })
    .unwrap();
    grid.runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(indexer_addr).await.unwrap();
        tokio::spawn(indexer::daemon::serve(
            listener,
            Arc::clone(&indexer),
            std::future::pending(),
        ));
    });
    let mut node = spawn();
    let credited = || indexer.reports_of(&key.node_id()).unwrap();
    let last_before = *before_kill.last().unwrap();
    assert!(
        eventually(Duration::from_secs(30), || {
            credited().iter().filter(|(s, _)| *s > last_before).count() >= 3
        }),
        "the restarted node's new reports did not arrive"
    );
    let got: Vec<u64> = credited().iter().map(|(s, _)| *s).collect();
    for s in &before_kill {
        assert!(
            got.contains(s),
            "report {s}, queued before kill -9, was never credited (credited: {got:?})"
        );
    }
    let times: Vec<u64> = credited().iter().map(|(_, t)| *t).collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "times advance with sequences"
    );
    // Each was acknowledged, so nothing waits and a second crash resends nothing.
    assert!(
        eventually(Duration::from_secs(10), || queued(&outbox_dir).len() <= 1),
        "acknowledged reports stay queued: {:?}",
        queued(&outbox_dir)
    );
    node.kill().expect("SIGKILL");
    node.wait().unwrap();
    let replays = |ix: &indexer::daemon::Indexer| {
        ix.counters
            .reports()
            .into_iter()
            .find(|(v, _)| *v == indexer::tally::Verdict::Replayed)
            .map_or(0, |(_, n)| n)
    };
    let mut node = spawn();
    let count = credited().len();
    assert!(
        eventually(Duration::from_secs(30), || credited().len() >= count + 3),
        "reports stopped after the second restart"
    );
    node.kill().unwrap();
    node.wait().unwrap();
    assert!(
        replays(&indexer) <= 1,
        "only a report in flight at the moment of a kill may be sent twice (and is refused): {}",
        replays(&indexer)
    );
}

/// `edge-node stake`: the operator stakes on the node with its identity key; an impossible
/// withdrawal is refused with the reason, and nothing changes.
#[test]
fn the_operator_stakes_with_the_node_key_and_an_impossible_withdrawal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 0, 1);
    let key_path = dir.path().join("node.key");
    let (key, _) = NodeKey::load_or_create(&key_path).unwrap();
    let ledger = tempfile::tempdir().unwrap();
    let indexer = indexer::daemon::Indexer::open(indexer::daemon::DaemonConfig {
        rules: indexer::tally::TallyConfig::default(),
        ledger: ledger.path().join("l.db"),
        orchestrator: Some(format!("http://{}", grid.orchestrator)),
        probes_per_slot: 1,
        registry_refresh: Duration::from_secs(60),
        forget_after: Duration::from_secs(3_600),
        ledger_max_bytes: None,
    })
    .unwrap();
    let url = grid.runtime.block_on(async {
        grid.client()
            .await
            .register_node(signed_registration(&key, 1))
            .await
            .expect("registration");
        indexer.refresh_registry().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(indexer::daemon::serve(
            listener,
            Arc::clone(&indexer),
            std::future::pending(),
        ));
        url
    });
    let stake = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_edge-node"))
            .args(["stake", "--indexer", &url, "--identity"])
            .arg(&key_path)
            .args(args)
            .output()
            .unwrap()
    };
    let ok = stake(&["--deposit", "500000"]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("bonded 500000"),
        "{ok:?}"
    );
    let refused = stake(&["--withdraw", "9000000"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("bonded stake"),
        "{refused:?}"
    );
    let withdrawn = stake(&["--withdraw", "200000"]);
    assert!(
        String::from_utf8_lossy(&withdrawn.stdout)
            .contains("bonded 300000 micro-credits, 200000 being withdrawn"),
        "{withdrawn:?}"
    );
}
