//! The data-channel protocol between a player and the node, version 1, and the gate every
//! player message passes before it reaches a game.
//!
//! All messages are JSON text on the data channel labelled `input`:
//!
//! | from | `type` | fields |
//! | --- | --- | --- |
//! | player | `input` | `v`: 1, `events`: list of `{t, kind, …}` — `t` is the player's clock in ms, `kind` one of `key` (`code`, `down`), `pointer_move` (`x`, `y` in 0..1), `pointer_motion` (`dx`, `dy`), `mouse_button` (`button`, `down`), `wheel` (`dx`, `dy`), `gamepad_button` (`index`, `pressed`), `gamepad_axis` (`index`, `value`) |
//! | player | `ping` | `v`: 1, `t`: the player's clock in ms |
//! | player | `keyframe` | `v`: 1 |
//! | player | `challenge` | `v`: 1, `nonce` (0..=999,999,999): draw it on every frame from now on (a checker's proof of live rendering, see `pixelgrid_proto::challenge`); built-in games only; at most one per 500 ms |
//! | player | `receipt` | `v`: 1, `seq`, `frames`, `played_ms`, `width`, `height`, `fps`, `at` (Unix ms), `sig` (hex ed25519 signature by the session's player key, see `pixelgrid_proto::receipt`); at most one per 500 ms |
//! | node | `hello` | session, codec, mode, encoder, `rtp_epoch`, `epoch_unix_ms` and `keepalive_ms` (see [`NodeMessage::Hello`]) |
//! | node | `frame` | per frame: RTP timestamp, capture time, where the time went |
//! | node | `pong` | the ping's `t` and the node's clock |
//! | node | `stats` | once a second: session and input counters |
//! | node | `alive` | none; every 100 ms ([`KEEPALIVE_EVERY`]): the node is up even while its game holds pictures back, so players can tell a lost node within half a second |
//!
//! Limits ([`InputLimits`]): messages over 4 KiB, more than 64 events in one message, events
//! beyond 500/s (burst 250), unknown versions, types or kinds and out-of-range values are dropped
//! and counted; the stream goes on. A player silent for 5 s has every key released.

use crate::input::{InputEvent, InputRejected};
use serde::{Deserialize, Serialize};

/// How often the node says it is alive on the data channel. Players decide a node is lost after
/// several of these go missing (the SDKs: 500 ms of nothing at all).
pub const KEEPALIVE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Protocol version this node speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Limits applied to one player's messages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputLimits {
    /// Largest message, bytes.
    pub max_message_bytes: usize,
    /// Most events in one message.
    pub max_events_per_message: usize,
    /// Sustained events per second.
    pub events_per_second: f64,
    /// Events allowed in a burst.
    pub burst: f64,
    /// Silence after which held keys are released, ms.
    pub silence_release_ms: u64,
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4096,
            max_events_per_message: 64,
            events_per_second: 500.0,
            burst: 250.0,
            silence_release_ms: 5000,
        }
    }
}

/// One input event with the player's timestamp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimedInput {
    /// Player's clock when the event happened, ms.
    pub t: f64,
    /// The event.
    #[serde(flatten)]
    pub event: InputEvent,
}

#[derive(Debug, Deserialize)]
struct Envelope {
    v: u32,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    t: Option<f64>,
    #[serde(default)]
    events: Option<Vec<serde_json::Value>>,
}

/// A player message that passed the gate.
#[derive(Debug, Clone, PartialEq)]
pub enum PlayerMessage {
    /// Input events to apply, in order (invalid or rate-limited ones already removed).
    Input(Vec<TimedInput>),
    /// Clock and round-trip probe.
    Ping {
        /// Player's clock, ms.
        t: f64,
    },
    /// The player wants a keyframe.
    Keyframe,
    /// A render challenge: draw this nonce into the picture.
    Challenge(u32),
    /// A delivery receipt the player signed (checked against the session by the node).
    Receipt {
        /// What it attests.
        receipt: pixelgrid_proto::receipt::Receipt,
        /// The player's signature, 64 bytes.
        signature: Vec<u8>,
    },
}

/// A `receipt` message's fields.
#[derive(Debug, Deserialize)]
struct ReceiptFields {
    seq: u64,
    frames: u64,
    played_ms: u64,
    width: u32,
    height: u32,
    fps: u32,
    at: u64,
    sig: String,
}

/// Receipts closer together than this are dropped, ms.
pub const MIN_RECEIPT_INTERVAL_MS: u64 = 500;

