//! Check results: what a checker signs about watching a node's stream.
//!
//! A checker (`pixelgrid check`) launches real sessions on one node, sends each a random nonce
//! the node must draw into the live picture ([`crate::challenge`]), and signs what it saw with its
//! own ed25519 key. The indexer counts results only from the checkers its rules name, and takes
//! the majority per node and epoch.
//!
//! The signature covers plain text, so a checker in any language can produce it:
//! `"pixelgrid/check/v1\n"` then node id, session id, nonce, passed (0/1), seen_after_ms, width,
//! height, fps, sessions and at_unix_ms, each in decimal and each followed by `"\n"`.

use crate::identity::NodeKey;
use crate::indexer::v1::{CheckResult, SignedCheckResult};

/// The exact bytes a checker signs for `result`.
pub fn signed_text(result: &CheckResult) -> Vec<u8> {
    let node = result.node_id.as_ref().map_or("", |n| n.hex.as_str());
    let mode = result.mode.unwrap_or_default();
    format!(
        "pixelgrid/check/v1\n{node}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
        result.session_id,
        result.nonce,
        u8::from(result.passed),
        result.seen_after_ms,
        mode.width_px,
        mode.height_px,
        mode.fps,
        result.sessions,
        result.at_unix_ms
    )
    .into_bytes()
}

/// `result` signed by `checker`.
pub fn sign(result: CheckResult, checker: &NodeKey) -> SignedCheckResult {
    let signature = checker.sign(&signed_text(&result)).signature;
    SignedCheckResult {
        result: Some(result),
        checker: checker.node_id(),
        signature,
    }
}

/// True when `signed` carries a result and its checker's valid signature over it (the
/// checker's key in its one canonical spelling).
pub fn verify(signed: &SignedCheckResult) -> bool {
    signed.result.as_ref().is_some_and(|r| {
        crate::identity::verify(&signed.checker, &signed_text(r), &signed.signature)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::v1::{NodeId, VideoMode};

    fn result() -> CheckResult {
        CheckResult {
            node_id: Some(NodeId {
                hex: "ab".repeat(32),
            }),
            session_id: "s-1".into(),
            nonce: 123_456_789,
            passed: true,
            seen_after_ms: 40,
            mode: Some(VideoMode {
                width_px: 640,
                height_px: 360,
                fps: 30,
            }),
            sessions: 1,
            at_unix_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn the_signed_text_is_the_documented_one_and_any_change_breaks_the_signature() {
        assert_eq!(
            String::from_utf8(signed_text(&result())).unwrap(),
            format!(
                "pixelgrid/check/v1\n{}\ns-1\n123456789\n1\n40\n640\n360\n30\n1\n1700000000000\n",
                "ab".repeat(32)
            )
        );
        let key = NodeKey::from_seed(&[7; 32]);
        let signed = sign(result(), &key);
        assert!(verify(&signed));
        let mut flipped = signed.clone();
        flipped.result.as_mut().unwrap().passed = false;
        assert!(
            !verify(&flipped),
            "a failed check cannot pass for a passed one"
        );
        let mut other = signed.clone();
        other.checker = NodeKey::from_seed(&[8; 32]).node_id();
        assert!(
            !verify(&other),
            "another checker's name does not fit the signature"
        );
        let mut shouting = signed;
        shouting.checker = shouting.checker.to_uppercase();
        assert!(!verify(&shouting), "one spelling of a checker's key");
    }
}
