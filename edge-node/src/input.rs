//! Player input: the events a player sends and the state they add up to.
//!
//! Clock-free: [`InputState::apply`] folds events in, the session calls
//! [`InputState::end_frame`] after each game step to clear per-frame motion, and
//! [`InputState::release_all`] when the player's input channel closes or goes silent, so no key
//! stays held for ever.

use std::collections::BTreeSet;

pub use pixelgrid_proto::input::{
    GAMEPAD_AXES, GAMEPAD_BUTTONS, InputEvent, InputRejected, MAX_KEY_CODE_LEN,
};

/// What a player's input adds up to at one moment: held keys and buttons, pointer, axes, and
/// the motion and wheel accumulated since the last game step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputState {
    keys_held: BTreeSet<String>,
    mouse_buttons: u8,
    pointer: Option<(f32, f32)>,
    motion: (f32, f32),
    wheel: (f32, f32),
    gamepad_buttons: u32,
    gamepad_axes: [f32; GAMEPAD_AXES],
}

impl InputState {
    /// Folds one event in. Invalid events are refused and change nothing.
    pub fn apply(&mut self, event: &InputEvent) -> Result<(), InputRejected> {
        event.validate()?;
        match event {
            InputEvent::Key { code, down: true } => {
                self.keys_held.insert(code.clone());
            }
            InputEvent::Key { code, down: false } => {
                self.keys_held.remove(code);
            }
            InputEvent::PointerMove { x, y } => self.pointer = Some((*x, *y)),
            InputEvent::PointerMotion { dx, dy } => {
                self.motion.0 += dx;
                self.motion.1 += dy;
            }
            InputEvent::MouseButton { button, down } => {
                set_bit_u8(&mut self.mouse_buttons, *button, *down);
            }
            InputEvent::Wheel { dx, dy } => {
                self.wheel.0 += dx;
                self.wheel.1 += dy;
            }
            InputEvent::GamepadButton { index, pressed } => {
                let bit = 1u32 << index;
                if *pressed {
                    self.gamepad_buttons |= bit;
                } else {
                    self.gamepad_buttons &= !bit;
                }
            }
            InputEvent::GamepadAxis { index, value } => {
                self.gamepad_axes[usize::from(*index)] = *value;
            }
        }
        Ok(())
    }

    /// Clears what accumulates per game step (relative motion, wheel).
    pub fn end_frame(&mut self) {
        self.motion = (0.0, 0.0);
        self.wheel = (0.0, 0.0);
    }

    /// Lets go of everything: keys, buttons, sticks. Used when the player's channel closes.
    pub fn release_all(&mut self) {
        let pointer = self.pointer;
        *self = Self::default();
        self.pointer = pointer;
    }

    /// True while the key with this DOM code is held.
    pub fn key_held(&self, code: &str) -> bool {
        self.keys_held.contains(code)
    }

    /// Number of keys held now.
    pub fn keys_held_count(&self) -> usize {
        self.keys_held.len()
    }

    /// True while the mouse button is held.
    pub fn mouse_button_held(&self, button: u8) -> bool {
        button < 8 && self.mouse_buttons & (1 << button) != 0
    }

    /// Last absolute pointer position, if the player ever sent one.
    pub fn pointer(&self) -> Option<(f32, f32)> {
        self.pointer
    }

    /// Relative pointer motion since the last step, in pixels.
    pub fn motion(&self) -> (f32, f32) {
        self.motion
    }

    /// Wheel lines since the last step.
    pub fn wheel(&self) -> (f32, f32) {
        self.wheel
    }

    /// True while the gamepad button is pressed.
    pub fn gamepad_button(&self, index: u8) -> bool {
        usize::from(index) < GAMEPAD_BUTTONS && self.gamepad_buttons & (1 << index) != 0
    }

    /// Position of a gamepad axis, 0.0 when unknown.
    pub fn gamepad_axis(&self, index: usize) -> f32 {
        self.gamepad_axes.get(index).copied().unwrap_or(0.0)
    }
}

fn set_bit_u8(bits: &mut u8, index: u8, on: bool) {
    if on {
        *bits |= 1 << index;
    } else {
        *bits &= !(1 << index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: &str, down: bool) -> InputEvent {
        InputEvent::Key {
            code: code.into(),
            down,
        }
    }

    #[test]
    fn keys_are_held_until_released() {
        let mut s = InputState::default();
        s.apply(&key("ArrowLeft", true)).unwrap();
        s.apply(&key("KeyW", true)).unwrap();
        s.apply(&key("ArrowLeft", false)).unwrap();
        assert!(!s.key_held("ArrowLeft"));
        assert!(s.key_held("KeyW"));
    }

    #[test]
    fn release_all_lets_go_of_everything_but_keeps_the_pointer() {
        let mut s = InputState::default();
        s.apply(&key("KeyD", true)).unwrap();
        s.apply(&InputEvent::MouseButton {
            button: 0,
            down: true,
        })
        .unwrap();
        s.apply(&InputEvent::GamepadAxis {
            index: 0,
            value: 0.9,
        })
        .unwrap();
        s.apply(&InputEvent::PointerMove { x: 0.25, y: 0.75 })
            .unwrap();
        s.release_all();
        assert_eq!(s.keys_held_count(), 0);
        assert!(!s.mouse_button_held(0));
        assert_eq!(s.gamepad_axis(0), 0.0);
        assert_eq!(s.pointer(), Some((0.25, 0.75)));
    }

    #[test]
    fn motion_accumulates_within_a_frame_only() {
        let mut s = InputState::default();
        s.apply(&InputEvent::PointerMotion { dx: 3.0, dy: -1.0 })
            .unwrap();
        s.apply(&InputEvent::PointerMotion { dx: 2.0, dy: -1.0 })
            .unwrap();
        assert_eq!(s.motion(), (5.0, -2.0));
        s.end_frame();
        assert_eq!(s.motion(), (0.0, 0.0));
    }

    #[test]
    fn invalid_events_change_nothing() {
        let mut s = InputState::default();
        let bad = [
            key("", true),
            key(&"K".repeat(MAX_KEY_CODE_LEN + 1), true),
            key("Key W", true),
            InputEvent::PointerMove { x: 1.5, y: 0.0 },
            InputEvent::PointerMotion {
                dx: f32::NAN,
                dy: 0.0,
            },
            InputEvent::GamepadAxis {
                index: 9,
                value: 0.0,
            },
            InputEvent::GamepadAxis {
                index: 0,
                value: 2.0,
            },
            InputEvent::GamepadButton {
                index: 40,
                pressed: true,
            },
            InputEvent::MouseButton {
                button: 9,
                down: true,
            },
        ];
        for e in &bad {
            assert!(s.apply(e).is_err(), "{e:?} should be refused");
        }
        assert_eq!(s, InputState::default());
    }

    #[test]
    fn events_round_trip_as_json() {
        let e = InputEvent::GamepadAxis {
            index: 1,
            value: -0.5,
        };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(text, r#"{"kind":"gamepad_axis","index":1,"value":-0.5}"#);
        assert_eq!(serde_json::from_str::<InputEvent>(&text).unwrap(), e);
    }
}
