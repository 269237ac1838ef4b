//! Video encoding through GStreamer: `appsrc` (I420) → encoder → parser → `appsink`.
//!
//! The encoder is chosen at start-up from an ordered chain; the first element that really
//! encodes a test frame wins, and the reason every earlier one was skipped is kept for the
//! operator ([`EncoderChoice`]). H.264 output is browser-safe: constrained-baseline, byte-stream
//! with SPS/PPS in band before every keyframe, one whole access unit per buffer, no B-frames.
//!
//! The same pipeline by hand, for x264:
//!
//! ```text
//! gst-launch-1.0 videotestsrc num-buffers=300 ! video/x-raw,format=I420,width=1280,height=720,framerate=30/1 \
//!   ! x264enc tune=zerolatency speed-preset=ultrafast bitrate=4000 key-int-max=120 bframes=0 \
//!   ! video/x-h264,profile=constrained-baseline,stream-format=byte-stream \
//!   ! h264parse config-interval=-1 ! video/x-h264,alignment=au ! filesink location=out.h264
//! ```

mod chain;
mod pipeline;

pub use chain::{
    CHAIN_H264, CHAIN_VP8, EncoderCandidate, EncoderChoice, SkippedEncoder, chain_for, choose,
};
pub use pipeline::{EncodedFrame, Encoder, probe_chain};

use crate::video::{Codec, VideoMode};
use crate::{Error, Result};
use serde::Serialize;

/// How a session's video is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EncoderSettings {
    /// Picture size and frame rate.
    pub mode: VideoMode,
    /// Codec of the output.
    pub codec: Codec,
    /// Target bitrate.
    pub bitrate_kbps: u32,
    /// Frames between scheduled keyframes.
    pub gop_frames: u32,
    /// Encoder threads; 0 lets the encoder decide. One thread per session packs most sessions
    /// onto a CPU; more lowers one session's latency.
    pub threads: u32,
}

impl EncoderSettings {
    /// Defaults for a mode: about 0.1 bit per pixel per frame, clamped to 500..=20,000 kbps, and
    /// a keyframe every 4 seconds.
    pub fn for_mode(mode: VideoMode, codec: Codec) -> Self {
        let pixels_per_s = u64::from(mode.width) * u64::from(mode.height) * u64::from(mode.fps);
        let bitrate_kbps = (pixels_per_s / 10_000).clamp(500, 20_000) as u32;
        Self {
            mode,
            codec,
            bitrate_kbps,
            gop_frames: mode.fps * 4,
            threads: 1,
        }
    }

    /// Checks bitrate and GOP bounds.
    pub fn validate(&self) -> Result<()> {
        if !(100..=100_000).contains(&self.bitrate_kbps) {
            return Err(Error::invalid(
                "bitrate",
                format!(
                    "{} kbps is out of range; use 100..=100000",
                    self.bitrate_kbps
                ),
            ));
        }
        if self.gop_frames == 0 || self.gop_frames > 10_000 {
            return Err(Error::invalid(
                "gop",
                format!("{} frames is out of range; use 1..=10000", self.gop_frames),
            ));
        }
        if self.threads > 64 {
            return Err(Error::invalid(
                "threads",
                format!("{} is out of range; use 0..=64", self.threads),
            ));
        }
        Ok(())
    }
}