/// Why a message (or part of one) was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Dropped {
    /// Larger than [`InputLimits::max_message_bytes`].
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Not JSON, or not the protocol's shape.
    #[error("garbled message: {0}")]
    Garbled(String),
    /// A `v` this node does not speak.
    #[error("protocol version {0} is not supported")]
    Version(u32),
    /// An unknown `type`.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// More than [`InputLimits::max_events_per_message`] events.
    #[error("{0} events in one message is over the limit")]
    TooManyEvents(usize),
    /// A receipt sooner than [`MIN_RECEIPT_INTERVAL_MS`] after the previous one.
    #[error("receipts come at most every {MIN_RECEIPT_INTERVAL_MS} ms")]
    TooFrequent,
}

/// The outcome of one message.
#[derive(Debug, Clone, PartialEq)]
pub struct GateOutcome {
    /// What to act on, if anything survived.
    pub message: Option<PlayerMessage>,
    /// Events dropped from it (invalid, unknown kind, or over the rate).
    pub events_dropped: u32,
}

/// Checks one player's messages against [`InputLimits`]; clock-free (times are arguments).
#[derive(Debug, Clone)]
pub struct InputGate {
    limits: InputLimits,
    tokens: f64,
    refilled_ms: Option<u64>,
    last_heard_ms: Option<u64>,
    released: bool,
    last_receipt_ms: Option<u64>,
    last_challenge_ms: Option<u64>,
}

impl InputGate {
    /// A gate with a full burst allowance.
    pub fn new(limits: InputLimits) -> Self {
        Self {
            limits,
            tokens: limits.burst,
            refilled_ms: None,
            last_heard_ms: None,
            released: true,
            last_receipt_ms: None,
            last_challenge_ms: None,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        if let Some(then) = self.refilled_ms {
            let gained =
                now_ms.saturating_sub(then) as f64 * self.limits.events_per_second / 1000.0;
            self.tokens = (self.tokens + gained).min(self.limits.burst);
        }
        self.refilled_ms = Some(now_ms);
    }

    /// Checks one message received at `now_ms`.
    pub fn admit(&mut self, now_ms: u64, bytes: &[u8]) -> Result<GateOutcome, Dropped> {
        if bytes.len() > self.limits.max_message_bytes {
            return Err(Dropped::TooLarge(bytes.len()));
        }
        self.last_heard_ms = Some(now_ms);
        self.released = false;
        let env: Envelope =
            serde_json::from_slice(bytes).map_err(|e| Dropped::Garbled(e.to_string()))?;
        if env.v != PROTOCOL_VERSION {
            return Err(Dropped::Version(env.v));
        }
        let message = match env.kind.as_str() {
            "ping" => PlayerMessage::Ping {
                t: env
                    .t
                    .filter(|t| t.is_finite())
                    .ok_or_else(|| Dropped::Garbled("ping without t".into()))?,
            },
            "keyframe" => PlayerMessage::Keyframe,
            "challenge" => {
                if self
                    .last_challenge_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) < MIN_RECEIPT_INTERVAL_MS)
                {
                    return Err(Dropped::TooFrequent);
                }
                #[derive(Deserialize)]
                struct Nonce {
                    nonce: u32,
                }
                let n: Nonce =
                    serde_json::from_slice(bytes).map_err(|e| Dropped::Garbled(e.to_string()))?;
                if n.nonce > pixelgrid_proto::challenge::MAX_NONCE {
                    return Err(Dropped::Garbled("nonce over 999,999,999".into()));
                }
                self.last_challenge_ms = Some(now_ms);
                PlayerMessage::Challenge(n.nonce)
            }
            "receipt" => {
                if self
                    .last_receipt_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) < MIN_RECEIPT_INTERVAL_MS)
                {
                    return Err(Dropped::TooFrequent);
                }
                let f: ReceiptFields =
                    serde_json::from_slice(bytes).map_err(|e| Dropped::Garbled(e.to_string()))?;
                let signature = pixelgrid_proto::token::unhex(&f.sig)
                    .filter(|s| s.len() == 64)
                    .ok_or_else(|| Dropped::Garbled("sig is not 128 hex digits".into()))?;
                self.last_receipt_ms = Some(now_ms);
                PlayerMessage::Receipt {
                    receipt: pixelgrid_proto::receipt::Receipt {
                        sequence: f.seq,
                        frames: f.frames,
                        played_ms: f.played_ms,
                        width: f.width,
                        height: f.height,
                        fps: f.fps,
                        at_unix_ms: f.at,
                    },
                    signature,
                }
            }
            "input" => {
                let raw = env
                    .events
                    .ok_or_else(|| Dropped::Garbled("input without events".into()))?;
                if raw.len() > self.limits.max_events_per_message {
                    return Err(Dropped::TooManyEvents(raw.len()));
                }
                self.refill(now_ms);
                let mut events = Vec::with_capacity(raw.len());
                let mut dropped = 0;
                for value in raw {
                    let ok = serde_json::from_value::<TimedInput>(value)
                        .ok()
                        .filter(|e| e.t.is_finite() && e.event.validate().is_ok());
                    match ok {
                        Some(e) if self.tokens >= 1.0 => {
                            self.tokens -= 1.0;
                            events.push(e);
                        }
                        _ => dropped += 1,
                    }
                }
                return Ok(GateOutcome {
                    message: (!events.is_empty()).then_some(PlayerMessage::Input(events)),
                    events_dropped: dropped,
                });
            }
            other => return Err(Dropped::UnknownType(other.chars().take(32).collect())),
        };
        Ok(GateOutcome {
            message: Some(message),
            events_dropped: 0,
        })
    }

    /// True once when the player has been silent past the limit: release every held key.
    pub fn silence_elapsed(&mut self, now_ms: u64) -> bool {
        match self.last_heard_ms {
            Some(t)
                if !self.released && now_ms.saturating_sub(t) >= self.limits.silence_release_ms =>
            {
                self.released = true;
                true
            }
            _ => false,
        }
    }
}

