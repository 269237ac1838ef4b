//! Session tokens: what the orchestrator signs and an edge node checks before it streams.
//!
//! Format: [PASETO v4.public](https://github.com/paseto-standard/paseto-spec) — an ed25519
//! signature over the "pre-authentication encoding" (PAE) of the header `v4.public.`, the JSON
//! claims, an empty footer and an empty implicit assertion; the token is
//! `v4.public.` + base64url(claims ‖ signature), unpadded. Any PASETO v4 library can check one.
//!
//! Claims (JSON): `sid` session id, `nid` node id (hex public key), `aud` (the same node id, as
//! PASETO registers the audience), `game`, `width`, `height`, `fps`, `iat`, `nbf` and `exp`
//! (RFC 3339 UTC, second precision), and `pk`, the player's delivery-receipt key, when the
//! player registered one, and `price` (micro-credits per minute) and `studio`, who pays for it,
//! when someone does. The footer is `{"kid":"…"}`: the first 16 hex characters
//! of the signing public key, so a verifier trusting several keys (during a rotation) picks the
//! right one. Launch grants ([`LaunchGrantClaims`]) use the same format with their own claims.
//!
//! Why our own ~150 lines rather than the `pasetors` crate: verification here is clock-free
//! (`now` is an argument, so every expiry rule is tested on a virtual clock), where `pasetors`
//! validates against the wall clock; ed25519 comes from the maintained `ed25519-dalek`; and the
//! encoding is checked against the specification's own PAE vectors and a v4.public test vector.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

const HEADER: &str = "v4.public.";
/// Longest token accepted; real ones are about 300 bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a session token grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Audience: the node id the token is for (equal to `nid`); empty in tokens from before it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub aud: String,
    /// Not valid before (RFC 3339 UTC); empty means from `iat`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nbf: String,
    /// The player's receipt key for this session (hex ed25519 public key); empty when the
    /// player registered none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pk: String,
    /// What the studio pays for this session, micro-credits per minute of play its player's
    /// receipts attest: the node's asking price when the orchestrator placed it. 0 (absent) is a
    /// session nobody pays for (the network's own delivery reward still applies).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub price: u64,
    /// The studio that pays for it; empty when none does (a player without a studio).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub studio: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl SessionClaims {
    /// When the token is valid, unix ms: from `nbf` (or `iat`) until `exp`. An unreadable time
    /// gives an empty period (from `u64::MAX`, until 0).
    pub fn validity_ms(&self) -> (u64, u64) {
        let from = if self.nbf.is_empty() {
            &self.iat
        } else {
            &self.nbf
        };
        let ms = |t: &str| parse_rfc3339(t).map(|s| s.saturating_mul(1000));
        (ms(from).unwrap_or(u64::MAX), ms(&self.exp).unwrap_or(0))
    }
}

/// A studio's single-use permission for one player to launch (see the orchestrator's
/// `CreateLaunchGrant`). Signed by the orchestrator like session tokens; never accepted by nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchGrantClaims {
    /// Always [`LaunchGrantClaims::PURPOSE`]: a session token can never pass for a grant.
    pub purpose: String,
    /// The studio whose limits and usage the launch counts against.
    pub studio: String,
    /// The studio's own name for the player (opaque to the grid).
    pub player: String,
    /// The one game it may launch; empty means any game the studio may launch.
    #[serde(default)]
    pub game: String,
    /// Unique id: a grant starts one launch, once.
    pub jti: String,
    /// Issued at (RFC 3339 UTC).
    pub iat: String,
    /// Expires at (RFC 3339 UTC).
    pub exp: String,
}

impl LaunchGrantClaims {
    /// The `purpose` every grant carries.
    pub const PURPOSE: &'static str = "pixelgrid-launch-grant";
}

#[derive(Deserialize)]
struct Validity {
    exp: String,
    #[serde(default)]
    nbf: String,
}

