//! `arena`: the built-in game. Drones fly fixed paths over a pulsing floor, the player steers a
//! gold square with keyboard, mouse or gamepad, and a frame counter in the corner makes motion and
//! dropped frames visible in the stream.

use super::{DrawList, FrameInfo, Game, digits};
use crate::input::InputState;
use std::time::Duration;

/// How far the player moves per second at full stick, in arena widths.
const PLAYER_SPEED: f32 = 0.5;
/// Player side as a fraction of the picture's shorter side.
const PLAYER_SIZE: f32 = 0.08;
/// Pointer-lock motion: picture pixels per arena width.
const MOTION_PX_PER_ARENA: f32 = 1280.0;
/// Sticks inside this radius count as centred.
const STICK_DEADZONE: f32 = 0.15;
const DRONES: usize = 24;

/// The player's colour; nothing else in the arena uses it, so tests can find the player by pixels.
pub const PLAYER_COLOR: [f32; 4] = [1.0, 0.84, 0.0, 1.0];
const PLAYER_BOOST_COLOR: [f32; 4] = [1.0, 0.35, 0.1, 1.0];

/// The built-in game; see the module docs.
#[derive(Debug, Clone)]
pub struct Arena {
    elapsed_s: f64,
    /// Player's top-left corner in arena units (0..=1 on both axes).
    player: (f32, f32),
    boosting: bool,
    last_pointer: Option<(f32, f32)>,
}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

impl Arena {
    /// The colour the player's square is drawn in (when not boosting).
    pub const PLAYER_COLOR: [f32; 4] = PLAYER_COLOR;

    /// A new game with the player in the centre.
    pub fn new() -> Self {
        Self {
            elapsed_s: 0.0,
            player: (0.5, 0.5),
            boosting: false,
            last_pointer: None,
        }
    }

    /// Player position in arena units, 0..=1 on both axes.
    pub fn player_position(&self) -> (f32, f32) {
        self.player
    }

    /// Where the player's square is drawn in a picture of this size: (x, y, side) in pixels.
    pub fn player_rect_px(&self, width: u32, height: u32) -> (f32, f32, f32) {
        let side = PLAYER_SIZE * width.min(height) as f32;
        let x = self.player.0 * (width as f32 - side);
        let y = self.player.1 * (height as f32 - side);
        (x, y, side)
    }
}

fn axis(input: &InputState, negative: [&str; 2], positive: [&str; 2], stick: usize) -> f32 {
    let mut v = 0.0;
    if negative.iter().any(|k| input.key_held(k)) {
        v -= 1.0;
    }
    if positive.iter().any(|k| input.key_held(k)) {
        v += 1.0;
    }
    let s = input.gamepad_axis(stick);
    if s.abs() > STICK_DEADZONE {
        v += s;
    }
    v.clamp(-1.0, 1.0)
}

impl Game for Arena {
    fn advance(&mut self, dt: Duration, input: &InputState) {
        let dt_s = dt.as_secs_f32();
        self.elapsed_s += dt.as_secs_f64();

        // An absolute pointer that moved places the player under it.
        if let Some(p) = input.pointer()
            && self.last_pointer != Some(p)
        {
            self.last_pointer = Some(p);
            self.player = p;
        }

        self.boosting = input.key_held("ShiftLeft")
            || input.key_held("ShiftRight")
            || input.mouse_button_held(0)
            || input.gamepad_button(0);
        let speed = if self.boosting {
            PLAYER_SPEED * 2.0
        } else {
            PLAYER_SPEED
        };
        let vx = axis(input, ["ArrowLeft", "KeyA"], ["ArrowRight", "KeyD"], 0);
        let vy = axis(input, ["ArrowUp", "KeyW"], ["ArrowDown", "KeyS"], 1);
        let (mx, my) = input.motion();
        self.player.0 += vx * speed * dt_s + mx / MOTION_PX_PER_ARENA;
        self.player.1 += vy * speed * dt_s + my / MOTION_PX_PER_ARENA;
        self.player.0 = self.player.0.clamp(0.0, 1.0);
        self.player.1 = self.player.1.clamp(0.0, 1.0);
    }