/// Per-frame information the node sends so the player can measure glass-to-glass latency.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeMessage {
    /// First message on the channel.
    Hello {
        /// Protocol version.
        v: u32,
        /// Session id.
        session: String,
        /// "h264" or "vp8".
        codec: String,
        /// Encoder element.
        encoder: String,
        /// Width, pixels.
        width: u32,
        /// Height, pixels.
        height: u32,
        /// Frames per second.
        fps: u32,
        /// RTP timestamp of session time 0; a frame captured `ms` after it has RTP timestamp
        /// `rtp_epoch + ms * 90` (mod 2^32), 90 kHz.
        rtp_epoch: u32,
        /// Wall-clock time of session time 0 on the node, Unix ms.
        epoch_unix_ms: f64,
        /// RTP timestamp of session time 0 on the audio track; a sound made `ms` after it has
        /// RTP timestamp `audio_rtp_epoch + ms * 48` (mod 2^32), 48 kHz. Absent without sound.
        #[serde(skip_serializing_if = "Option::is_none")]
        audio_rtp_epoch: Option<u32>,
        /// How often this node sends `alive`, ms: a player may take several missed in a row as
        /// a lost node. Absent from nodes that send none (they send `stats` once a second).
        keepalive_ms: u32,
    },
    /// One encoded frame went out.
    Frame {
        /// Frame number (as drawn in the picture).
        n: u64,
        /// Its RTP timestamp.
        rtp: u32,
        /// Capture time on the node's wall clock, Unix ms.
        capture_unix_ms: f64,
        /// Render time, ms.
        render_ms: f64,
        /// Readback time, ms.
        readback_ms: f64,
        /// Colour conversion, ms.
        convert_ms: f64,
        /// Encode time, ms.
        encode_ms: f64,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's `t`.
        t: f64,
        /// The node's wall clock when it answered, Unix ms.
        node_unix_ms: f64,
    },
    /// The node ended the session (the game exited or crashed); the channel closes next.
    Ended {
        /// Why, e.g. "the game exited with code 0".
        reason: String,
    },
    /// Nothing but "still here", every [`KEEPALIVE_EVERY`].
    Alive {},
    /// Counters, once a second.
    Stats {
        /// Frames encoded so far.
        frames_encoded: u64,
        /// Ticks skipped for running late.
        dropped_late: u64,
        /// Frames skipped because the encoder was busy.
        dropped_encoder_busy: u64,
        /// Frames not sent to this player because it fell behind.
        dropped_send: u64,
        /// Input events applied.
        input_accepted: u64,
        /// Input events and messages dropped.
        input_dropped: u64,
        /// The node's estimate of the link to its players (the lowest of the session's viewers),
        /// kbit/s; 0 before the first congestion feedback.
        #[serde(default)]
        estimate_kbps: u64,
        /// The encoder's target bitrate now, kbit/s.
        #[serde(default)]
        target_kbps: u64,
        /// The frame rate the stream is encoded at now (the congestion ladder may halve it).
        #[serde(default)]
        fps: u64,
    },
}

