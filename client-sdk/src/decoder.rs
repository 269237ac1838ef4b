//! The local decoder: RTP packets in, decoded frames (and, on request, encoded access units) out,
//! through GStreamer — `appsrc ! rtph264depay ! h264parse ! avdec_h264 ! videoconvert ! appsink`
//! (`rtpvp8depay ! vp8dec` for VP8). Each packet enters with a timestamp derived from its RTP
//! timestamp, so every frame that comes out says which RTP timestamp (hence capture time) it was.

use crate::{Error, Result};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

/// Pixel layout of decoded frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrameFormat {
    /// 8-bit RGBA, `width × 4` bytes per row.
    #[default]
    Rgba,
    /// Planar YUV 4:2:0 (Y, then U, then V).
    I420,
}

/// Video codec of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// H.264 (constrained baseline).
    #[default]
    H264,
    /// VP8.
    Vp8,
}

/// What the decoder hands out: a decoded picture or an encoded access unit, with the RTP
/// timestamp it carried.
#[derive(Debug)]
pub(crate) enum Output {
    Frame {
        width: u32,
        height: u32,
        data: Vec<u8>,
        rtp_timestamp: u32,
    },
    AccessUnit {
        data: Vec<u8>,
        rtp_timestamp: u32,
        keyframe: bool,
    },
}

/// One stream's decoder.
pub(crate) struct Decoder {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    /// RTP timestamp of the first packet: time 0 of the pipeline.
    first: std::sync::Arc<std::sync::OnceLock<u32>>,
    last_ext: i64,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

const NS_PER_TICK: f64 = 1e9 / 90_000.0;

fn rtp_of(first: u32, pts: Option<gst::ClockTime>) -> u32 {
    let ticks = pts.map_or(0, |p| (p.nseconds() as f64 / NS_PER_TICK).round() as u64);
    first.wrapping_add(ticks as u32)
}

impl Decoder {
    /// A running decoder for `codec` at `payload_type`, calling `out` from GStreamer's threads.
    pub fn start(
        codec: Codec,
        payload_type: u8,
        format: FrameFormat,
        access_units: bool,
        out: impl Fn(Output) + Send + Sync + 'static,
    ) -> Result<Self> {
        gst::init().map_err(|e| Error::Decoder(format!("GStreamer does not start: {e}")))?;
        let (name, depay, decode) = match codec {
            // One decoding thread: frame threading would hold frames back.
            Codec::H264 => (
                "H264",
                "rtph264depay ! h264parse ! video/x-h264,stream-format=byte-stream,alignment=au",
                "avdec_h264 max-threads=1",
            ),
            Codec::Vp8 => ("VP8", "rtpvp8depay", "vp8dec threads=1"),
        };
        let pixel = match format {
            FrameFormat::Rgba => "RGBA",
            FrameFormat::I420 => "I420",
        };
        let decoded = format!(
            "{decode} ! videoconvert ! video/x-raw,format={pixel} ! appsink name=frames sync=false"
        );
        let description = if access_units {
            format!(
                "appsrc name=src ! {depay} ! tee name=t t. ! queue ! {decoded} t. ! queue ! appsink name=units sync=false"
            )
        } else {
            format!("appsrc name=src ! {depay} ! {decoded}")
        };
        let pipeline = gst::parse::launch(&description)
            .map_err(|e| {
                Error::Decoder(format!(
                    "cannot build `{description}` ({e}); install gstreamer1.0-libav and gstreamer1.0-plugins-good"
                ))
            })?
            .downcast::<gst::Pipeline>()
            .map_err(|_| Error::Decoder("not a pipeline".into()))?;
        let by_name = |n: &str| {
            pipeline
                .by_name(n)
                .ok_or_else(|| Error::Decoder(format!("no element {n}")))
        };
        let src = by_name("src")?
            .downcast::<gst_app::AppSrc>()
            .map_err(|_| Error::Decoder("src is not an appsrc".into()))?;
        src.set_caps(Some(
            &gst::Caps::builder("application/x-rtp")
                .field("media", "video")
                .field("clock-rate", 90_000i32)
                .field("encoding-name", name)
                .field("payload", i32::from(payload_type))
                .build(),
        ));
        src.set_format(gst::Format::Time);
        src.set_is_live(true);
        src.set_property("do-timestamp", false);
        let first = std::sync::Arc::new(std::sync::OnceLock::<u32>::new());
        let out = std::sync::Arc::new(out);
        let frames = by_name("frames")?
            .downcast::<gst_app::AppSink>()
            .map_err(|_| Error::Decoder("frames is not an appsink".into()))?;
        {
            let out = std::sync::Arc::clone(&out);
            let first = std::sync::Arc::clone(&first);
            frames.set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |sink| {
                        let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        let (Some(buffer), Some(caps)) = (sample.buffer(), sample.caps()) else {
                            return Ok(gst::FlowSuccess::Ok);
                        };
                        let s = caps.structure(0).ok_or(gst::FlowError::Error)?;
                        let width = s.get::<i32>("width").unwrap_or(0) as u32;
                        let height = s.get::<i32>("height").unwrap_or(0) as u32;
                        let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                        out(Output::Frame {
                            width,
                            height,
                            data: map.as_slice().to_vec(),
                            rtp_timestamp: rtp_of(*first.get().unwrap_or(&0), buffer.pts()),
                        });
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
        }
        if access_units {
            let units = by_name("units")?
                .downcast::<gst_app::AppSink>()
                .map_err(|_| Error::Decoder("units is not an appsink".into()))?;
            let first = std::sync::Arc::clone(&first);
            units.set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |sink| {
                        let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        let Some(buffer) = sample.buffer() else {
                            return Ok(gst::FlowSuccess::Ok);
                        };
                        let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                        out(Output::AccessUnit {
                            data: map.as_slice().to_vec(),
                            rtp_timestamp: rtp_of(*first.get().unwrap_or(&0), buffer.pts()),
                            keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
                        });
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
        }
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| Error::Decoder(format!("the decoder does not start: {e}")))?;
        Ok(Self {
            pipeline,
            src,
            first,
            last_ext: 0,
        })
    }

    /// Feeds one RTP packet (the whole packet, header included).
    pub fn push(&mut self, packet: Vec<u8>, rtp_timestamp: u32) {
        let origin = *self.first.get_or_init(|| rtp_timestamp);
        // Unwrap the 32-bit timestamp next to the previous one, so time never runs backwards.
        let delta = rtp_timestamp.wrapping_sub(origin) as i64;
        let ext = {
            let base = self.last_ext & !0xffff_ffff;
            [base - (1 << 32), base, base + (1 << 32)]
                .into_iter()
                .map(|b| b + delta)
                .min_by_key(|c| (c - self.last_ext).abs())
                .unwrap_or(delta)
        };
        self.last_ext = ext.max(0);
        let mut buffer = gst::Buffer::from_mut_slice(packet);
        if let Some(b) = buffer.get_mut() {
            b.set_pts(gst::ClockTime::from_nseconds(
                (self.last_ext as f64 * NS_PER_TICK) as u64,
            ));
        }
        let _ = self.src.push_buffer(buffer);
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        let _ = self.src.end_of_stream();
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
