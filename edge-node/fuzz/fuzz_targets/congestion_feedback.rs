//! Any bytes as a player's RTCP (transport-cc feedback or any other packet type) into the node's
//! congestion-feedback path: it must not panic, and its estimate and the encoder settings the
//! ladder derives must stay within their configured bounds (both are clamped; the assertions
//! guard the clamps). Each input is split at every 0xFF byte into datagrams, fed 50 ms apart
//! with a few packets sent between them.
#![no_main]

use edge_node::stream::congestion::{FeedbackPath, MIN_KBPS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut path = FeedbackPath::new();
    let (low, high) = path.bounds();
    for datagram in data.split(|b| *b == 0xff).take(64) {
        path.send(8);
        let (estimate, shape) = path.feed(datagram);
        assert!(estimate.is_finite() && estimate >= low && estimate <= high, "{estimate}");
        assert!((MIN_KBPS..=FeedbackPath::FULL_KBPS).contains(&shape.bitrate_kbps));
        assert!(shape.fps_divisor == 1 || shape.fps_divisor == 2);
    }
});