impl From<InputRejected> for Dropped {
    fn from(e: InputRejected) -> Self {
        Dropped::Garbled(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> InputGate {
        InputGate::new(InputLimits::default())
    }

    #[test]
    fn a_key_press_passes_with_its_timestamp() {
        let msg = br#"{"v":1,"type":"input","events":[{"t":12.5,"kind":"key","code":"ArrowRight","down":true}]}"#;
        let out = gate().admit(0, msg).unwrap();
        assert_eq!(out.events_dropped, 0);
        assert_eq!(
            out.message,
            Some(PlayerMessage::Input(vec![TimedInput {
                t: 12.5,
                event: InputEvent::Key {
                    code: "ArrowRight".into(),
                    down: true
                }
            }]))
        );
    }

    #[test]
    fn garbled_oversized_and_foreign_messages_are_refused() {
        let mut g = gate();
        assert!(matches!(
            g.admit(0, b"\xff\xfe not json"),
            Err(Dropped::Garbled(_))
        ));
        assert!(matches!(
            g.admit(0, &vec![b' '; 5000]),
            Err(Dropped::TooLarge(5000))
        ));
        assert_eq!(
            g.admit(0, br#"{"v":2,"type":"ping","t":1}"#),
            Err(Dropped::Version(2))
        );
        assert!(matches!(
            g.admit(0, br#"{"v":1,"type":"reboot"}"#),
            Err(Dropped::UnknownType(_))
        ));
        let many = format!(
            r#"{{"v":1,"type":"input","events":[{}]}}"#,
            vec![r#"{"t":0,"kind":"wheel","dx":0,"dy":1}"#; 65].join(",")
        );
        assert_eq!(g.admit(0, many.as_bytes()), Err(Dropped::TooManyEvents(65)));
    }

    #[test]
    fn bad_events_are_dropped_and_good_ones_in_the_same_message_kept() {
        let msg = br#"{"v":1,"type":"input","events":[
            {"t":1,"kind":"key","code":"KeyW","down":true},
            {"t":2,"kind":"teleport"},
            {"t":3,"kind":"gamepad_axis","index":0,"value":7.0},
            {"t":4,"kind":"pointer_move","x":0.5,"y":0.5}]}"#;
        let out = gate().admit(0, msg).unwrap();
        assert_eq!(out.events_dropped, 2);
        match out.message {
            Some(PlayerMessage::Input(e)) => assert_eq!(e.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_the_sustained_rate() {
        let limits = InputLimits {
            burst: 10.0,
            events_per_second: 100.0,
            ..InputLimits::default()
        };
        let mut g = InputGate::new(limits);
        let msg = format!(
            r#"{{"v":1,"type":"input","events":[{}]}}"#,
            vec![r#"{"t":0,"kind":"wheel","dx":0,"dy":1}"#; 15].join(",")
        );
        assert_eq!(g.admit(0, msg.as_bytes()).unwrap().events_dropped, 5);
        // 50 ms later, 5 more tokens have accrued.
        assert_eq!(g.admit(50, msg.as_bytes()).unwrap().events_dropped, 10);
    }

    #[test]
    fn silence_releases_keys_once() {
        let mut g = gate();
        assert!(
            !g.silence_elapsed(10_000),
            "nothing heard yet, nothing to release"
        );
        g.admit(1000, br#"{"v":1,"type":"ping","t":1}"#).unwrap();
        assert!(!g.silence_elapsed(5999));
        assert!(g.silence_elapsed(6000));
        assert!(!g.silence_elapsed(9000), "released once");
        g.admit(9000, br#"{"v":1,"type":"ping","t":2}"#).unwrap();
        assert!(g.silence_elapsed(14_000));
    }

    #[test]
    fn node_messages_are_tagged_json() {
        let m = NodeMessage::Pong {
            t: 5.0,
            node_unix_ms: 7.0,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"pong","t":5.0,"node_unix_ms":7.0}"#
        );
    }

    /// Mutations of valid messages (the fuzz target's job, run briefly on every test run):
    /// nothing panics, and whatever passes the gate is valid input.
    #[test]
    fn mutated_messages_never_panic_and_admitted_input_is_valid() {
        let seeds: [&[u8]; 3] = [
            br#"{"v":1,"type":"input","events":[{"t":1,"kind":"key","code":"KeyW","down":true},{"t":2,"kind":"pointer_move","x":0.5,"y":0.25}]}"#,
            br#"{"v":1,"type":"input","events":[{"t":3,"kind":"gamepad_axis","index":1,"value":-0.5}]}"#,
            br#"{"v":1,"type":"ping","t":12}"#,
        ];
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut state = crate::input::InputState::default();
        for i in 0..20_000 {
            let mut m = seeds[i % seeds.len()].to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % m.len().max(1);
                match next() % 4 {
                    0 if !m.is_empty() => m[at] = next() as u8,
                    1 => m.insert(at, b"{}[],:\"0123456789.-e"[(next() % 20) as usize]),
                    2 if !m.is_empty() => {
                        m.remove(at);
                    }
                    _ => m.truncate(at),
                }
            }
            let mut gate = gate();
            if let Ok(GateOutcome {
                message: Some(PlayerMessage::Input(events)),
                ..
            }) = gate.admit(0, &m)
            {
                for e in events {
                    assert!(
                        state.apply(&e.event).is_ok(),
                        "admitted invalid {e:?} from {:?}",
                        String::from_utf8_lossy(&m)
                    );
                }
            }
        }
    }
}
