//! Studios (tenants): who may launch, with which keys, within which limits — the deciding part,
//! clock-free and I/O-free. The grid ([`crate::grid`]) stores [`StudioRecord`]s and asks these
//! functions; [`crate::auth`] turns a request's credential into a caller.
//!
//! An API key is `pgk_<studio>_<key id>_<secret>`: the studio and key id let the orchestrator
//! find the record at once; only the SHA-256 of the whole key is stored (the secret is 128
//! random bits, so a fast hash is enough), compared in constant time. A studio holds several
//! keys at once so it can rotate: add a key, move its backend over, revoke the old one.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Prefix of every studio API key.
pub const API_KEY_PREFIX: &str = "pgk_";
/// Most keys a studio holds (revoked ones included) — rotation needs two or three.
pub const MAX_KEYS: usize = 16;
/// Most games a studio may be limited to by name.
pub const MAX_GAMES: usize = 256;

/// What a studio may use; 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Sessions (pending or active) at once.
    pub max_concurrent: u32,
    /// Minutes played per UTC day, over all its sessions.
    pub max_minutes_per_day: u32,
    /// Largest width a launch may ask for, px.
    pub max_width: u32,
    /// Largest height, px.
    pub max_height: u32,
    /// Highest frame rate.
    pub max_fps: u32,
    /// Highest node price per minute its sessions may be placed at.
    #[serde(default)]
    pub max_price: u64,
}

/// One API key, as stored: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public key id (8 hex characters).
    pub id: String,
    /// Lowercase hex SHA-256 of the whole key.
    pub sha256: String,
    /// When it was made, Unix ms.
    pub created_ms: u64,
    /// When it was revoked, Unix ms; 0 while it works.
    #[serde(default)]
    pub revoked_ms: u64,
}

/// A studio, as stored under `/pixelgrid/v1/studios/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudioRecord {
    /// Record format version.
    pub v: u32,
    /// Studio id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Games its players may launch; empty means every game.
    #[serde(default)]
    pub games: Vec<String>,
    /// Its limits.
    #[serde(default)]
    pub limits: Limits,
    /// Its keys, revoked ones included.
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
    /// Created, Unix ms.
    pub created_ms: u64,
}

/// Checks a studio id: lowercase letters, digits and '-', 1–32 characters (no '_', which
/// separates the parts of an API key).
pub fn check_studio_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 32 {
        return Err("use 1–32 characters".into());
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "{:?}: use lowercase letters, digits and '-'",
            id.chars().take(40).collect::<String>()
        ));
    }
    Ok(())
}

/// Lowercase hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    pixelgrid_proto::token::hex(&Sha256::digest(text.as_bytes()))
}

/// Equal in time independent of where the first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh API key for `studio` from 4 + 16 random bytes: the key (shown once) and its record.
pub fn new_api_key(studio: &str, random: &[u8; 20], now_ms: u64) -> (String, KeyRecord) {
    let id = pixelgrid_proto::token::hex(&random[..4]);
    let key = format!(
        "{API_KEY_PREFIX}{studio}_{id}_{}",
        pixelgrid_proto::token::hex(&random[4..])
    );
    let record = KeyRecord {
        id,
        sha256: sha256_hex(&key),
        created_ms: now_ms,
        revoked_ms: 0,
    };
    (key, record)
}

/// The studio id and key id an API key names, when it has the shape of one.
pub fn parse_api_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(API_KEY_PREFIX)?;
    let mut parts = rest.split('_');
    let (studio, id, secret) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || check_studio_id(studio).is_err() {
        return None;
    }
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 8) && hex(secret, 32)).then_some((studio, id))
}

impl StudioRecord {
    /// Which of this studio's keys `key` is, if it is one that works.
    pub fn authenticate(&self, key: &str) -> Result<&KeyRecord, String> {
        let (_, id) = parse_api_key(key).ok_or("not an API key")?;
        let record = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| format!("studio {} has no key {id}", self.id))?;
        if !constant_time_eq(sha256_hex(key).as_bytes(), record.sha256.as_bytes()) {
            return Err(format!("API key {id} of studio {} does not match", self.id));
        }
        if record.revoked_ms != 0 {
            return Err(format!("API key {id} of studio {} was revoked", self.id));
        }
        Ok(record)
    }

    /// Whether its players may launch `game`.
    pub fn may_launch(&self, game: &str) -> bool {
        self.games.is_empty() || self.games.iter().any(|g| g == game)
    }

    /// Checks a launch's mode against the studio's highest mode.
    pub fn check_mode(&self, width: u32, height: u32, fps: u32) -> Result<(), String> {
        let l = &self.limits;
        for (what, asked, max) in [
            ("width", width, l.max_width),
            ("height", height, l.max_height),
            ("fps", fps, l.max_fps),
        ] {
            if max > 0 && asked > max {
                return Err(format!(
                    "studio {} may launch at most {}x{}@{}; {what} {asked} is over it",
                    self.id,
                    show(l.max_width),
                    show(l.max_height),
                    show(l.max_fps)
                ));
            }
        }
        Ok(())
    }

    /// Checks the day's played minutes (`played_ms_today`, ended and running sessions) against
    /// the daily limit.
    pub fn check_minutes(&self, played_ms_today: u64) -> Result<(), String> {
        let max = u64::from(self.limits.max_minutes_per_day);
        if max > 0 && played_ms_today >= max * 60_000 {
            return Err(format!(
                "studio {} used its {max} minutes for today (UTC); more tomorrow, or ask the operator to raise the limit",
                self.id
            ));
        }
        Ok(())
    }
}