#[derive(Serialize, Deserialize)]
struct Footer {
    kid: String,
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
    /// `nbf` is still in the future.
    #[error("session token is not valid before {0}")]
    NotYetValid(String),
    /// The session already ended on this node: a token starts one session, once.
    #[error("session {0} has ended; its token starts nothing again — launch again")]
    SessionEnded(String),
    /// The footer names a key this verifier does not trust.
    #[error("session token is signed with key {0}, which this node does not trust")]
    UnknownKey(String),
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
            keys: vec![self.key.verifying_key()],
        }
    }

    /// Lowercase hex of the public key.
    pub fn public_key_hex(&self) -> String {
        hex(self.key.verifying_key().as_bytes())
    }

    /// The key id put in every token's footer: the first 16 hex characters of the public key.
    pub fn key_id(&self) -> String {
        key_id(&self.key.verifying_key())
    }

    /// Signs session `claims` into a token.
    pub fn sign(&self, claims: &SessionClaims) -> String {
        self.sign_claims(claims)
    }

    /// Signs any JSON claims (session token or launch grant) with the `kid` footer.
    pub fn sign_claims(&self, claims: &impl Serialize) -> String {
        let message = serde_json::to_vec(claims).expect("claims serialise");
        let footer = serde_json::to_vec(&Footer { kid: self.key_id() }).expect("footer");
        self.sign_raw(&message, &footer)
    }

    fn sign_raw(&self, message: &[u8], footer: &[u8]) -> String {
        let signature = self
            .key
            .sign(&pae(&[HEADER.as_bytes(), message, footer, b""]));
        let mut body = message.to_vec();
        body.extend_from_slice(&signature.to_bytes());
        let mut token = format!("{HEADER}{}", URL_SAFE_NO_PAD.encode(body));
        if !footer.is_empty() {
            token.push('.');
            token.push_str(&URL_SAFE_NO_PAD.encode(footer));
        }
        token
    }
}

fn key_id(key: &VerifyingKey) -> String {
    hex(&key.as_bytes()[..8])
}

/// Checks tokens against the orchestrator keys it trusts: one normally, two while the
/// orchestrator's signing key rotates (old and new, picked by the footer's `kid`).
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    keys: Vec<VerifyingKey>,
}

/// Clock skew allowed on `nbf`: a node whose clock is a little behind the orchestrator's still
/// takes a token issued a moment ago.
pub const NBF_LEEWAY_S: u64 = 60;

impl TokenVerifier {
    /// A verifier from the lowercase hex of an ed25519 public key.
    pub fn from_hex(public_key: &str) -> Result<Self, TokenError> {
        Self::from_hex_keys(&[public_key])
    }

    /// A verifier trusting each of `public_keys` (hex), e.g. the old and the new key during a
    /// rotation.
    pub fn from_hex_keys(public_keys: &[&str]) -> Result<Self, TokenError> {
        let mut keys = Vec::new();
        for k in public_keys {
            let bytes = unhex(k.trim()).filter(|b| b.len() == 32).ok_or_else(|| {
                TokenError::Malformed("public key must be 64 hex characters".into())
            })?;
            keys.push(
                VerifyingKey::from_bytes(bytes.as_slice().try_into().expect("32 bytes"))
                    .map_err(|_| TokenError::Malformed("not an ed25519 public key".into()))?,
            );
        }
        if keys.is_empty() {
            return Err(TokenError::Malformed("no public key to trust".into()));
        }
        Ok(Self { keys })
    }

