//! Session tokens: what the orchestrator signs and an edge node checks before it streams.
//!
//! Format: [PASETO v4.public](https://github.com/paseto-standard/paseto-spec) — an ed25519
//! signature over the "pre-authentication encoding" (PAE) of the header `v4.public.`, the JSON
//! claims, an empty footer and an empty implicit assertion; the token is
//! `v4.public.` + base64url(claims ‖ signature), unpadded. Any PASETO v4 library can check one.
//!
//! Claims (JSON): `sid` session id, `nid` node id (hex public key), `game`, `width`, `height`,
//! `fps`, `iat` and `exp` (RFC 3339 UTC, second precision, as PASETO registers them).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

const HEADER: &str = "v4.public.";
/// Longest token accepted; real ones are about 300 bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a session token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// Session id.
    pub sid: String,
    /// Node id: lowercase hex of the serving node's ed25519 public key.
    pub nid: String,
    /// Game identifier.
    pub game: String,
    /// Picture width, pixels.
    pub width: u32,
    /// Picture height, pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Issued at (RFC 3339 UTC).
    pub iat: String,
    /// Expires at (RFC 3339 UTC).
    pub exp: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a PASETO v4.public token, or its claims are not the documented JSON.
    #[error("malformed session token: {0}")]
    Malformed(String),
    /// The signature does not verify against the trusted key.
    #[error("session token signature is not valid for the trusted orchestrator key")]
    BadSignature,
    /// `exp` is in the past.
    #[error("session token expired at {0}")]
    Expired(String),
    /// The token is for another node.
    #[error("session token is for node {0}, not this one")]
    WrongNode(String),
    /// The token is for another session.
    #[error("session token is for session {0}, not this one")]
    WrongSession(String),
}

/// PASETO's pre-authentication encoding: the piece count, then each piece's length and bytes,
/// lengths as little-endian u64 with the top bit clear.
fn pae(pieces: &[&[u8]]) -> Vec<u8> {
    let le64 = |n: usize| ((n as u64) & !(1 << 63)).to_le_bytes();
    let mut out = Vec::with_capacity(8 + pieces.iter().map(|p| 8 + p.len()).sum::<usize>());
    out.extend_from_slice(&le64(pieces.len()));
    for p in pieces {
        out.extend_from_slice(&le64(p.len()));
        out.extend_from_slice(p);
    }
    out
}

/// Signs tokens (the orchestrator, or a node in `--insecure-dev` mode).
#[derive(Debug, Clone)]
pub struct TokenSigner {
    key: SigningKey,
}

impl TokenSigner {
    /// A signer with a fresh random key.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ok(Self::from_seed(&seed))
    }

    /// A signer from a 32-byte ed25519 seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The matching verifier.
    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier {
            key: self.key.verifying_key(),
        }
    }

    /// Lowercase hex of the public key.
    pub fn public_key_hex(&self) -> String {
        hex(self.key.verifying_key().as_bytes())
    }

    /// Signs `claims` into a token.
    pub fn sign(&self, claims: &SessionClaims) -> String {
        let message = serde_json::to_vec(claims).expect("claims serialise");
        let signature = self
            .key
            .sign(&pae(&[HEADER.as_bytes(), &message, b"", b""]));
        let mut body = message;
        body.extend_from_slice(&signature.to_bytes());
        format!("{HEADER}{}", URL_SAFE_NO_PAD.encode(body))
    }
}

/// Checks tokens against one trusted public key.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    key: VerifyingKey,
}

