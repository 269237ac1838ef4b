//! Delivery receipts: what a player signs about the stream it received.
//!
//! The player's SDK makes an ed25519 key pair for each session and registers the public key with
//! the launch (`ChooseNodeRequest.player_key`); the orchestrator puts it in the session token
//! (claim `pk`). While playing, the SDK signs a [`Receipt`] about once a second and sends it to
//! the node on the data channel; the node attaches the latest one to its signed reports, and the
//! indexer credits delivery only as far as receipts attest.
//!
//! The signature covers plain text, so any client (a browser with WebCrypto, another language)
//! can produce it: `"pixelgrid/receipt/v1\n"` then session id, sequence, frames, played_ms,
//! width, height, fps and at_unix_ms, each in decimal and each followed by `"\n"`.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Longest session id a receipt may name, bytes.
pub const MAX_SESSION_ID: usize = 128;

/// What a player attests, for one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Receipt {
    /// Strictly increasing per session.
    pub sequence: u64,
    /// Frames decoded since the session started.
    pub frames: u64,
    /// Milliseconds of picture played since the first frame.
    pub played_ms: u64,
    /// Decoded width, pixels.
    pub width: u32,
    /// Decoded height, pixels.
    pub height: u32,
    /// Measured frame rate.
    pub fps: u32,
    /// The player's clock when it signed, Unix ms.
    pub at_unix_ms: u64,
}

impl Receipt {
    /// The exact bytes the player signs for `session_id`.
    pub fn signed_text(&self, session_id: &str) -> Vec<u8> {
        format!(
            "pixelgrid/receipt/v1\n{session_id}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
            self.sequence,
            self.frames,
            self.played_ms,
            self.width,
            self.height,
            self.fps,
            self.at_unix_ms
        )
        .into_bytes()
    }

    /// True when `signature` is the player key `player_key_hex`'s over this receipt for
    /// `session_id`.
    pub fn verify(&self, session_id: &str, player_key_hex: &str, signature: &[u8]) -> bool {
        let Some(key) = crate::token::unhex(player_key_hex)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(signature) else {
            return false;
        };
        session_id.len() <= MAX_SESSION_ID
            && key
                .verify_strict(&self.signed_text(session_id), &sig)
                .is_ok()
    }

    /// As the indexer protocol carries it, with `signature`.
    pub fn to_proto(&self, signature: Vec<u8>) -> crate::indexer::v1::DeliveryReceipt {
        crate::indexer::v1::DeliveryReceipt {
            sequence: self.sequence,
            frames: self.frames,
            played_ms: self.played_ms,
            mode: Some(crate::types::v1::VideoMode {
                width_px: self.width,
                height_px: self.height,
                fps: self.fps,
            }),
            at_unix_ms: self.at_unix_ms,
            signature,
        }
    }

    /// From the indexer protocol's form (the signature stays there).
    pub fn from_proto(r: &crate::indexer::v1::DeliveryReceipt) -> Self {
        let mode = r.mode.unwrap_or_default();
        Self {
            sequence: r.sequence,
            frames: r.frames,
            played_ms: r.played_ms,
            width: mode.width_px,
            height: mode.height_px,
            fps: mode.fps,
            at_unix_ms: r.at_unix_ms,
        }
    }
}

/// The key pair a player makes for one session.
#[derive(Clone)]
pub struct PlayerKey(SigningKey);

impl std::fmt::Debug for PlayerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PlayerKey")
            .field(&self.public_hex())
            .finish()
    }
}

impl PlayerKey {
    /// A fresh key pair.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ok(Self::from_seed(&seed))
    }

    /// A key pair from a seed (tests).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    /// The public key, 32 bytes (what `ChooseNodeRequest.player_key` carries).
    pub fn public_bytes(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// The public key, hex (what the token's `pk` claim carries).
    pub fn public_hex(&self) -> String {
        crate::token::hex(&self.public_bytes())
    }

    /// Signs a receipt for `session_id`; the 64-byte signature.
    pub fn sign(&self, session_id: &str, receipt: &Receipt) -> Vec<u8> {
        self.0
            .sign(&receipt.signed_text(session_id))
            .to_bytes()
            .to_vec()
    }
}

/// Checks a registered player key: 32 bytes of a valid ed25519 point, as hex; empty stays empty.
pub fn player_key_hex(bytes: &[u8]) -> Result<String, String> {
    if bytes.is_empty() {
        return Ok(String::new());
    }
    <[u8; 32]>::try_from(bytes)
        .ok()
        .filter(|b| VerifyingKey::from_bytes(b).is_ok())
        .map(|_| crate::token::hex(bytes))
        .ok_or_else(|| {
            format!(
                "{} bytes is not an ed25519 public key (32 bytes, or none)",
                bytes.len()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_verifies_only_for_its_session_key_and_content() {
        let key = PlayerKey::from_seed(&[3; 32]);
        let r = Receipt {
            sequence: 4,
            frames: 120,
            played_ms: 4_000,
            width: 1280,
            height: 720,
            fps: 30,
            at_unix_ms: 1_700_000_000_000,
        };
        let sig = key.sign("s1", &r);
        assert!(r.verify("s1", &key.public_hex(), &sig));
        assert!(!r.verify("s2", &key.public_hex(), &sig), "another session");
        let more = Receipt {
            played_ms: 40_000,
            ..r
        };
        assert!(!more.verify("s1", &key.public_hex(), &sig), "inflated");
        let other = PlayerKey::from_seed(&[4; 32]);
        assert!(!r.verify("s1", &other.public_hex(), &sig), "another key");
        assert!(!r.verify("s1", "zz", &sig));
        assert!(!r.verify("s1", &key.public_hex(), &sig[..10]));
        assert_eq!(
            String::from_utf8(r.signed_text("s1")).unwrap(),
            "pixelgrid/receipt/v1\ns1\n4\n120\n4000\n1280\n720\n30\n1700000000000\n"
        );
        assert_eq!(
            Receipt::from_proto(&r.to_proto(sig.clone())),
            r,
            "round trip"
        );
    }

    #[test]
    fn registered_player_keys_are_checked() {
        let key = PlayerKey::from_seed(&[5; 32]);
        assert_eq!(
            player_key_hex(&key.public_bytes()).unwrap(),
            key.public_hex()
        );
        assert_eq!(player_key_hex(&[]).unwrap(), "");
        assert!(player_key_hex(&[1; 31]).unwrap_err().contains("31 bytes"));
    }
}
