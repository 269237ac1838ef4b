//! Who is calling, and what each caller may do — the rules, free of I/O. [`crate::grid::Grid`]
//! turns a bearer credential into a [`Caller`] (looking up studio keys, checking signatures);
//! every operation then asks the caller here before it touches anything.
//!
//! | credential | caller | may |
//! | --- | --- | --- |
//! | none | [`Caller::Anonymous`] | list games, the public node view, health |
//! | `pgo_…` operator credential | [`Caller::Operator`] | everything; alone: drain, undrain, studios |
//! | `pgk_…` studio API key | [`Caller::Studio`] | mint launch grants; see, end and meter its own sessions |
//! | launch grant (PASETO) | [`Caller::Player`] | one CreateSession, and the ChooseNode of that launch |
//! | session token (PASETO) | [`Caller::SessionHolder`] | see and end that one session |

use crate::grid::SessionRecord;
use crate::{Error, Result};
use pixelgrid_proto::token::{LaunchGrantClaims, SessionClaims};

/// Prefix of the operator credential.
pub const OPERATOR_PREFIX: &str = "pgo_";

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credential.
    Anonymous,
    /// Holds the operator credential.
    Operator,
    /// Holds a working API key of this studio.
    Studio(String),
    /// Holds a valid launch grant.
    Player(LaunchGrantClaims),
    /// Holds a valid session token.
    SessionHolder(SessionClaims),
}

/// The credential in an `authorization` value: `Bearer <credential>` (the scheme in any case).
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?.trim();
    let (scheme, credential) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !credential.trim().is_empty())
        .then(|| credential.trim())
}

/// A fresh operator credential from 32 random bytes.
pub fn new_operator_credential(random: &[u8; 32]) -> String {
    format!("{OPERATOR_PREFIX}{}", pixelgrid_proto::token::hex(random))
}

fn needs(what: &str, who: &str) -> Error {
    Error::Unauthenticated(format!(
        "{what} needs {who}; send it as `authorization: Bearer …`"
    ))
}

impl Caller {
    /// A short description for logs and refusals (never the credential).
    pub fn describe(&self) -> String {
        match self {
            Caller::Anonymous => "an anonymous caller".into(),
            Caller::Operator => "the operator".into(),
            Caller::Studio(s) => format!("studio {s}"),
            Caller::Player(g) => format!("player {} of studio {}", g.player, g.studio),
            Caller::SessionHolder(c) => format!("the holder of session {}'s token", c.sid),
        }
    }

    /// Only the operator may do `what`.
    pub fn require_operator(&self, what: &str) -> Result<()> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Anonymous => Err(needs(what, "the operator credential")),
            other => Err(Error::PermissionDenied(format!(
                "{what} is for operators, not {}",
                other.describe()
            ))),
        }
    }

    /// The studio whose API key this is (`what` is for studios only).
    pub fn require_studio(&self, what: &str) -> Result<&str> {
        match self {
            Caller::Studio(s) => Ok(s),
            Caller::Anonymous => Err(needs(what, "a studio API key")),
            other => Err(Error::PermissionDenied(format!(
                "{what} needs a studio API key, not {}",
                other.describe()
            ))),
        }
    }

    /// The launch grant this caller holds (`what` is a launch step).
    pub fn require_grant(&self, what: &str) -> Result<&LaunchGrantClaims> {
        match self {
            Caller::Player(g) => Ok(g),
            Caller::Anonymous => Err(needs(
                what,
                "a launch grant from the studio's backend (CreateLaunchGrant)",
            )),
            other => Err(Error::PermissionDenied(format!(
                "{what} needs a player's launch grant, not {}; a studio's backend mints one with CreateLaunchGrant",
                other.describe()
            ))),
        }
    }

    /// Which studio's records this caller may list: `None` means every studio (operators).
    pub fn studio_scope(&self, what: &str) -> Result<Option<&str>> {
        match self {
            Caller::Operator => Ok(None),
            Caller::Studio(s) => Ok(Some(s)),
            Caller::Anonymous => Err(needs(what, "a studio API key or the operator credential")),
            other => Err(Error::PermissionDenied(format!(
                "{what} needs a studio API key or the operator credential, not {}",
                other.describe()
            ))),
        }
    }

    /// Whether this caller may see or end `session`: its studio, its player (session token),
    /// or the operator.
    pub fn may_touch(&self, session: &SessionRecord, what: &str) -> Result<()> {
        let allowed = match self {
            Caller::Operator => true,
            Caller::Studio(s) => *s == session.studio,
            Caller::SessionHolder(c) => c.sid == session.id,
            Caller::Player(_) => false,
            Caller::Anonymous => {
                return Err(needs(
                    what,
                    "the session token, the studio's API key or the operator credential",
                ));
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "session {} is not {}'s",
                session.id,
                self.describe()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::SessionState;

    fn session(studio: &str) -> SessionRecord {
        SessionRecord {
            v: 1,
            id: "s1".into(),
            game: "arena".into(),
            node: "n".into(),
            slot: 0,
            width: 640,
            height: 360,
            fps: 30,
            codec: 0,
            state: SessionState::Active,
            created_ms: 0,
            updated_ms: 0,
            reason: String::new(),
            studio: studio.into(),
            player: "p".into(),
            seat: None,
            connected_ms: 0,
        }
    }

    fn holder(sid: &str) -> Caller {
        Caller::SessionHolder(SessionClaims {
            sid: sid.into(),
            nid: "n".into(),
            game: "arena".into(),
            width: 640,
            height: 360,
            fps: 30,
            iat: String::new(),
            exp: String::new(),
            aud: String::new(),
            nbf: String::new(),
            pk: String::new(),
            ..Default::default()
        })
    }

    #[test]
    fn only_the_sessions_own_studio_player_or_operator_may_touch_it() {
        let s = session("acme");
        assert!(Caller::Operator.may_touch(&s, "EndSession").is_ok());
        assert!(Caller::Studio("acme".into()).may_touch(&s, "x").is_ok());
        assert!(holder("s1").may_touch(&s, "x").is_ok());
        assert!(matches!(
            Caller::Studio("rival".into()).may_touch(&s, "x"),
            Err(Error::PermissionDenied(_))
        ));
        assert!(matches!(
            holder("s2").may_touch(&s, "x"),
            Err(Error::PermissionDenied(_))
        ));
        assert!(matches!(
            Caller::Anonymous.may_touch(&s, "x"),
            Err(Error::Unauthenticated(_))
        ));
    }

    #[test]
    fn operator_only_calls_refuse_everyone_else_with_the_right_status() {
        assert!(Caller::Operator.require_operator("DrainNode").is_ok());
        assert!(matches!(
            Caller::Anonymous.require_operator("DrainNode"),
            Err(Error::Unauthenticated(_))
        ));
        let e = Caller::Studio("acme".into())
            .require_operator("DrainNode")
            .unwrap_err();
        assert!(matches!(e, Error::PermissionDenied(_)));
        assert!(e.to_string().contains("studio acme"), "{e}");
        assert_eq!(
            Caller::Studio("acme".into()).studio_scope("x").unwrap(),
            Some("acme")
        );
        assert_eq!(Caller::Operator.studio_scope("x").unwrap(), None);
        assert!(holder("s1").studio_scope("x").is_err());
    }

    #[test]
    fn bearer_values_are_parsed_strictly() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
        assert!(new_operator_credential(&[1; 32]).starts_with("pgo_0101"));
    }
}
