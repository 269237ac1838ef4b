//! Arbitrary report fields, correctly signed by a known node, through the tally and into the
//! ledger, twice: whatever the numbers (sequences and times up to 2^64, thousands of sessions),
//! nothing panics, the ledger takes every accepted report, and nothing is accepted twice.
#![no_main]

use indexer::ledger::Ledger;
use indexer::tally::{Tally, TallyConfig, Verdict};
use libfuzzer_sys::fuzz_target;
use pixelgrid_proto::identity::NodeKey;
use pixelgrid_proto::indexer::v1::NodeReport;
use pixelgrid_proto::types::v1::NodeId;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(mut report) = NodeReport::decode(data) else {
        return;
    };
    let known = NodeKey::from_seed(&[7; 32]);
    report.node_id = Some(NodeId {
        hex: known.node_id(),
    });
    let signed = indexer::report::sign(report, &known);
    let rules = TallyConfig::default();
    let mut tally = Tally::new(rules.clone());
    tally.add_node(&known.node_id());
    let mut ledger = Ledger::open(std::path::Path::new(":memory:"), &rules).expect("ledger");
    let now = signed.report.as_ref().map_or(0, |r| r.sent_unix_ms);
    for round in 0..2 {
        let verdict = tally.ingest(&signed, now);
        if verdict == Verdict::Accepted {
            assert_eq!(round, 0, "accepted twice");
            let epoch = tally.epoch_of(now);
            ledger
                .append_reports(&[(&signed, epoch, now)], &tally.take_attested())
                .expect("the ledger holds every accepted report");
        }
    }
    let _ = tally.close_epoch(now / rules.epoch_ms);
});
