//! A session's life, as a state machine with no clock: events (and `now` where time matters)
//! in, the next state or a refusal out.
//!
//! ```text
//! pending ──player connected──▶ active ──ended by player/operator──▶ ended
//!    │ ╲                           │
//!    │  ╲──reservation ran out──▶ expired
//!    └──node lost / dropped──▶ failed ◀──node lost / dropped──┘
//! ```
//! Ended, expired and failed are final: the slot is free and the record stays for its retention.

use serde::{Deserialize, Serialize};

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// A slot is reserved; the player has not connected.
    Pending,
    /// The node reported the player connected.
    Active,
    /// Ended by the player or an operator.
    Ended,
    /// The node was lost or dropped it.
    Failed,
    /// The player never connected before the reservation ran out.
    Expired,
}

impl SessionState {
    /// Final states hold no slot.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SessionState::Ended | SessionState::Failed | SessionState::Expired
        )
    }
}

/// What can happen to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// The node reported the player connected.
    Connected,
    /// The player or an operator ended it.
    End,
    /// The node's registration lapsed, or it reported the session gone.
    NodeLost,
    /// Time passed; `now_ms` and when the session was created decide whether the reservation
    /// ran out.
    Tick {
        /// Now, Unix ms.
        now_ms: u64,
        /// When the session was created, Unix ms.
        created_ms: u64,
        /// How long a reservation waits for its player, ms.
        reservation_ttl_ms: u64,
    },
}

/// The state after `event`, or `None` when the event changes nothing (final states absorb
/// everything; a tick before the deadline is nothing).
pub fn next(state: SessionState, event: SessionEvent) -> Option<SessionState> {
    use SessionEvent as E;
    use SessionState as S;
    match (state, event) {
        (s, _) if s.is_final() => None,
        (S::Pending, E::Connected) => Some(S::Active),
        (S::Active, E::Connected) => None,
        (_, E::End) => Some(S::Ended),
        (_, E::NodeLost) => Some(S::Failed),
        (
            S::Pending,
            E::Tick {
                now_ms,
                created_ms,
                reservation_ttl_ms,
            },
        ) => (now_ms.saturating_sub(created_ms) >= reservation_ttl_ms).then_some(S::Expired),
        (S::Active, E::Tick { .. }) => None,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionEvent as E;
    use SessionState as S;

    fn tick(now_ms: u64) -> SessionEvent {
        E::Tick {
            now_ms,
            created_ms: 1_000,
            reservation_ttl_ms: 30_000,
        }
    }

    #[test]
    fn a_player_who_connects_makes_the_session_active_and_ending_frees_it() {
        assert_eq!(next(S::Pending, E::Connected), Some(S::Active));
        assert_eq!(
            next(S::Active, tick(1_000_000)),
            None,
            "active sessions do not expire"
        );
        assert_eq!(next(S::Active, E::End), Some(S::Ended));
    }

    #[test]
    fn a_reservation_expires_exactly_at_its_deadline() {
        assert_eq!(next(S::Pending, tick(30_999)), None);
        assert_eq!(next(S::Pending, tick(31_000)), Some(S::Expired));
    }

    #[test]
    fn node_loss_fails_pending_and_active_sessions() {
        assert_eq!(next(S::Pending, E::NodeLost), Some(S::Failed));
        assert_eq!(next(S::Active, E::NodeLost), Some(S::Failed));
    }

    #[test]
    fn final_states_absorb_everything() {
        for s in [S::Ended, S::Failed, S::Expired] {
            for e in [E::Connected, E::End, E::NodeLost, tick(u64::MAX)] {
                assert_eq!(next(s, e), None, "{s:?} + {e:?}");
            }
        }
    }
}
