//! `pixelgrid payouts verify` checks a proof offline against a root an indexer published.

use indexer::report::sign;
use indexer::tally::{Tally, TallyConfig};
use pixelgrid_proto::identity::NodeKey;
use pixelgrid_proto::indexer::v1::NodeReport;
use pixelgrid_proto::token::hex;
use pixelgrid_proto::types::v1::NodeId;
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
            let r = sign(
                NodeReport {
                    node_id: Some(NodeId { hex: k.node_id() }),
                    sequence: m + 1,
                    sent_unix_ms: at,
                    ..Default::default()
                },
                k,
            );
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
