//! `pixelgrid payouts verify` checks a proof offline against a root an indexer published.

use indexer::report::ready;
use indexer::tally::{Tally, TallyConfig};
use pixelgrid_proto::identity::NodeKey;
use pixelgrid_proto::token::hex;
use std::process::Command;

#[test]
fn a_published_payout_verifies_and_a_tampered_one_does_not() {
    let keys: Vec<NodeKey> = (1..=3).map(|i| NodeKey::from_seed(&[i; 32])).collect();
    let mut t = Tally::new(TallyConfig {
        sla_floor_ppm: 0,
        ..TallyConfig::default()
    });
    for (n, k) in keys.iter().enumerate() {
        t.add_node(&k.node_id());
        for m in 0..(20 + 10 * n as u64) {
            let at = m * 60_000 + 1_000;
            let r = ready(k, m + 1, at, vec![]);
            t.ingest(&r, at);
            t.record_probe(&k.node_id(), at + 5_000, true);
        }
    }
    let epoch = t.close_epoch(0).clone();
    let node = keys[1].node_id();
    let (amount, proof) = epoch.proof(&node).unwrap();
    let run = |amount: u64| {
        let siblings: Vec<String> = proof.siblings.iter().map(|s| hex(s)).collect();
        Command::new(env!("CARGO_BIN_EXE_pixelgrid"))
            .args([
                "payouts",
                "verify",
                "--root",
                &hex(&epoch.root),
                "--node",
                &node,
            ])
            .args([
                "--amount",
                &amount.to_string(),
                "--index",
                &proof.index.to_string(),
                "--count",
                &proof.count.to_string(),
            ])
            .args(["--siblings", &siblings.join(",")])
            .output()
            .unwrap()
    };
    let ok = run(amount);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("valid"));
    let bad = run(amount + 1);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).starts_with("INVALID"));
    let garbled = Command::new(env!("CARGO_BIN_EXE_pixelgrid"))
        .args([
            "payouts", "verify", "--root", "xyz", "--node", &node, "--amount", "1", "--index", "0",
            "--count", "1",
        ])
        .output()
        .unwrap();
    assert_eq!(garbled.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&garbled.stderr).contains("invalid --root"));
}

/// Against a running indexer: `pixelgrid epochs` lists the closed epoch, `pixelgrid payouts N`
/// shows the node's payout, and the command `pixelgrid payouts proof` prints verifies it.
#[test]
fn the_cli_reads_a_running_indexer_and_the_proof_it_prints_verifies() {
    use indexer::daemon::{DaemonConfig, Indexer, now_ms};
    use pixelgrid_proto::indexer::v1::SessionDelivery;
    use pixelgrid_proto::types::v1::VideoMode;
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = pixelgrid_proto::token::TokenSigner::from_seed(&[11; 32]);
    let rules = TallyConfig {
        epoch_ms: 2_000,
        slot_ms: 500,
        max_clock_skew_ms: 1_000,
        max_report_delay_ms: 500,
        sla_floor_ppm: 0,
        orchestrator_keys: vec![orchestrator.public_key_hex()],
        ..TallyConfig::default()
    };
    let key = NodeKey::from_seed(&[9; 32]);
    // The session the orchestrator placed on the node, and its player's receipt key.
    let player = pixelgrid_proto::receipt::PlayerKey::from_seed(&[10; 32]);
    let now_s = now_ms() / 1000;
    let token = orchestrator.sign(&pixelgrid_proto::token::SessionClaims {
        sid: "s1".into(),
        nid: key.node_id(),
        game: "arena".into(),
        width: 1280,
        height: 720,
        fps: 60,
        iat: pixelgrid_proto::token::format_rfc3339(now_s - 10),
        exp: pixelgrid_proto::token::format_rfc3339(now_s + 3_600),
        aud: key.node_id(),
        nbf: String::new(),
        pk: player.public_hex(),
        ..Default::default()
    });
    let ledger = dir.path().join("ledger.db");
    // A node the indexer knows (as if read from the registry); its probe address answers nothing.
    indexer::ledger::Ledger::open(&ledger, &rules)
        .unwrap()
        .add_node(&key.node_id(), "127.0.0.1:9")
        .unwrap();
    let daemon = Indexer::open(DaemonConfig {
        rules: rules.clone(),
        ledger,
        orchestrator: None,
        probes_per_slot: 1,
        registry_refresh: std::time::Duration::from_secs(60),
        forget_after: std::time::Duration::from_secs(3_600),
        ledger_max_bytes: None,
    })
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(indexer::daemon::serve(
        listener,
        std::sync::Arc::clone(&daemon),
        std::future::pending(),
    ));
    // Reports delivering a 720p60 session through the next whole epoch.
    let epoch = now_ms() / rules.epoch_ms + 1;
    let mode = Some(VideoMode {
        width_px: 1280,
        height_px: 720,
        fps: 60,
    });
    let mut seq = 0;
    while now_ms() < (epoch + 1) * rules.epoch_ms + 100 {
        seq += 1;
        // What the player signed: 200 ms more play each time, at the promised mode.
        let receipt = pixelgrid_proto::receipt::Receipt {
            sequence: seq,
            frames: seq * 12,
            played_ms: seq * 200,
            width: 1280,
            height: 720,
            fps: 60,
            at_unix_ms: now_ms(),
        };
        let r = ready(
            &key,
            seq,
            now_ms(),
            vec![SessionDelivery {
                session_id: "s1".into(),
                promised: mode,
                achieved: mode,
                delivered_ms: 200,
                dropped_by_node: false,
                session_token: token.clone(),
                receipt: Some(receipt.to_proto(player.sign("s1", &receipt))),
            }],
        );
        daemon.ingest(&[r], now_ms()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pixelgrid"))
            .args(args)
            .args(["--indexer", &url])
            .output()
            .unwrap()
    };
    assert!(
        pixelgrid_tests::eventually(std::time::Duration::from_secs(5), || {
            String::from_utf8_lossy(&cli(&["epochs", "--json"]).stdout)
                .contains(&format!("\"epoch\":{epoch}"))
        }),
        "the epoch closes and is listed"
    );
    let payouts = cli(&["payouts", &epoch.to_string(), "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&payouts.stdout).unwrap();
    // The node's row, and the treasury's (the protocol fee on its delivery).
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == key.node_id().as_str())
        .expect("the node's payout");
    let treasury = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == indexer::tally::TREASURY)
        .expect("the treasury's leaf");
    assert!(
        treasury["amount_micro_credits"].as_u64().unwrap() > 0,
        "{treasury}"
    );
    assert_eq!(row["uptime_ms"], 0, "no probe answered: no uptime");
    assert!(row["delivered_ms"].as_u64().unwrap() >= 1_800, "{row}");
    assert!(row["amount_micro_credits"].as_u64().unwrap() > 0);

    let proof = cli(&["payouts", "proof", &epoch.to_string(), &key.node_id()]);
    let line = String::from_utf8(proof.stdout).unwrap();
    let args: Vec<String> = line
        .split_whitespace()
        .skip(1)
        .map(|a| a.trim_matches('\'').to_owned())
        .collect();
    let verify = |args: &[String]| {
        Command::new(env!("CARGO_BIN_EXE_pixelgrid"))
            .args(args)
            .status()
            .unwrap()
    };
    assert!(verify(&args).success(), "{line}");
    let amount = args.iter().position(|a| a == "--amount").unwrap() + 1;
    let mut tampered = args.clone();
    tampered[amount] = (args[amount].parse::<u64>().unwrap() + 1).to_string();
    assert_eq!(verify(&tampered).code(), Some(1), "a tampered amount fails");
}
