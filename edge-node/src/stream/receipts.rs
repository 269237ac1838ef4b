//! The player's delivery receipts, as the node keeps them for its reports. Clock-free.
//!
//! A player signs a receipt about once a second (see `pixelgrid_proto::receipt`); the node keeps
//! the latest one it can match to what it really sent — signed by the key the session token
//! names, newer than the last, no more frames than the session encoded and no more play time
//! than the session has run — and attaches it, with the session token, to its next signed
//! report. The indexer credits delivery only as far as such receipts attest, so neither a node
//! (it cannot sign for the player) nor a player (the node forwards nothing it did not send) can
//! inflate it.

use pixelgrid_proto::indexer::v1::DeliveryReceipt;
use pixelgrid_proto::receipt::Receipt;

/// Play time a receipt may claim beyond the session's age (clock granularity, start-up), ms.
const AGE_SLACK_MS: u64 = 2_000;

/// Why a receipt was not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptRefused {
    /// The player registered no key with the launch.
    #[error("the session has no player key; receipts cannot be checked")]
    NoPlayerKey,
    /// The signature is not the session player's.
    #[error("the receipt is not signed by the session's player key")]
    BadSignature,
    /// Its sequence, frames or play time went back.
    #[error("the receipt is not newer than the last one kept")]
    NotNewer,
    /// It claims frames the node never encoded.
    #[error("the receipt claims {claimed} frames; the session encoded {encoded}")]
    MoreFramesThanSent {
        /// Frames claimed.
        claimed: u64,
        /// Frames encoded.
        encoded: u64,
    },
    /// It claims more play than the session has run.
    #[error("the receipt claims {claimed_ms} ms of play; the session is {age_ms} ms old")]
    LongerThanSession {
        /// Play claimed, ms.
        claimed_ms: u64,
        /// Session age, ms.
        age_ms: u64,
    },
}

/// One session's receipts; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct ReceiptBook {
    session_id: String,
    player_key: String,
    token: String,
    latest: Option<(Receipt, Vec<u8>)>,
    refused: u64,
}

impl ReceiptBook {
    /// A book for `session_id`, whose token named `player_key` (hex; empty: none).
    pub fn new(session_id: &str, player_key: &str) -> Self {
        Self {
            session_id: session_id.to_owned(),
            player_key: player_key.to_owned(),
            ..Self::default()
        }
    }

    /// The session token the player presented (sent with the receipts, as proof of placement).
    pub fn set_token(&mut self, token: &str) {
        if self.token.is_empty() {
            self.token = token.to_owned();
        }
    }

    /// Keeps `receipt` when it checks out against what the session really did so far.
    pub fn offer(
        &mut self,
        receipt: Receipt,
        signature: Vec<u8>,
        frames_encoded: u64,
        session_age_ms: u64,
    ) -> Result<(), ReceiptRefused> {
        let verdict = self.check(&receipt, &signature, frames_encoded, session_age_ms);
        match verdict {
            Ok(()) => self.latest = Some((receipt, signature)),
            Err(_) => self.refused += 1,
        }
        verdict
    }

    fn check(
        &self,
        r: &Receipt,
        signature: &[u8],
        frames_encoded: u64,
        age_ms: u64,
    ) -> Result<(), ReceiptRefused> {
        if self.player_key.is_empty() {
            return Err(ReceiptRefused::NoPlayerKey);
        }
        if let Some((last, _)) = &self.latest
            && (r.sequence <= last.sequence
                || r.frames < last.frames
                || r.played_ms < last.played_ms)
        {
            return Err(ReceiptRefused::NotNewer);
        }
        if r.frames > frames_encoded {
            return Err(ReceiptRefused::MoreFramesThanSent {
                claimed: r.frames,
                encoded: frames_encoded,
            });
        }
        if r.played_ms > age_ms.saturating_add(AGE_SLACK_MS) {
            return Err(ReceiptRefused::LongerThanSession {
                claimed_ms: r.played_ms,
                age_ms,
            });
        }
        // Last, as the costliest check.
        if !r.verify(&self.session_id, &self.player_key, signature) {
            return Err(ReceiptRefused::BadSignature);
        }
        Ok(())
    }

    /// What goes into the next report: the session token and the latest receipt kept.
    pub fn for_report(&self) -> (String, Option<DeliveryReceipt>) {
        (
            self.token.clone(),
            self.latest.as_ref().map(|(r, sig)| r.to_proto(sig.clone())),
        )
    }

    /// Receipts refused so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixelgrid_proto::receipt::PlayerKey;

    fn receipt(sequence: u64, frames: u64, played_ms: u64) -> Receipt {
        Receipt {
            sequence,
            frames,
            played_ms,
            width: 640,
            height: 360,
            fps: 30,
            at_unix_ms: 1_000 + played_ms,
        }
    }

    #[test]
    fn the_node_keeps_only_receipts_it_can_match_to_what_it_sent() {
        let player = PlayerKey::from_seed(&[1; 32]);
        let mut book = ReceiptBook::new("s", &player.public_hex());
        book.set_token("v4.public.token");
        let signed = |r: Receipt| (r, player.sign("s", &r));

        let (r, sig) = signed(receipt(1, 30, 1_000));
        assert_eq!(book.offer(r, sig, 40, 1_500), Ok(()));
        let (r, sig) = signed(receipt(2, 500, 2_000));
        assert!(matches!(
            book.offer(r, sig, 70, 2_500),
            Err(ReceiptRefused::MoreFramesThanSent { .. })
        ));
        let (r, sig) = signed(receipt(3, 60, 60_000));
        assert!(matches!(
            book.offer(r, sig, 70, 2_500),
            Err(ReceiptRefused::LongerThanSession { .. })
        ));
        let (r, sig) = signed(receipt(1, 60, 2_000));
        assert_eq!(book.offer(r, sig, 70, 2_500), Err(ReceiptRefused::NotNewer));
        let forger = PlayerKey::from_seed(&[2; 32]);
        let r = receipt(4, 60, 2_000);
        assert_eq!(
            book.offer(r, forger.sign("s", &r), 70, 2_500),
            Err(ReceiptRefused::BadSignature)
        );
        let (r, sig) = signed(receipt(5, 60, 2_000));
        assert_eq!(book.offer(r, sig, 70, 2_500), Ok(()));
        let (token, kept) = book.for_report();
        assert_eq!(token, "v4.public.token");
        let kept = kept.unwrap();
        assert_eq!((kept.sequence, kept.frames, kept.played_ms), (5, 60, 2_000));
        assert_eq!(book.refused(), 4);
    }

    #[test]
    fn without_a_player_key_nothing_is_kept() {
        let player = PlayerKey::from_seed(&[1; 32]);
        let mut book = ReceiptBook::new("s", "");
        let r = receipt(1, 30, 1_000);
        assert_eq!(
            book.offer(r, player.sign("s", &r), 40, 1_500),
            Err(ReceiptRefused::NoPlayerKey)
        );
        assert!(book.for_report().1.is_none());
    }
}