    /// The key ids trusted, in order.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(key_id).collect()
    }

    /// Whether `public_key_hex` is one of the trusted keys.
    pub fn trusts(&self, public_key_hex: &str) -> bool {
        self.keys
            .iter()
            .any(|k| hex(k.as_bytes()) == public_key_hex.trim().to_ascii_lowercase())
    }

    /// Checks a session token's signature, `nbf` and expiry (against `now_unix_s`) and returns
    /// the claims.
    pub fn verify(&self, token: &str, now_unix_s: u64) -> Result<SessionClaims, TokenError> {
        let claims: SessionClaims = self.verify_claims(token, now_unix_s)?;
        if !claims.aud.is_empty() && claims.aud != claims.nid {
            return Err(TokenError::Malformed("aud and nid differ".into()));
        }
        Ok(claims)
    }

    /// Checks a launch grant (signature, purpose, expiry).
    pub fn verify_grant(
        &self,
        token: &str,
        now_unix_s: u64,
    ) -> Result<LaunchGrantClaims, TokenError> {
        let claims: LaunchGrantClaims = self.verify_claims(token, now_unix_s)?;
        if claims.purpose != LaunchGrantClaims::PURPOSE {
            return Err(TokenError::Malformed("not a launch grant".into()));
        }
        Ok(claims)
    }

    /// Checks a session token's signature and shape but not its validity period, for those who
    /// judge a token at a time of their own (the indexer, at the time of the report carrying it:
    /// [`SessionClaims::valid_at`]).
    pub fn verify_timeless(&self, token: &str) -> Result<SessionClaims, TokenError> {
        session_claims(&self.signed_message(token)?)
    }

    /// [`Self::verify_timeless`] for many tokens at once: their signatures checked as one batch
    /// (about twice as fast as one by one: the indexer meets every session's token once), and
    /// each alone when the batch fails, so one bad token cannot sink or hide the others.
    pub fn verify_timeless_batch(&self, tokens: &[&str]) -> Vec<Result<SessionClaims, TokenError>> {
        let parts: Vec<Result<SignedParts, TokenError>> =
            tokens.iter().map(|t| self.signed_parts(t)).collect();
        // Only tokens naming one trusted key can join the batch.
        let batchable: Vec<&SignedParts> = parts
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .filter(|p| p.keys.len() == 1)
            .collect();
        let batch_ok = !batchable.is_empty() && {
            let texts: Vec<&[u8]> = batchable.iter().map(|p| p.signed.as_slice()).collect();
            let sigs: Vec<Signature> = batchable.iter().map(|p| p.signature).collect();
            let keys: Vec<VerifyingKey> = batchable.iter().map(|p| p.keys[0]).collect();
            ed25519_dalek::verify_batch(&texts, &sigs, &keys).is_ok()
        };
        parts
            .into_iter()
            .map(|p| {
                let p = p?;
                if batch_ok && p.keys.len() == 1 {
                    Ok(p.claims)
                } else {
                    p.verified()
                }
                .and_then(|message| session_claims(&message))
            })
            .collect()
    }

    /// Checks the signature, `nbf` and `exp` of any token and parses its claims as `T`.
    pub fn verify_claims<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        now_unix_s: u64,
    ) -> Result<T, TokenError> {
        let message = self.signed_message(token)?;
        let message = message.as_slice();
        let validity: Validity = serde_json::from_slice(message)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        let exp = parse_rfc3339(&validity.exp)
            .ok_or_else(|| TokenError::Malformed("exp is not RFC 3339 UTC".into()))?;
        if now_unix_s >= exp {
            return Err(TokenError::Expired(validity.exp));
        }
        if !validity.nbf.is_empty() {
            let nbf = parse_rfc3339(&validity.nbf)
                .ok_or_else(|| TokenError::Malformed("nbf is not RFC 3339 UTC".into()))?;
            if now_unix_s + NBF_LEEWAY_S < nbf {
                return Err(TokenError::NotYetValid(validity.nbf));
            }
        }
        serde_json::from_slice(message).map_err(|e| TokenError::Malformed(format!("claims: {e}")))
    }

    /// The claims bytes of a token whose signature verifies for a trusted key.
    fn signed_message(&self, token: &str) -> Result<Vec<u8>, TokenError> {
        self.signed_parts(token)?.verified()
    }

    /// A token taken apart (not yet verified): what was signed, the signature, the trusted keys
    /// that may have signed it and the claims bytes.
    fn signed_parts(&self, token: &str) -> Result<SignedParts, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed(format!(
                "longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let rest = token
            .strip_prefix(HEADER)
            .ok_or_else(|| TokenError::Malformed("not a v4.public token".into()))?;
        let (body, footer) = match rest.split_once('.') {
            Some((body, footer)) => (body, Some(footer)),
            None => (rest, None),
        };
        let footer = footer
            .map(|f| {
                URL_SAFE_NO_PAD
                    .decode(f)
                    .map_err(|_| TokenError::Malformed("footer is not base64url".into()))
            })
            .transpose()?
            .unwrap_or_default();
        // A footer must name the key; without one, any trusted key may have signed.
        let candidates: Vec<VerifyingKey> = if footer.is_empty() {
            self.keys.clone()
        } else {
            let f: Footer = serde_json::from_slice(&footer)
                .map_err(|_| TokenError::Malformed("footer is not {\"kid\":…}".into()))?;
            let found: Vec<_> = self
                .keys
                .iter()
                .filter(|k| key_id(k) == f.kid)
                .copied()
                .collect();
            if found.is_empty() {
                return Err(TokenError::UnknownKey(f.kid.chars().take(32).collect()));
            }
            found
        };
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
        Ok(SignedParts {
            signed: pae(&[HEADER.as_bytes(), message, &footer, b""]),
            signature,
            keys: candidates,
            claims: message.to_vec(),
        })
    }
}

