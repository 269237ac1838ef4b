//! The player's input as X11 sees it: DOM `KeyboardEvent.code` → keysym, DOM mouse buttons and
//! wheel → X button numbers, and which keys and buttons are held (so they can be let go when the
//! player's channel closes). Pure: the XTest shell in `display.rs` sends what this decides.

use pixelgrid_proto::input::InputEvent;
use std::collections::BTreeSet;

/// The X keysym a DOM physical key code types on a US layout, or `None` for codes with no key.
pub fn keysym_for_code(code: &str) -> Option<u32> {
    // Letters and digits map onto their Latin-1 keysyms (lower case for letters).
    if let Some(c) = code.strip_prefix("Key")
        && c.len() == 1
        && c.as_bytes()[0].is_ascii_uppercase()
    {
        return Some(u32::from(c.as_bytes()[0].to_ascii_lowercase()));
    }
    if let Some(d) = code.strip_prefix("Digit")
        && d.len() == 1
        && d.as_bytes()[0].is_ascii_digit()
    {
        return Some(u32::from(d.as_bytes()[0]));
    }
    if let Some(n) = code.strip_prefix('F')
        && let Ok(n) = n.parse::<u32>()
        && (1..=24).contains(&n)
    {
        return Some(0xffbe + n - 1);
    }
    if let Some(d) = code.strip_prefix("Numpad")
        && d.len() == 1
        && d.as_bytes()[0].is_ascii_digit()
    {
        return Some(0xffb0 + u32::from(d.as_bytes()[0] - b'0'));
    }
    let sym = match code {
        "Escape" => 0xff1b,
        "Enter" => 0xff0d,
        "NumpadEnter" => 0xff8d,
        "Tab" => 0xff09,
        "Backspace" => 0xff08,
        "Space" => 0x20,
        "ArrowLeft" => 0xff51,
        "ArrowUp" => 0xff52,
        "ArrowRight" => 0xff53,
        "ArrowDown" => 0xff54,
        "Home" => 0xff50,
        "End" => 0xff57,
        "PageUp" => 0xff55,
        "PageDown" => 0xff56,
        "Insert" => 0xff63,
        "Delete" => 0xffff,
        "ShiftLeft" => 0xffe1,
        "ShiftRight" => 0xffe2,
        "ControlLeft" => 0xffe3,
        "ControlRight" => 0xffe4,
        "AltLeft" => 0xffe9,
        "AltRight" => 0xffea,
        "MetaLeft" => 0xffeb,
        "MetaRight" => 0xffec,
        "CapsLock" => 0xffe5,
        "Pause" => 0xff13,
        "PrintScreen" => 0xff61,
        "ContextMenu" => 0xff67,
        "Minus" => 0x2d,
        "Equal" => 0x3d,
        "BracketLeft" => 0x5b,
        "BracketRight" => 0x5d,
        "Backslash" => 0x5c,
        "Semicolon" => 0x3b,
        "Quote" => 0x27,
        "Backquote" => 0x60,
        "Comma" => 0x2c,
        "Period" => 0x2e,
        "Slash" => 0x2f,
        "NumpadAdd" => 0xffab,
        "NumpadSubtract" => 0xffad,
        "NumpadMultiply" => 0xffaa,
        "NumpadDivide" => 0xffaf,
        "NumpadDecimal" => 0xffae,
        _ => return None,
    };
    Some(sym)
}

/// X core pointer button for a DOM `MouseEvent.button` (0 left, 1 middle, 2 right, 3 back,
/// 4 forward).
pub fn x_button_for(dom_button: u8) -> Option<u8> {
    match dom_button {
        0 => Some(1),
        1 => Some(2),
        2 => Some(3),
        3 => Some(8),
        4 => Some(9),
        _ => None,
    }
}