    fn record(&self, frame: &FrameInfo, out: &mut DrawList) {
        let (w, h) = (frame.width as f32, frame.height as f32);
        let t = self.elapsed_s as f32;
        let pulse = 0.5 + 0.5 * (t * 0.8).sin();
        out.reset([0.04 + 0.04 * pulse, 0.05, 0.12 + 0.06 * pulse, 1.0]);

        // Floor grid, scrolling slowly so even an idle arena moves.
        let cells = 12;
        let line = (h / 360.0).max(1.0);
        let scroll = (t * 0.05).fract();
        for i in 0..=cells {
            let f = (i as f32 + scroll) / cells as f32;
            out.rect(f * w, 0.0, line, h, [0.2, 0.25, 0.4, 1.0]);
            out.rect(0.0, f * h, w, line, [0.2, 0.25, 0.4, 1.0]);
        }

        // Drones on Lissajous paths, each its own speed and colour.
        let side = 0.035 * w.min(h);
        for i in 0..DRONES {
            let k = i as f32;
            let x = 0.5 + 0.42 * (t * (0.3 + 0.07 * k) + k * 1.7).sin();
            let y = 0.5 + 0.42 * (t * (0.23 + 0.05 * k) + k * 0.9).cos();
            let hue = k / DRONES as f32;
            let color = [
                0.2 + 0.6 * (hue * std::f32::consts::TAU).sin().abs(),
                0.3 + 0.5 * hue,
                0.9 - 0.4 * hue,
                0.9,
            ];
            out.rect(x * (w - side), y * (h - side), side, side, color);
        }

        // The player, with a dark outline so it stands out on any background.
        let (px, py, ps) = self.player_rect_px(frame.width, frame.height);
        let border = (ps * 0.1).max(1.0);
        out.rect(
            px - border,
            py - border,
            ps + 2.0 * border,
            ps + 2.0 * border,
            [0.0, 0.0, 0.0, 1.0],
        );
        let color = if self.boosting {
            PLAYER_BOOST_COLOR
        } else {
            PLAYER_COLOR
        };
        out.rect(px, py, ps, ps, color);

        // Frame counter, top-left, on a dark plate.
        let size = (h / 18.0).max(8.0);
        out.rect(0.0, 0.0, size * 6.0, size * 1.5, [0.0, 0.0, 0.0, 0.7]);
        digits::draw_number(
            out,
            frame.frame_number,
            size * 0.25,
            size * 0.25,
            size,
            [1.0; 4],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::InputEvent;

    const STEP: Duration = Duration::from_millis(16);

    fn held(code: &str) -> InputState {
        let mut s = InputState::default();
        s.apply(&InputEvent::Key {
            code: code.into(),
            down: true,
        })
        .unwrap();
        s
    }

    #[test]
    fn arrow_key_moves_the_player_at_its_speed() {
        let mut g = Arena::new();
        let input = held("ArrowRight");
        for _ in 0..10 {
            g.advance(STEP, &input);
        }
        let (x, y) = g.player_position();
        assert!((x - (0.5 + PLAYER_SPEED * 0.16)).abs() < 1e-4, "x = {x}");
        assert_eq!(y, 0.5);
    }

    #[test]
    fn gamepad_stick_moves_and_deadzone_ignores_drift() {
        let mut g = Arena::new();
        let mut s = InputState::default();
        s.apply(&InputEvent::GamepadAxis {
            index: 1,
            value: 0.1,
        })
        .unwrap();
        g.advance(STEP, &s);
        assert_eq!(g.player_position(), (0.5, 0.5));
        s.apply(&InputEvent::GamepadAxis {
            index: 1,
            value: -1.0,
        })
        .unwrap();
        g.advance(STEP, &s);
        assert!(g.player_position().1 < 0.5);
    }

    #[test]
    fn pointer_places_and_motion_nudges_the_player() {
        let mut g = Arena::new();
        let mut s = InputState::default();
        s.apply(&InputEvent::PointerMove { x: 0.1, y: 0.9 })
            .unwrap();
        g.advance(STEP, &s);
        assert_eq!(g.player_position(), (0.1, 0.9));
        s.apply(&InputEvent::PointerMotion { dx: 128.0, dy: 0.0 })
            .unwrap();
        g.advance(STEP, &s);
        assert!((g.player_position().0 - 0.2).abs() < 1e-4);
    }

    #[test]
    fn player_stays_inside_the_arena() {
        let mut g = Arena::new();
        let input = held("ArrowLeft");
        for _ in 0..1000 {
            g.advance(STEP, &input);
        }
        assert_eq!(g.player_position().0, 0.0);
    }

    #[test]
    fn drawing_changes_with_time_and_shows_the_frame_number() {
        let mut g = Arena::new();
        let info = |n| FrameInfo {
            width: 1280,
            height: 720,
            frame_number: n,
        };
        let (mut a, mut b) = (DrawList::default(), DrawList::default());
        g.record(&info(1), &mut a);
        g.advance(Duration::from_millis(100), &InputState::default());
        g.record(&info(1), &mut b);
        assert_ne!(a.rects, b.rects, "drones must move with time");
        let mut c = DrawList::default();
        g.record(&info(8888), &mut c);
        assert!(
            c.rects.len() > b.rects.len(),
            "8888 lights more segments than 1"
        );
        assert!(a.rects.iter().filter(|r| r.color == PLAYER_COLOR).count() == 1);
    }
}
