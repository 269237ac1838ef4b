//! A session on a virtual clock: every frame advances the game by exactly one frame interval,
//! however long it took to make. Used for snapshots, recordings, benchmarks and tests, where the
//! same inputs must give the same pictures.

use crate::Result;
use crate::game::{Catalogue, DrawList, FrameInfo, Game};
use crate::input::{InputEvent, InputRejected, InputState};
use crate::render::{FrameTicket, GpuTimings, Renderer, RgbaFrame, VulkanContext};
use crate::video::VideoMode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// See the module docs.
pub struct OfflineSession {
    game: Box<dyn Game>,
    renderer: Renderer,
    input: InputState,
    draw: DrawList,
    mode: VideoMode,
    frame_number: u64,
}

impl std::fmt::Debug for OfflineSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineSession")
            .field("mode", &self.mode)
            .field("frame", &self.frame_number)
            .finish()
    }
}

/// A frame submitted with [`OfflineSession::submit_next`] and not yet read.
#[derive(Debug)]
#[must_use = "a submitted frame holds a renderer slot until it is read"]
pub struct PendingFrame {
    ticket: FrameTicket,
    submitted: Instant,
    number: u64,
}

impl PendingFrame {
    /// The frame's number.
    pub fn number(&self) -> u64 {
        self.number
    }
}

/// One rendered frame's GPU-side cost.
#[derive(Debug, Clone, Copy)]
pub struct RenderCost {
    /// Wall time from recording the commands until the frame was in host memory.
    pub wall: Duration,
    /// The device's own split, where it has timestamps.
    pub gpu: GpuTimings,
}

impl OfflineSession {
    /// Starts `game` from the catalogue at `mode`.
    pub fn new(
        vulkan: &Arc<VulkanContext>,
        catalogue: &Catalogue,
        game: &str,
        mode: VideoMode,
    ) -> Result<Self> {
        Ok(Self {
            game: catalogue.start(game)?,
            renderer: Renderer::new(vulkan, mode.width, mode.height)?,
            input: InputState::default(),
            draw: DrawList::default(),
            mode,
            frame_number: 0,
        })
    }

    /// Applies a player input event before the next frame.
    pub fn input(&mut self, event: &InputEvent) -> Result<(), InputRejected> {
        self.input.apply(event)
    }

    /// Number of the frame the next call to [`OfflineSession::next_frame`] renders.
    pub fn frame_number(&self) -> u64 {
        self.frame_number
    }

    /// Advances one frame interval (none before the first frame), renders, and lends the
    /// picture to `f`.
    pub fn next_frame<R>(
        &mut self,
        f: impl FnOnce(&RgbaFrame<'_>) -> R,
    ) -> Result<(R, RenderCost)> {
        let pending = self.submit_next()?;
        self.read(pending, f)
    }

    /// Advances and submits the next frame without waiting for it, so the caller can submit
    /// frame N+1 before reading frame N back (up to [`crate::render::FRAMES_IN_FLIGHT`]).
    pub fn submit_next(&mut self) -> Result<PendingFrame> {
        let dt = if self.frame_number == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(self.mode.frame_interval_us())
        };
        self.game.advance(dt, &self.input);
        self.input.end_frame();
        let info = FrameInfo {
            width: self.mode.width,
            height: self.mode.height,
            frame_number: self.frame_number,
        };
        self.game.record(&info, &mut self.draw);
        let submitted = Instant::now();
        let ticket = self.renderer.submit(&self.draw)?;
        self.frame_number += 1;
        Ok(PendingFrame {
            ticket,
            submitted,
            number: info.frame_number,
        })
    }

    /// Waits for a submitted frame and lends its picture to `f`.
    pub fn read<R>(
        &mut self,
        pending: PendingFrame,
        f: impl FnOnce(&RgbaFrame<'_>) -> R,
    ) -> Result<(R, RenderCost)> {
        let ((ready, out), gpu) = self
            .renderer
            .read(pending.ticket, |frame| (Instant::now(), f(frame)))?;
        Ok((
            out,
            RenderCost {
                wall: ready - pending.submitted,
                gpu,
            },
        ))
    }
}
