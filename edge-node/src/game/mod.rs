//! Games and the catalogue a node hosts.
//!
//! A game is a small state machine behind the [`Game`] trait: it advances with time and the
//! player's [`InputState`], then records what to draw as a [`DrawList`] of coloured rectangles
//! that the renderer turns into Vulkan draw calls. Neither step reads a clock or touches the GPU,
//! so games are tested by stepping them with made-up time.

mod arena;
mod digits;
pub(crate) use digits::draw_challenge;

pub use arena::Arena;

use crate::input::InputState;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::time::Duration;

/// An axis-aligned rectangle in picture pixels (origin top-left) with a straight-alpha RGBA colour.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct Rect {
    /// Left edge.
    pub x: f32,
    /// Top edge.
    pub y: f32,
    /// Width.
    pub w: f32,
    /// Height.
    pub h: f32,
    /// Red, green, blue, alpha in 0.0..=1.0.
    pub color: [f32; 4],
}

/// What one frame shows: a background colour and rectangles drawn in order (later on top).
#[derive(Debug, Clone, Default)]
pub struct DrawList {
    /// Background colour, RGBA 0.0..=1.0.
    pub clear: [f32; 4],
    /// Rectangles, back to front.
    pub rects: Vec<Rect>,
}

impl DrawList {
    /// Empties the list for the next frame, keeping its allocation.
    pub fn reset(&mut self, clear: [f32; 4]) {
        self.clear = clear;
        self.rects.clear();
    }

    /// Adds a rectangle.
    pub fn rect(&mut self, x: f32, y: f32, w: f32, h: f32, color: [f32; 4]) {
        self.rects.push(Rect { x, y, w, h, color });
    }
}

/// What a game is told about the frame it is drawing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// Picture width in pixels.
    pub width: u32,
    /// Picture height in pixels.
    pub height: u32,
    /// The session's frame clock tick; jumps when frames were dropped.
    pub frame_number: u64,
}

/// A game a node can host.
pub trait Game: Send {
    /// Moves the game on by `dt` of game time, reading the player's input.
    fn advance(&mut self, dt: Duration, input: &InputState);
    /// Records the current state as drawing commands.
    fn record(&self, frame: &FrameInfo, out: &mut DrawList);
}

type GameFactory = Box<dyn Fn() -> Box<dyn Game> + Send + Sync>;

/// The games a node hosts, by identifier.
pub struct Catalogue {
    games: BTreeMap<String, GameFactory>,
}

impl std::fmt::Debug for Catalogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.games.keys()).finish()
    }
}

impl Default for Catalogue {
    /// The built-in games (`arena`).
    fn default() -> Self {
        let mut c = Self::empty();
        c.add("arena", || Box::new(Arena::new()));
        c
    }
}

impl Catalogue {
    /// A catalogue with no games.
    pub fn empty() -> Self {
        Self {
            games: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) a game; `id` is what players launch (`[a-z0-9-]`, up to 64 characters).
    pub fn add(
        &mut self,
        id: &str,
        make: impl Fn() -> Box<dyn Game> + Send + Sync + 'static,
    ) -> &mut Self {
        self.games.insert(id.to_owned(), Box::new(make));
        self
    }

    /// Identifiers of the games hosted, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.games.keys().cloned().collect()
    }

    /// A fresh instance of a game.
    pub fn start(&self, id: &str) -> Result<Box<dyn Game>> {
        self.games
            .get(id)
            .map(|make| make())
            .ok_or_else(|| Error::UnknownGame {
                name: id.chars().take(64).collect(),
                available: self.ids().join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_game_names_the_games_available() {
        let err = Catalogue::default()
            .start("tetris")
            .err()
            .expect("must fail");
        let text = err.to_string();
        assert!(text.contains("tetris") && text.contains("arena"), "{text}");
    }

    #[test]
    fn a_studio_game_can_sit_beside_arena() {
        struct Blank;
        impl Game for Blank {
            fn advance(&mut self, _: Duration, _: &InputState) {}
            fn record(&self, _: &FrameInfo, out: &mut DrawList) {
                out.reset([0.0, 0.0, 0.0, 1.0]);
            }
        }
        let mut c = Catalogue::default();
        c.add("blank", || Box::new(Blank));
        assert_eq!(c.ids(), ["arena", "blank"]);
        assert!(c.start("blank").is_ok());
    }
}