impl TokenVerifier {
    /// A verifier from the lowercase hex of an ed25519 public key.
    pub fn from_hex(public_key: &str) -> Result<Self, TokenError> {
        let bytes = unhex(public_key.trim())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| TokenError::Malformed("public key must be 64 hex characters".into()))?;
        let key = VerifyingKey::from_bytes(bytes.as_slice().try_into().expect("32 bytes"))
            .map_err(|_| TokenError::Malformed("not an ed25519 public key".into()))?;
        Ok(Self { key })
    }

    /// Checks the signature and expiry (against `now_unix_s`) and returns the claims.
    pub fn verify(&self, token: &str, now_unix_s: u64) -> Result<SessionClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed(format!(
                "longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let body = token
            .strip_prefix(HEADER)
            .ok_or_else(|| TokenError::Malformed("not a v4.public token".into()))?;
        if body.contains('.') {
            return Err(TokenError::Malformed("footers are not used".into()));
        }
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed("body is not base64url".into()))?;
        if raw.len() < 64 {
            return Err(TokenError::Malformed(
                "too short to hold a signature".into(),
            ));
        }
        let (message, sig) = raw.split_at(raw.len() - 64);
        let signature = Signature::from_slice(sig).map_err(|_| TokenError::BadSignature)?;
        self.key
            .verify_strict(&pae(&[HEADER.as_bytes(), message, b"", b""]), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: SessionClaims = serde_json::from_slice(message)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        let exp = parse_rfc3339(&claims.exp)
            .ok_or_else(|| TokenError::Malformed("exp is not RFC 3339 UTC".into()))?;
        if now_unix_s >= exp {
            return Err(TokenError::Expired(claims.exp));
        }
        Ok(claims)
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses hex (either case); `None` on odd length or a non-hex character.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

// Days since 1970-01-01 for a civil date, and back (Howard Hinnant's algorithms).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Formats Unix seconds as RFC 3339 UTC (`2026-11-25T07:00:00Z`).
pub fn format_rfc3339(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Parses exactly the form [`format_rfc3339`] writes.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 || y < 1970
    {
        return None;
    }
    let days = days_from_civil(i64::from(y), mo, d);
    Some(days as u64 * 86_400 + u64::from(h) * 3600 + u64::from(mi) * 60 + u64::from(se))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> SessionClaims {
        SessionClaims {
            sid: "s-1".into(),
            nid: "ab".repeat(32),
            game: "arena".into(),
            width: 1280,
            height: 720,
            fps: 60,
            iat: format_rfc3339(exp - 60),
            exp: format_rfc3339(exp),
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let signer = TokenSigner::from_seed(&[7; 32]);
        let token = signer.sign(&claims(1_000_000));
        assert!(token.starts_with("v4.public."));
        let v = signer.verifier();
        assert_eq!(v.verify(&token, 999_999).unwrap(), claims(1_000_000));
        assert!(matches!(
            v.verify(&token, 1_000_000),
            Err(TokenError::Expired(_))
        ));
    }

    #[test]
    fn tampered_foreign_and_garbled_tokens_are_refused() {
        let signer = TokenSigner::from_seed(&[7; 32]);
        let token = signer.sign(&claims(1_000_000));
        let other = TokenSigner::from_seed(&[8; 32]).verifier();
        assert_eq!(other.verify(&token, 0), Err(TokenError::BadSignature));
        // Flip one character of the claims part.
        let mut bytes = token.clone().into_bytes();
        bytes[20] = if bytes[20] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(
            signer.verifier().verify(&tampered, 0),
            Err(TokenError::BadSignature)
        );
        for bad in [
            "",
            "v4.public.",
            "v4.local.abc",
            "v4.public.!!!",
            &format!("{token}.footer"),
            &"x".repeat(5000),
        ] {
            assert!(
                matches!(
                    signer.verifier().verify(bad, 0),
                    Err(TokenError::Malformed(_))
                ),
                "{bad:.40}"
            );
        }
    }

    #[test]
    fn pae_matches_the_paseto_specification_examples() {
        assert_eq!(pae(&[]), [0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            pae(&[b""]),
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let mut test = vec![1, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0];
        test.extend_from_slice(b"test");
        assert_eq!(pae(&[b"test"]), test);
    }

    #[test]
    fn timestamps_round_trip_and_known_dates_match() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(parse_rfc3339("2026-11-25T07:00:00Z"), Some(1_795_590_000));
        for t in [0, 86_399, 951_782_400, 1_795_590_000, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t));
        }
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-11-25 07:00:00Z",
            "2026-11-25T07:00:00+01:00",
            "soon",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(unhex("00ABff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn mutated_tokens_are_refused_without_panicking() {
        let signer = TokenSigner::from_seed(&[7; 32]);
        let token = signer.sign(&claims(2_000_000_000));
        let v = signer.verifier();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..5_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut t = token.clone().into_bytes();
            let at = (rng as usize) % t.len();
            t[at] = b"AZaz09-_.!"[(rng >> 32) as usize % 10];
            if let Ok(text) = String::from_utf8(t) {
                // Either the byte did not change, or the token is now refused.
                if text != token {
                    assert!(
                        v.verify(&text, 0).is_err(),
                        "a mutated token verified: {text}"
                    );
                }
            }
        }
    }
}