/// One thing to do to the X server's input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum XInput {
    /// Press or release the key that types this keysym.
    Key {
        /// The keysym.
        keysym: u32,
        /// Press (true) or release.
        down: bool,
    },
    /// Press or release a pointer button.
    Button {
        /// X button number.
        button: u8,
        /// Press (true) or release.
        down: bool,
    },
    /// Move the pointer to a pixel of the screen.
    MoveTo {
        /// Column.
        x: i16,
        /// Row.
        y: i16,
    },
    /// Move the pointer by pixels.
    MoveBy {
        /// Rightwards.
        dx: i16,
        /// Downwards.
        dy: i16,
    },
}

/// Why an event does nothing in a packaged game.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unmapped {
    /// The key code has no X keysym here.
    #[error("key {0:?} has no X11 key")]
    Key(String),
    /// Mouse button beyond what X knows.
    #[error("mouse button {0} has no X11 button")]
    Button(u8),
    /// Game controllers need a virtual device.
    #[error(
        "gamepads are unavailable on this node: it has no /dev/uinput to create a virtual controller"
    )]
    GamepadUnavailable,
}

/// Turns player events into X input and remembers what is held; see the module docs.
#[derive(Debug, Default)]
pub struct XInputMapper {
    keys_down: BTreeSet<u32>,
    buttons_down: BTreeSet<u8>,
    // Wheel lines not yet sent as clicks (browsers send fractions).
    wheel_acc: (f32, f32),
}

impl XInputMapper {
    /// What `event` does on a `width`×`height` screen. Repeats of a held key or button send
    /// nothing, so a flood of key-down events cannot pile up presses.
    pub fn map(
        &mut self,
        event: &InputEvent,
        width: u32,
        height: u32,
    ) -> Result<Vec<XInput>, Unmapped> {
        let out = match event {
            InputEvent::Key { code, down } => {
                let keysym = keysym_for_code(code).ok_or_else(|| Unmapped::Key(code.clone()))?;
                let changed = if *down {
                    self.keys_down.insert(keysym)
                } else {
                    self.keys_down.remove(&keysym)
                };
                if changed {
                    vec![XInput::Key {
                        keysym,
                        down: *down,
                    }]
                } else {
                    vec![]
                }
            }
            InputEvent::MouseButton { button, down } => {
                let b = x_button_for(*button).ok_or(Unmapped::Button(*button))?;
                let changed = if *down {
                    self.buttons_down.insert(b)
                } else {
                    self.buttons_down.remove(&b)
                };
                if changed {
                    vec![XInput::Button {
                        button: b,
                        down: *down,
                    }]
                } else {
                    vec![]
                }
            }
            InputEvent::PointerMove { x, y } => {
                let px = |v: f32, size: u32| {
                    ((v.clamp(0.0, 1.0) * size as f32) as i64).clamp(0, i64::from(size) - 1) as i16
                };
                vec![XInput::MoveTo {
                    x: px(*x, width),
                    y: px(*y, height),
                }]
            }
            InputEvent::PointerMotion { dx, dy } => {
                let clamp = |v: f32| v.round().clamp(-4096.0, 4096.0) as i16;
                vec![XInput::MoveBy {
                    dx: clamp(*dx),
                    dy: clamp(*dy),
                }]
            }
            InputEvent::Wheel { dx, dy } => {
                // X has no wheel axis: each line is a click of buttons 4/5 (vertical), 6/7.
                self.wheel_acc.0 += dx;
                self.wheel_acc.1 += dy;
                let mut out = Vec::new();
                for (acc, neg, pos) in [
                    (&mut self.wheel_acc.1, 4u8, 5u8),
                    (&mut self.wheel_acc.0, 6, 7),
                ] {
                    let clicks = acc.trunc().clamp(-20.0, 20.0);
                    *acc -= acc.trunc();
                    let button = if clicks < 0.0 { neg } else { pos };
                    for _ in 0..clicks.abs() as u32 {
                        out.push(XInput::Button { button, down: true });
                        out.push(XInput::Button {
                            button,
                            down: false,
                        });
                    }
                }
                out
            }
            InputEvent::GamepadButton { .. } | InputEvent::GamepadAxis { .. } => {
                return Err(Unmapped::GamepadUnavailable);
            }
        };
        Ok(out)
    }

