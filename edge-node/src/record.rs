//! Recording a session to a file and snapshotting frames to PNG, on a virtual clock.

use crate::encode::{EncodedFrame, Encoder, EncoderCandidate, EncoderSettings};
use crate::game::Catalogue;
use crate::input::InputEvent;
use crate::offline::OfflineSession;
use crate::render::{RgbaFrame, VulkanContext};
use crate::video::{Codec, VideoMode};
use crate::{Error, Result};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordRequest {
    /// Game identifier.
    pub game: String,
    /// Encoding settings (mode, codec, bitrate, GOP).
    pub settings: EncoderSettings,
    /// Frames to record.
    pub frames: u64,
    /// Frame numbers that must be keyframes (besides the scheduled ones).
    pub keyframes_at: Vec<u64>,
    /// Input applied before the first frame (e.g. a key held throughout).
    pub input: Vec<InputEvent>,
    /// Output file: `.h264` (Annex B), `.mp4` (H.264), `.webm` (VP8).
    pub out: PathBuf,
}

/// What was recorded.
#[derive(Debug, Clone, Serialize)]
pub struct RecordReport {
    /// The file written.
    pub path: PathBuf,
    /// Encoder element used.
    pub encoder: String,
    /// Frames written.
    pub frames: u64,
    /// Of those, keyframes, by frame index.
    pub keyframes: Vec<u64>,
    /// Bytes of bitstream.
    pub bytes: u64,
}

enum Sink {
    AnnexB(std::io::BufWriter<std::fs::File>),
    Muxed {
        pipeline: gst::Pipeline,
        src: gst_app::AppSrc,
    },
}

impl Sink {
    fn open(path: &Path, codec: Codec, mode: VideoMode) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let (caps, parse, mux) = match (ext.as_str(), codec) {
            ("h264" | "264", Codec::H264) => {
                let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
                return Ok(Sink::AnnexB(std::io::BufWriter::new(f)));
            }
            ("mp4", Codec::H264) => (
                gst::Caps::builder("video/x-h264")
                    .field("stream-format", "byte-stream")
                    .field("alignment", "au")
                    .build(),
                Some("h264parse"),
                "mp4mux",
            ),
            ("webm", Codec::Vp8) => (
                gst::Caps::builder("video/x-vp8")
                    .field("width", mode.width as i32)
                    .field("height", mode.height as i32)
                    .field("framerate", gst::Fraction::new(mode.fps as i32, 1))
                    .build(),
                None,
                "webmmux",
            ),
            _ => {
                return Err(Error::invalid(
                    "out",
                    format!(
                        "cannot write {codec} to {:?}; use .h264 or .mp4 for h264, .webm for vp8",
                        path.display().to_string()
                    ),
                ));
            }
        };
        let pipeline = gst::Pipeline::new();
        let src = gst_app::AppSrc::builder()
            .caps(&caps)
            .format(gst::Format::Time)
            .block(true)
            .build();
        let mut chain: Vec<gst::Element> = vec![src.clone().upcast()];
        if let Some(p) = parse {
            chain.push(gst::ElementFactory::make(p).build()?);
        }
        chain.push(gst::ElementFactory::make(mux).build()?);
        chain.push(
            gst::ElementFactory::make("filesink")
                .property("location", path.to_string_lossy().as_ref())
                .build()?,
        );
        pipeline.add_many(&chain)?;
        gst::Element::link_many(&chain)?;
        pipeline.set_state(gst::State::Playing).map_err(|_| {
            Error::Gstreamer(format!(
                "cannot start the {mux} pipeline for {}",
                path.display()
            ))
        })?;
        Ok(Sink::Muxed { pipeline, src })
    }

    fn write(&mut self, f: &EncodedFrame, path: &Path, frame_duration: Duration) -> Result<()> {
        match self {
            Sink::AnnexB(w) => w.write_all(&f.data).map_err(|e| Error::io(path, e)),
            Sink::Muxed { src, .. } => {
                let mut b = gst::Buffer::from_slice(f.data.clone());
                {
                    let b = b.get_mut().expect("fresh buffer");
                    let t = gst::ClockTime::from_nseconds(f.pts.as_nanos() as u64);
                    b.set_pts(t);
                    b.set_dts(t);
                    b.set_duration(gst::ClockTime::from_nseconds(
                        frame_duration.as_nanos() as u64
                    ));
                    if !f.keyframe {
                        b.set_flags(gst::BufferFlags::DELTA_UNIT);
                    }
                }
                src.push_buffer(b)
                    .map(|_| ())
                    .map_err(|e| Error::Gstreamer(format!("muxer refused a frame: {e:?}")))
            }
        }
    }

    fn close(self, path: &Path) -> Result<()> {
        match self {
            Sink::AnnexB(mut w) => w.flush().map_err(|e| Error::io(path, e)),
            Sink::Muxed { pipeline, src } => {
                let _ = src.end_of_stream();
                let bus = pipeline
                    .bus()
                    .ok_or_else(|| Error::Gstreamer("pipeline without bus".into()))?;
                let msg = bus.timed_pop_filtered(
                    gst::ClockTime::from_seconds(30),
                    &[gst::MessageType::Eos, gst::MessageType::Error],
                );
                let _ = pipeline.set_state(gst::State::Null);
                match msg.as_ref().map(|m| m.view()) {
                    Some(gst::MessageView::Eos(_)) => Ok(()),
                    Some(gst::MessageView::Error(e)) => Err(Error::Gstreamer(format!(
                        "writing {}: {}",
                        path.display(),
                        e.error()
                    ))),
                    _ => Err(Error::Gstreamer(format!(
                        "writing {}: muxer did not finish",
                        path.display()
                    ))),
                }
            }
        }
    }
}

