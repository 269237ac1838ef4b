//! Short-lived TURN credentials for one session, the "TURN REST" way that coturn's
//! `use-auth-secret` and most TURN servers accept: the username is `expiry:session`, the
//! password `base64(HMAC-SHA1(shared secret, username))`. The TURN server checks the HMAC and the
//! expiry with the same secret; players never see the secret, and a leaked credential dies with
//! its expiry. Clock-free: `now_unix_s` is an argument.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Where players' TURN relays are and the secret shared with them.
#[derive(Clone)]
pub struct TurnConfig {
    /// `turn:` / `turns:` URLs handed to players.
    pub urls: Vec<String>,
    /// The secret the TURN servers were started with (`static-auth-secret`).
    pub secret: Vec<u8>,
    /// How long a credential works.
    pub ttl_s: u64,
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConfig")
            .field("urls", &self.urls)
            .field("ttl_s", &self.ttl_s)
            .finish_non_exhaustive()
    }
}

/// A credential: (username, password).
pub fn credential(secret: &[u8], session: &str, expires_unix_s: u64) -> (String, String) {
    let username = format!("{expires_unix_s}:{session}");
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

impl TurnConfig {
    /// The ICE server entry for `session`, valid until `now_unix_s + ttl_s`.
    pub fn ice_server(
        &self,
        session: &str,
        now_unix_s: u64,
    ) -> pixelgrid_proto::orchestrator::v1::IceServer {
        let (username, credential) = credential(&self.secret, session, now_unix_s + self.ttl_s);
        pixelgrid_proto::orchestrator::v1::IceServer {
            urls: self.urls.clone(),
            username,
            credential,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_the_turn_rest_hmac_of_expiry_and_session() {
        // Checked against Python's hmac/hashlib/base64 for the same inputs.
        assert_eq!(
            credential(b"north", "abc", 1_795_970_000),
            (
                "1795970000:abc".to_owned(),
                "yOXLEpDsqzLFasm4T0GaUwdCZMg=".to_owned()
            )
        );
        let turn = TurnConfig {
            urls: vec!["turn:127.0.0.1:3478".into()],
            secret: b"north".to_vec(),
            ttl_s: 600,
        };
        let a = turn.ice_server("s1", 1000);
        let b = turn.ice_server("s2", 1000);
        assert_eq!(a.username, "1600:s1");
        assert_ne!(a.credential, b.credential, "one credential per session");
        assert!(
            !format!("{turn:?}").contains("north"),
            "the secret is never printed"
        );
    }
}