    /// Releases every key and button still held.
    pub fn release_all(&mut self) -> Vec<XInput> {
        let keys = std::mem::take(&mut self.keys_down)
            .into_iter()
            .map(|keysym| XInput::Key {
                keysym,
                down: false,
            });
        let buttons = std::mem::take(&mut self.buttons_down)
            .into_iter()
            .map(|button| XInput::Button {
                button,
                down: false,
            });
        keys.chain(buttons).collect()
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
    fn dom_codes_map_to_us_keysyms() {
        assert_eq!(keysym_for_code("KeyW"), Some(u32::from(b'w')));
        assert_eq!(keysym_for_code("Digit7"), Some(u32::from(b'7')));
        assert_eq!(keysym_for_code("ArrowDown"), Some(0xff54));
        assert_eq!(keysym_for_code("Enter"), Some(0xff0d));
        assert_eq!(keysym_for_code("F1"), Some(0xffbe));
        assert_eq!(keysym_for_code("F12"), Some(0xffc9));
        assert_eq!(keysym_for_code("ShiftLeft"), Some(0xffe1));
        assert_eq!(keysym_for_code("Numpad5"), Some(0xffb5));
        for nothing in ["KeyAA", "Key1", "F0", "F25", "Fn", "Digit", ""] {
            assert_eq!(keysym_for_code(nothing), None, "{nothing}");
        }
    }

    #[test]
    fn held_keys_are_pressed_once_and_released_at_the_end() {
        let mut m = XInputMapper::default();
        let down = m.map(&key("ArrowDown", true), 640, 480).expect("mapped");
        assert_eq!(down.len(), 1);
        assert!(
            m.map(&key("ArrowDown", true), 640, 480)
                .expect("mapped")
                .is_empty()
        );
        m.map(
            &InputEvent::MouseButton {
                button: 2,
                down: true,
            },
            640,
            480,
        )
        .expect("mapped");
        let released = m.release_all();
        assert_eq!(
            released,
            [
                XInput::Key {
                    keysym: 0xff54,
                    down: false
                },
                XInput::Button {
                    button: 3,
                    down: false
                }
            ]
        );
        assert!(m.release_all().is_empty());
    }

    #[test]
    fn pointer_lands_inside_the_screen_and_wheel_lines_become_clicks() {
        let mut m = XInputMapper::default();
        let at = m
            .map(&InputEvent::PointerMove { x: 1.0, y: 0.5 }, 640, 480)
            .expect("mapped");
        assert_eq!(at, [XInput::MoveTo { x: 639, y: 240 }]);
        let half = m
            .map(&InputEvent::Wheel { dx: 0.0, dy: 0.5 }, 640, 480)
            .expect("mapped");
        assert!(half.is_empty());
        let clicks = m
            .map(&InputEvent::Wheel { dx: 0.0, dy: 0.5 }, 640, 480)
            .expect("mapped");
        assert_eq!(
            clicks,
            [
                XInput::Button {
                    button: 5,
                    down: true
                },
                XInput::Button {
                    button: 5,
                    down: false
                }
            ]
        );
    }

    #[test]
    fn gamepads_and_unknown_keys_say_why() {
        let mut m = XInputMapper::default();
        let e = m
            .map(
                &InputEvent::GamepadButton {
                    index: 0,
                    pressed: true,
                },
                640,
                480,
            )
            .expect_err("no uinput");
        assert!(e.to_string().contains("/dev/uinput"), "{e}");
        assert!(matches!(
            m.map(&key("Hyper", true), 640, 480),
            Err(Unmapped::Key(_))
        ));
    }
}
