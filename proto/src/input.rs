//! The player's input events, as they travel on the `input` data channel (protocol version 1):
//! JSON objects tagged by `kind` (`{"kind":"key","code":"KeyW","down":true}`). Shared by the edge
//! node, which validates them before a game sees them, and the client SDK, which sends them.

use serde::{Deserialize, Serialize};

/// Longest key code accepted (DOM `KeyboardEvent.code` values are at most ~20 characters).
pub const MAX_KEY_CODE_LEN: usize = 32;
/// Gamepad axes tracked (standard mapping uses 4).
pub const GAMEPAD_AXES: usize = 8;
/// Gamepad buttons tracked (standard mapping uses 17).
pub const GAMEPAD_BUTTONS: usize = 32;

/// One input event from a player.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InputEvent {
    /// A key went down or up; `code` is the DOM `KeyboardEvent.code` ("KeyW", "ArrowLeft").
    Key {
        /// Physical key code.
        code: String,
        /// True on press, false on release.
        down: bool,
    },
    /// The pointer is at a position in the picture, each coordinate 0.0..=1.0 from top-left.
    PointerMove {
        /// Horizontal position, 0 = left edge.
        x: f32,
        /// Vertical position, 0 = top edge.
        y: f32,
    },
    /// Relative pointer motion in picture pixels (pointer lock).
    PointerMotion {
        /// Rightwards motion.
        dx: f32,
        /// Downwards motion.
        dy: f32,
    },
    /// A mouse button (0 = primary) went down or up.
    MouseButton {
        /// Button index as in DOM `MouseEvent.button`.
        button: u8,
        /// True on press.
        down: bool,
    },
    /// Wheel scrolled, in lines.
    Wheel {
        /// Horizontal lines.
        dx: f32,
        /// Vertical lines (positive = down).
        dy: f32,
    },
    /// A gamepad button changed.
    GamepadButton {
        /// Button index in the standard mapping.
        index: u8,
        /// True while pressed.
        pressed: bool,
    },
    /// A gamepad axis moved.
    GamepadAxis {
        /// Axis index in the standard mapping (0/1 left stick, 2/3 right stick).
        index: u8,
        /// Position, -1.0..=1.0.
        value: f32,
    },
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputRejected {
    /// A key code that is empty, too long or not printable ASCII.
    #[error("bad key code")]
    BadKeyCode,
    /// A coordinate or axis value that is NaN, infinite or out of range.
    #[error("value out of range")]
    OutOfRange,
    /// A button or axis index beyond what is tracked.
    #[error("index out of range")]
    BadIndex,
}

impl InputEvent {
    /// Checks the event's values; untrusted events must pass before they reach a game.
    pub fn validate(&self) -> Result<(), InputRejected> {
        let finite_in = |v: f32, lim: f32| v.is_finite() && v.abs() <= lim;
        match self {
            InputEvent::Key { code, .. } => {
                let ok = !code.is_empty()
                    && code.len() <= MAX_KEY_CODE_LEN
                    && code.bytes().all(|b| b.is_ascii_alphanumeric());
                ok.then_some(()).ok_or(InputRejected::BadKeyCode)
            }
            InputEvent::PointerMove { x, y } => {
                let ok = (0.0..=1.0).contains(x) && (0.0..=1.0).contains(y);
                ok.then_some(()).ok_or(InputRejected::OutOfRange)
            }
            InputEvent::PointerMotion { dx, dy } | InputEvent::Wheel { dx, dy } => {
                let ok = finite_in(*dx, 10_000.0) && finite_in(*dy, 10_000.0);
                ok.then_some(()).ok_or(InputRejected::OutOfRange)
            }
            InputEvent::MouseButton { button, .. } => {
                (*button < 8).then_some(()).ok_or(InputRejected::BadIndex)
            }
            InputEvent::GamepadButton { index, .. } => (usize::from(*index) < GAMEPAD_BUTTONS)
                .then_some(())
                .ok_or(InputRejected::BadIndex),
            InputEvent::GamepadAxis { index, value } => {
                if usize::from(*index) >= GAMEPAD_AXES {
                    return Err(InputRejected::BadIndex);
                }
                finite_in(*value, 1.0)
                    .then_some(())
                    .ok_or(InputRejected::OutOfRange)
            }
        }
    }
}