fn show(v: u32) -> String {
    if v == 0 { "any".into() } else { v.to_string() }
}

/// Start of the UTC day holding `unix_ms`.
pub fn day_start_ms(unix_ms: u64) -> u64 {
    unix_ms - unix_ms % 86_400_000
}

/// A token bucket: `burst` launches at once, refilled at `per_minute`; clock-free (`now_ms` is
/// an argument). One per studio and one per client address guard the launch path.
#[derive(Debug, Clone)]
pub struct RateBudget {
    burst: f64,
    per_ms: f64,
    tokens: f64,
    last_ms: u64,
}

impl RateBudget {
    /// A full bucket.
    pub fn new(burst: u32, per_minute: u32, now_ms: u64) -> Self {
        Self {
            burst: f64::from(burst),
            per_ms: f64::from(per_minute) / 60_000.0,
            tokens: f64::from(burst),
            last_ms: now_ms,
        }
    }

    /// Whether the bucket has refilled completely by `now_ms` (its owner has been idle).
    pub fn is_full(&self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.tokens + elapsed * self.per_ms >= self.burst
    }

    /// Takes one token when there is one.
    pub fn try_take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.burst);
        self.last_ms = self.last_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn studio() -> (StudioRecord, String) {
        let (key, record) = new_api_key("acme", &[7; 20], 1000);
        (
            StudioRecord {
                v: 1,
                id: "acme".into(),
                name: "Acme".into(),
                games: vec!["arena".into()],
                limits: Limits {
                    max_concurrent: 2,
                    max_minutes_per_day: 10,
                    max_width: 1280,
                    max_height: 720,
                    max_fps: 60,
                    max_price: 0,
                },
                keys: vec![record],
                created_ms: 1000,
            },
            key,
        )
    }

    #[test]
    fn a_key_authenticates_only_its_studio_until_revoked() {
        let (mut s, key) = studio();
        assert!(key.starts_with("pgk_acme_07070707_"));
        assert_eq!(parse_api_key(&key), Some(("acme", "07070707")));
        assert_eq!(s.authenticate(&key).unwrap().id, "07070707");
        // One character off: refused, and the message never echoes the secret.
        let mut wrong = key.clone();
        wrong.pop();
        wrong.push('0');
        let e = s.authenticate(&wrong).unwrap_err();
        assert!(
            e.contains("does not match") && !e.contains(&wrong[20..]),
            "{e}"
        );
        s.keys[0].revoked_ms = 2000;
        assert!(s.authenticate(&key).unwrap_err().contains("revoked"));
    }

    #[test]
    fn keys_of_the_wrong_shape_are_not_keys() {
        for bad in [
            "",
            "pgk_",
            "pgk_acme_0707_00",
            "pgk_ACME_07070707_00000000000000000000000000000000",
            "pgk_acme_07070707_0000000000000000000000000000000g",
            "pgk_acme_07070707_00000000000000000000000000000000_x",
            "pgo_acme_07070707_00000000000000000000000000000000",
        ] {
            assert_eq!(parse_api_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn studio_ids_are_one_canonical_form() {
        assert!(check_studio_id("acme-games-2").is_ok());
        for bad in ["", "Acme", "acme_games", "a b", &"a".repeat(33)] {
            assert!(check_studio_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mode_games_and_minutes_are_held_to_the_limits() {
        let (s, _) = studio();
        assert!(s.check_mode(1280, 720, 60).is_ok());
        let e = s.check_mode(1920, 1080, 60).unwrap_err();
        assert!(e.contains("1280x720@60") && e.contains("width 1920"), "{e}");
        assert!(s.check_mode(640, 360, 120).is_err());
        assert!(s.may_launch("arena") && !s.may_launch("supertux"));
        assert!(s.check_minutes(9 * 60_000).is_ok());
        assert!(s.check_minutes(10 * 60_000).is_err());
        let open = StudioRecord {
            limits: Limits::default(),
            games: vec![],
            ..s
        };
        assert!(open.check_mode(4096, 4096, 240).is_ok() && open.may_launch("anything"));
        assert!(open.check_minutes(u64::MAX / 2).is_ok());
    }

    #[test]
    fn a_rate_budget_allows_a_burst_then_the_refill_rate() {
        let mut b = RateBudget::new(3, 60, 0);
        assert!((0..3).all(|_| b.try_take(0)));
        assert!(!b.try_take(0));
        assert!(!b.try_take(999));
        assert!(b.try_take(1000));
        // A clock that steps back neither refills nor panics.
        assert!(!b.try_take(500));
        assert!(b.try_take(60_000));
        assert_eq!(day_start_ms(86_400_000 * 3 + 5), 86_400_000 * 3);
    }
}