/// Renders and encodes `req.frames` frames of a game into a file.
pub fn record(
    vulkan: &Arc<VulkanContext>,
    catalogue: &Catalogue,
    encoder: &EncoderCandidate,
    req: &RecordRequest,
) -> Result<RecordReport> {
    let mode = req.settings.mode;
    let mut session = OfflineSession::new(vulkan, catalogue, &req.game, mode)?;
    for e in &req.input {
        session
            .input(e)
            .map_err(|r| Error::invalid("input", format!("{e:?}: {r}")))?;
    }
    let enc = Encoder::open(encoder, &req.settings)?;
    let mut sink = Sink::open(&req.out, req.settings.codec, mode)?;
    let interval = Duration::from_micros(mode.frame_interval_us());
    let mut report = RecordReport {
        path: req.out.clone(),
        encoder: encoder.element.to_owned(),
        frames: 0,
        keyframes: Vec::new(),
        bytes: 0,
    };
    let take = |f: EncodedFrame, sink: &mut Sink, report: &mut RecordReport| -> Result<()> {
        if f.keyframe {
            report.keyframes.push(report.frames);
        }
        report.frames += 1;
        report.bytes += f.data.len() as u64;
        sink.write(&f, &req.out, interval)
    };
    for i in 0..req.frames {
        let (buffer, _) = session.next_frame(|frame| enc.convert(frame))?;
        // Recording must not drop frames: wait for the encoder instead.
        while enc.is_busy() {
            std::thread::sleep(Duration::from_micros(200));
        }
        enc.push(buffer?, interval * i as u32, req.keyframes_at.contains(&i))?;
        // Zero-latency encoders give each frame back at once; others catch up at the end.
        if let Some(f) = enc.pull(Duration::from_millis(500))? {
            take(f, &mut sink, &mut report)?;
        }
    }
    for f in enc.finish()? {
        take(f, &mut sink, &mut report)?;
    }
    sink.close(&req.out)?;
    Ok(report)
}

/// Writes an RGBA frame as a PNG file.
pub fn write_png(frame: &RgbaFrame<'_>, path: &Path) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), frame.width, frame.height);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let to_io = |e: png::EncodingError| Error::io(path, std::io::Error::other(e));
    let mut w = enc.write_header().map_err(to_io)?;
    let rows = frame.width as usize * 4;
    if frame.stride == rows {
        w.write_image_data(&frame.data[..rows * frame.height as usize])
            .map_err(to_io)?;
    } else {
        let packed: Vec<u8> = frame
            .data
            .chunks(frame.stride)
            .take(frame.height as usize)
            .flat_map(|r| &r[..rows])
            .copied()
            .collect();
        w.write_image_data(&packed).map_err(to_io)?;
    }
    w.finish().map_err(to_io)
}