/// A token taken apart by [`TokenVerifier::signed_parts`].
struct SignedParts {
    signed: Vec<u8>,
    signature: Signature,
    keys: Vec<VerifyingKey>,
    claims: Vec<u8>,
}

impl SignedParts {
    /// The claims bytes, when one of the keys signed them (strictly checked).
    fn verified(self) -> Result<Vec<u8>, TokenError> {
        if self
            .keys
            .iter()
            .any(|k| k.verify_strict(&self.signed, &self.signature).is_ok())
        {
            Ok(self.claims)
        } else {
            Err(TokenError::BadSignature)
        }
    }
}

/// A session token's claims from its verified bytes.
fn session_claims(message: &[u8]) -> Result<SessionClaims, TokenError> {
    let claims: SessionClaims = serde_json::from_slice(message)
        .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
    if !claims.aud.is_empty() && claims.aud != claims.nid {
        return Err(TokenError::Malformed("aud and nid differ".into()));
    }
    Ok(claims)
}

/// Lowercase hex (the `hex` crate).
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// Parses hex (either case); `None` on odd length or a non-hex character.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    ::hex::decode(s).ok()
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

    #[test]
    fn a_batch_of_tokens_gets_the_verdict_each_would_get_alone() {
        let signer = TokenSigner::from_seed(&[1; 32]);
        let verifier = TokenVerifier::from_hex(&signer.public_key_hex()).unwrap();
        let good = signer.sign(&claims(100));
        let also_good = signer.sign(&SessionClaims {
            sid: "another".into(),
            ..claims(200)
        });
        // One character of the claims changed after signing.
        let mut forged = good.clone().into_bytes();
        let i = HEADER.len() + 8;
        forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        let foreign = TokenSigner::from_seed(&[2; 32]).sign(&claims(100));
        let tokens = [
            good.as_str(),
            forged.as_str(),
            foreign.as_str(),
            "v4.public.junk",
            also_good.as_str(),
        ];
        let batch = verifier.verify_timeless_batch(&tokens);
        for (token, verdict) in tokens.iter().zip(&batch) {
            assert_eq!(verdict, &verifier.verify_timeless(token), "{token}");
        }
        assert!(batch[0].is_ok() && batch[4].is_ok());
        assert!(batch[1].is_err() && batch[2].is_err() && batch[3].is_err());
        // All good: the batch alone decides.
        let all_good = verifier.verify_timeless_batch(&[good.as_str(), also_good.as_str()]);
        assert_eq!(all_good[1].as_ref().unwrap().sid, "another");
    }

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
            aud: "ab".repeat(32),
            nbf: format_rfc3339(exp - 60),
            pk: String::new(),
            ..Default::default()
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
        assert!(matches!(
            other.verify(&token, 0),
            Err(TokenError::UnknownKey(_))
        ));
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
            &format!("{token}.e30"),
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
    fn during_a_rotation_both_keys_verify_and_a_third_is_refused_by_kid() {
        let old = TokenSigner::from_seed(&[1; 32]);
        let new = TokenSigner::from_seed(&[2; 32]);
        let both =
            TokenVerifier::from_hex_keys(&[&old.public_key_hex(), &new.public_key_hex()]).unwrap();
        for s in [&old, &new] {
            assert_eq!(both.verify(&s.sign(&claims(1000)), 950).unwrap().sid, "s-1");
        }
        let stranger = TokenSigner::from_seed(&[3; 32]);
        assert!(matches!(
            both.verify(&stranger.sign(&claims(1000)), 950),
            Err(TokenError::UnknownKey(_))
        ));
        assert!(both.trusts(&new.public_key_hex()) && !both.trusts(&stranger.public_key_hex()));
    }

    #[test]
    fn nbf_in_the_future_is_refused_beyond_the_leeway() {
        let signer = TokenSigner::from_seed(&[7; 32]);
        let mut c = claims(10_000);
        c.nbf = format_rfc3339(5_000);
        let t = signer.sign(&c);
        assert!(matches!(
            signer.verifier().verify(&t, 5_000 - NBF_LEEWAY_S - 1),
            Err(TokenError::NotYetValid(_))
        ));
        assert!(signer.verifier().verify(&t, 5_000 - NBF_LEEWAY_S).is_ok());
    }

    #[test]
    fn a_grant_is_never_a_session_token_and_the_other_way_round() {
        let signer = TokenSigner::from_seed(&[7; 32]);
        let v = signer.verifier();
        let grant = signer.sign_claims(&LaunchGrantClaims {
            purpose: LaunchGrantClaims::PURPOSE.into(),
            studio: "acme".into(),
            player: "p1".into(),
            game: String::new(),
            jti: "j1".into(),
            iat: format_rfc3339(0),
            exp: format_rfc3339(1000),
        });
        assert_eq!(v.verify_grant(&grant, 10).unwrap().studio, "acme");
        assert!(matches!(
            v.verify(&grant, 10),
            Err(TokenError::Malformed(_))
        ));
        let session = signer.sign(&claims(1000));
        assert!(matches!(
            v.verify_grant(&session, 950),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn signing_matches_the_specification_vector_4_s_2() {
        // PASETO's published test vector 4-S-2 (v4.public with a footer).
        let seed: [u8; 32] =
            unhex("b4cbfb43df4ce210727d953e4a713307fa19bb7d9f85041438d9e11b942a3774")
                .unwrap()
                .try_into()
                .unwrap();
        let token = TokenSigner::from_seed(&seed).sign_raw(
            br#"{"data":"this is a signed message","exp":"2022-01-01T00:00:00+00:00"}"#,
            br#"{"kid":"zVhMiPBP9fRf2snEcT7gFTioeA9COcNy9DfgL1W60haN"}"#,
        );
        assert_eq!(
            token,
            "v4.public.eyJkYXRhIjoidGhpcyBpcyBhIHNpZ25lZCBtZXNzYWdlIiwiZXhwIjoiMjAyMi0wMS0wMVQwMDowMDowMCswMDowMCJ9v3Jt8mx_TdM2ceTGoqwrh4yDFn0XsHvvV_D0DtwQxVrJEBMl0F2caAdgnpKlt4p7xBnx1HcO-SPo8FPp214HDw.eyJraWQiOiJ6VmhNaVBCUDlmUmYyc25FY1Q3Z0ZUaW9lQTlDT2NOeTlEZmdMMVc2MGhhTiJ9"
        );
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
