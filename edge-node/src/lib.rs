//! PixelGrid edge node: renders game sessions headless on Vulkan and encodes them with GStreamer.
//!
//! The deciding parts are plain, clock-free modules ([`game`], [`input`], [`pacing`],
//! [`convert`]); the parts that touch hardware or libraries ([`render`], [`encode`],
//! [`telemetry`]) are thin shells around them. [`session`] ties one game, one renderer and one
//! encoder together on its own frame clock; [`host::SessionHost`] runs many sessions in one
//! process on one shared Vulkan device.

pub mod agent;
pub mod audio;
pub mod bench;
pub mod convert;
pub mod encode;
mod error;
pub mod game;
pub mod host;
pub mod input;
pub mod offline;
pub mod onboard;
pub mod pacing;
pub mod record;
pub mod render;
pub mod reporter;
pub mod runtime;
pub mod session;
pub mod stream;
pub mod telemetry;
pub mod video;

pub use error::{Error, Result};
