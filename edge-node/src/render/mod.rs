//! Headless Vulkan rendering through `ash`: no window, no surface.
//!
//! [`VulkanContext`] opens one device per process (an NVIDIA GPU where there is one, else any GPU,
//! else Mesa's lavapipe on the CPU) and is shared by every session. A [`Renderer`] draws one
//! session's [`DrawList`]s into its own offscreen images and copies each frame into a persistently
//! mapped host buffer. It keeps a ring of [`FRAMES_IN_FLIGHT`] such slots, so frame N+1 can be
//! submitted while frame N is still being read back and converted.
//!
//! Set `PIXELGRID_VULKAN_DEVICE` to part of a device name to pick a device by hand.

mod imp;

use crate::game::DrawList;
use crate::{Error, Result};
use serde::Serialize;
use std::sync::Arc;

/// Slots in each renderer's ring: one being drawn, one being read back, one spare.
pub const FRAMES_IN_FLIGHT: usize = 3;
/// Most rectangles one frame may draw; more are cut off (and logged).
pub const MAX_RECTS: usize = 8192;

/// The Vulkan device the node renders on, as the driver describes it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    /// Device name, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)" or "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// PCI vendor id (0x10de = NVIDIA).
    pub vendor_id: u32,
    /// "NVIDIA", "Mesa", ... (from the driver's name where it gives one).
    pub vendor: String,
    /// "discrete-gpu", "integrated-gpu", "virtual-gpu", "cpu" or "other".
    pub device_type: String,
    /// Vulkan API version the device supports, "1.3.230".
    pub api_version: String,
    /// Driver name and version as the driver reports them.
    pub driver: String,
    /// True when rendering runs on the CPU (lavapipe).
    pub cpu_fallback: bool,
    /// True when GPU timestamps split render and readback time.
    pub timestamps: bool,
    /// Every device the loader offered, in the order it listed them.
    pub all_devices: Vec<String>,
}

/// The process's Vulkan instance, device and queue; see the module docs.
pub struct VulkanContext {
    inner: imp::Context,
}

impl std::fmt::Debug for VulkanContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanContext")
            .field("device", &self.inner.info.name)
            .finish()
    }
}

impl VulkanContext {
    /// Loads Vulkan and opens the best device; the error says which package is missing.
    pub fn new() -> Result<Arc<Self>> {
        let inner = imp::Context::new()?;
        tracing::info!(
            device = %inner.info.name,
            kind = %inner.info.device_type,
            api = %inner.info.api_version,
            driver = %inner.info.driver,
            "Vulkan device chosen"
        );
        Ok(Arc::new(Self { inner }))
    }

    /// What was chosen.
    pub fn info(&self) -> &DeviceInfo {
        &self.inner.info
    }
}

/// A frame that was submitted and must be passed back to [`Renderer::read`].
#[derive(Debug)]
#[must_use = "a submitted frame holds its slot until it is read"]
pub struct FrameTicket {
    slot: usize,
    seq: u64,
}

/// A finished frame in host memory: rows of 4-byte pixels (RGBA when rendered, BGRx when
/// captured from a display).
#[derive(Debug)]
pub struct RgbaFrame<'a> {
    /// Byte order of each pixel.
    pub order: crate::convert::PixelOrder,
    /// `height` rows of `stride` bytes.
    pub data: &'a [u8],
    /// Bytes per row (`width * 4`).
    pub stride: usize,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Where a frame's GPU time went, from GPU timestamps (absent where the device has none).
#[derive(Debug, Clone, Copy, Default)]
pub struct GpuTimings {
    /// Drawing the frame, in milliseconds.
    pub render_ms: Option<f64>,
    /// Copying the image into the mapped buffer, in milliseconds.
    pub copy_ms: Option<f64>,
}

/// One session's offscreen renderer; see the module docs.
pub struct Renderer {
    inner: imp::Renderer,
    next_seq: u64,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("width", &self.inner.width)
            .field("height", &self.inner.height)
            .finish()
    }
}

impl Renderer {
    /// Creates the offscreen targets and mapped buffers for `width` x `height` frames.
    pub fn new(ctx: &Arc<VulkanContext>, width: u32, height: u32) -> Result<Self> {
        if width == 0 || height == 0 || width > 8192 || height > 8192 {
            return Err(Error::invalid(
                "size",
                format!("{width}x{height} cannot be rendered"),
            ));
        }
        Ok(Self {
            inner: imp::Renderer::new(Arc::clone(ctx), width, height)?,
            next_seq: 0,
        })
    }

    /// Records `draw` into the next free slot and submits it. Fails if every slot still holds
    /// an unread frame.
    pub fn submit(&mut self, draw: &DrawList) -> Result<FrameTicket> {
        let slot = (self.next_seq % FRAMES_IN_FLIGHT as u64) as usize;
        if draw.rects.len() > MAX_RECTS {
            tracing::warn!(
                rects = draw.rects.len(),
                max = MAX_RECTS,
                "draw list cut off"
            );
        }
        self.inner.submit(slot, draw)?;
        let ticket = FrameTicket {
            slot,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        Ok(ticket)
    }

    /// Waits for a submitted frame and lends its pixels to `f`.
    pub fn read<R>(
        &mut self,
        ticket: FrameTicket,
        f: impl FnOnce(&RgbaFrame<'_>) -> R,
    ) -> Result<(R, GpuTimings)> {
        debug_assert!(
            ticket.seq + (FRAMES_IN_FLIGHT as u64) >= self.next_seq,
            "ticket outlived its slot"
        );
        self.inner.read(ticket.slot, f)
    }

    /// Picture width.
    pub fn width(&self) -> u32 {
        self.inner.width
    }

    /// Picture height.
    pub fn height(&self) -> u32 {
        self.inner.height
    }
}
