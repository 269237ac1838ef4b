//! Arbitrary bytes as a `SignedNodeReport` from the wire, through the tally: decoding and
//! ingesting must never panic, and anything not signed by the known node credits nothing.
#![no_main]

use indexer::tally::{Tally, TallyConfig, Verdict};
use libfuzzer_sys::fuzz_target;
use pixelgrid_proto::identity::NodeKey;
use pixelgrid_proto::indexer::v1::SignedNodeReport;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(report) = SignedNodeReport::decode(data) else {
        return;
    };
    let known = NodeKey::from_seed(&[7; 32]);
    let mut tally = Tally::new(TallyConfig::default());
    tally.add_node(&known.node_id());
    let now = report.report.as_ref().map_or(0, |r| r.sent_unix_ms);
    let verdict = tally.ingest(&report, now);
    // Nobody but the holder of the known key can produce an accepted report.
    assert_ne!(verdict, Verdict::Accepted);
    let batch = tally.ingest_batch(&[report.clone(), report], now);
    assert!(batch.iter().all(|v| *v != Verdict::Accepted));
    let _ = tally.close_epoch(now / TallyConfig::default().epoch_ms);
});
