//! The GStreamer side: building, feeding and draining one encoder pipeline.

use super::{EncoderCandidate, EncoderChoice, EncoderSettings, choose};
use crate::convert::{I420Planes, to_i420};
use crate::render::RgbaFrame;
use crate::video::{Codec, VideoMode};
use crate::{Error, Result};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use std::time::Duration;

/// One encoded picture: for H.264 a whole access unit in Annex B byte-stream form.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    /// The bitstream.
    pub data: Vec<u8>,
    /// Presentation time the frame was pushed with (its capture time on the session clock).
    pub pts: Duration,
    /// True for a keyframe (IDR), decodable on its own.
    pub keyframe: bool,
}

/// A running encoder pipeline; see the module docs of [`crate::encode`].
#[derive(Debug)]
pub struct Encoder {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    sink: gst_app::AppSink,
    encoder: gst::Element,
    info: gst_video::VideoInfo,
    pool: gst::BufferPool,
    candidate: EncoderCandidate,
}

fn init() -> Result<()> {
    gst::init().map_err(|e| Error::Gstreamer(format!("cannot initialise GStreamer: {e}")))
}

/// Sets a property from its textual form when the element has it; elements differ between
/// GStreamer versions, so a missing property is logged, not fatal.
fn set(el: &gst::Element, name: &str, value: &str) -> Result<()> {
    let Some(pspec) = el.find_property(name) else {
        tracing::debug!(element = %el.name(), property = name, "property not present");
        return Ok(());
    };
    let v = gst::glib::Value::deserialize(value, pspec.value_type()).map_err(|_| {
        Error::Gstreamer(format!(
            "{}: cannot set {name}={value}",
            el.factory()
                .map(|f| f.name().to_string())
                .unwrap_or_default()
        ))
    })?;
    el.set_property_from_value(name, &v);
    Ok(())
}

fn configure(el: &gst::Element, element: &str, s: &EncoderSettings) -> Result<()> {
    let kbps = s.bitrate_kbps.to_string();
    let bps = (u64::from(s.bitrate_kbps) * 1000).to_string();
    let gop = s.gop_frames.to_string();
    let threads = s.threads.to_string();
    let props: Vec<(&str, &str)> = match element {
        "nvh264enc" => vec![
            ("preset", "low-latency-hq"),
            ("rc-mode", "cbr"),
            ("bitrate", &kbps),
            ("gop-size", &gop),
            ("bframes", "0"),
            ("zerolatency", "true"),
        ],
        "vah264enc" => vec![
            ("rate-control", "cbr"),
            ("bitrate", &kbps),
            ("key-int-max", &gop),
            ("b-frames", "0"),
            ("target-usage", "7"),
        ],
        "x264enc" => vec![
            ("tune", "zerolatency"),
            ("speed-preset", "ultrafast"),
            ("bitrate", &kbps),
            ("key-int-max", &gop),
            ("bframes", "0"),
            ("b-adapt", "false"),
            ("byte-stream", "true"),
            ("threads", &threads),
            // One slice per frame: browsers fed one slice per sample decode only keyframes.
            ("sliced-threads", "false"),
            // About two frames of VBV so a keyframe cannot stall the stream for long.
            ("vbv-buf-capacity", "100"),
        ],
        "openh264enc" => vec![
            ("bitrate", &bps),
            ("gop-size", &gop),
            ("complexity", "low"),
            ("rate-control", "bitrate"),
        ],
        "vp8enc" => vec![
            ("deadline", "1"),
            ("cpu-used", "8"),
            ("end-usage", "cbr"),
            ("target-bitrate", &bps),
            ("keyframe-max-dist", &gop),
            ("lag-in-frames", "0"),
            ("error-resilient", "default"),
            ("threads", if s.threads == 0 { "2" } else { &threads }),
        ],
        other => {
            return Err(Error::invalid(
                "encoder",
                format!("no settings known for {other}"),
            ));
        }
    };
    for (k, v) in props {
        set(el, k, v)?;
    }
    Ok(())
}

fn video_info(mode: VideoMode) -> Result<gst_video::VideoInfo> {
    let colorimetry: gst_video::VideoColorimetry = "bt601"
        .parse()
        .map_err(|_| Error::Gstreamer("bt601 colorimetry not understood".into()))?;
    gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, mode.width, mode.height)
        .fps(gst::Fraction::new(mode.fps as i32, 1))
        .colorimetry(&colorimetry)
        .build()
        .map_err(|e| {
            Error::Gstreamer(format!(
                "video info for {}x{}: {e}",
                mode.width, mode.height
            ))
        })
}

fn make(factory: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(factory).build().map_err(|_| {
        Error::Gstreamer(format!(
            "element {factory} is missing; run deploy/install-deps.sh"
        ))
    })
}

impl Encoder {
    /// Builds and starts a pipeline around one encoder element.
    pub fn open(candidate: &EncoderCandidate, settings: &EncoderSettings) -> Result<Self> {
        init()?;
        settings.validate()?;
        if candidate.codec != settings.codec {
            return Err(Error::invalid(
                "encoder",
                format!(
                    "{} encodes {}, not {}",
                    candidate.element, candidate.codec, settings.codec
                ),
            ));
        }
        let encoder = gst::ElementFactory::make(candidate.element)
            .build()
            .map_err(|_| {
                Error::Gstreamer(format!(
                    "{} is not registered (needs {})",
                    candidate.element, candidate.needs
                ))
            })?;
        configure(&encoder, candidate.element, settings)?;

        let info = video_info(settings.mode)?;
        let caps = info
            .to_caps()
            .map_err(|e| Error::Gstreamer(e.to_string()))?;
        let src = gst_app::AppSrc::builder()
            .caps(&caps)
            .format(gst::Format::Time)
            .is_live(true)
            .do_timestamp(false)
            .block(false)
            .max_buffers(2)
            .leaky_type(gst_app::AppLeakyType::Downstream)
            .build();
        let sink = gst_app::AppSink::builder().sync(false).build();
        let pipeline = gst::Pipeline::new();
        let mut chain: Vec<gst::Element> = vec![src.clone().upcast(), encoder.clone()];
        match settings.codec {
            Codec::H264 => {
                let profile = gst::Caps::builder("video/x-h264")
                    .field("profile", "constrained-baseline")
                    .field("stream-format", "byte-stream")
                    .build();
                let parse = make("h264parse")?;
                parse.set_property("config-interval", -1i32);
                let au = gst::Caps::builder("video/x-h264")
                    .field("stream-format", "byte-stream")
                    .field("alignment", "au")
                    .build();
                chain.push(
                    gst::ElementFactory::make("capsfilter")
                        .property("caps", &profile)
                        .build()?,
                );
                chain.push(parse);
                chain.push(
                    gst::ElementFactory::make("capsfilter")
                        .property("caps", &au)
                        .build()?,
                );
            }
            Codec::Vp8 => {}
        }
        chain.push(sink.clone().upcast());
        pipeline.add_many(&chain)?;
        gst::Element::link_many(&chain).map_err(|_| {
            Error::Gstreamer(format!(
                "{} cannot produce browser-safe {}",
                candidate.element, settings.codec
            ))
        })?;

        let pool = gst_video::VideoBufferPool::new();
        let mut config = pool.config();
        config.set_params(Some(&caps), info.size() as u32, 2, 0);
        pool.set_config(config)?;
        pool.set_active(true)?;

        pipeline.set_state(gst::State::Playing).map_err(|_| {
            Error::Gstreamer(format!(
                "{} pipeline would not start: {}",
                candidate.element,
                bus_error(&pipeline)
            ))
        })?;
        Ok(Self {
            pipeline: pipeline.clone(),
            src,
            sink,
            encoder,
            info,
            pool: pool.upcast(),
            candidate: *candidate,
        })
    }

    /// The encoder element in use.
    pub fn candidate(&self) -> &EncoderCandidate {
        &self.candidate
    }

    /// Converts a rendered or captured frame into an I420 buffer from this encoder's pool.
    pub fn convert(&self, frame: &RgbaFrame<'_>) -> Result<gst::Buffer> {
        let mut buffer = self
            .pool
            .acquire_buffer(None)
            .map_err(|e| Error::Gstreamer(format!("buffer pool: {e:?}")))?;
        {
            let buffer = buffer
                .get_mut()
                .ok_or_else(|| Error::Gstreamer("pool buffer is shared".into()))?;
            let mut map = buffer.map_writable()?;
            let data = map.as_mut_slice();
            let offsets = self.info.offset();
            let strides = self.info.stride();
            let (y, rest) = data.split_at_mut(offsets[1]);
            let (u, v) = rest.split_at_mut(offsets[2] - offsets[1]);
            to_i420(
                frame.order,
                frame.data,
                frame.stride,
                frame.width as usize,
                frame.height as usize,
                I420Planes {
                    y: &mut y[offsets[0]..],
                    y_stride: strides[0] as usize,
                    u,
                    u_stride: strides[1] as usize,
                    v,
                    v_stride: strides[2] as usize,
                },
            );
        }
        Ok(buffer)
    }

    /// True while a frame waits for the encoder; pushing another now would queue it.
    pub fn is_busy(&self) -> bool {
        self.src.current_level_buffers() > 0
    }

    /// Sends a frame to the encoder; with `keyframe`, this frame is encoded as a keyframe.
    pub fn push(&self, mut buffer: gst::Buffer, pts: Duration, keyframe: bool) -> Result<()> {
        {
            let b = buffer.make_mut();
            let t = gst::ClockTime::from_nseconds(pts.as_nanos() as u64);
            b.set_pts(t);
            b.set_dts(t);
            b.set_duration(gst::ClockTime::from_nseconds(
                1_000_000_000 / u64::from(self.info.fps().numer() as u32),
            ));
        }
        if keyframe {
            // Serialized with the buffers in appsrc's queue, so it applies to this frame.
            let ev = gst_video::DownstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build();
            self.src.send_event(ev);
        }
        self.src.push_buffer(buffer).map_err(|e| {
            Error::Gstreamer(format!(
                "encoder refused a frame ({e:?}): {}",
                bus_error(&self.pipeline)
            ))
        })?;
        Ok(())
    }

    /// Waits up to `timeout` for the next encoded frame. `Ok(None)` at end of stream or timeout.
    pub fn pull(&self, timeout: Duration) -> Result<Option<EncodedFrame>> {
        match self
            .sink
            .try_pull_sample(gst::ClockTime::from_nseconds(timeout.as_nanos() as u64))
        {
            Some(sample) => Ok(Some(to_frame(&sample)?)),
            None => match bus_error_opt(&self.pipeline) {
                Some(e) => Err(Error::Gstreamer(e)),
                None => Ok(None),
            },
        }
    }

    /// Hands every encoded frame to `on_frame` on GStreamer's thread, as soon as it is ready.
    pub fn on_frame(&self, mut on_frame: impl FnMut(EncodedFrame) + Send + 'static) {
        self.sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    match to_frame(&sample) {
                        Ok(f) => on_frame(f),
                        Err(e) => tracing::warn!(error = %e, "unreadable encoded frame"),
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    }

    /// Changes the target bitrate while running.
    pub fn set_bitrate_kbps(&self, kbps: u32) -> Result<()> {
        let value = match self.candidate.element {
            "openh264enc" | "vp8enc" => u64::from(kbps) * 1000,
            _ => u64::from(kbps),
        };
        let prop = if self.candidate.element == "vp8enc" {
            "target-bitrate"
        } else {
            "bitrate"
        };
        set(&self.encoder, prop, &value.to_string())
    }

    /// Ends the stream and waits until every frame inside the encoder has been delivered to the
    /// [`Encoder::on_frame`] callback.
    pub fn drain(&self, timeout: Duration) -> Result<()> {
        let _ = self.src.end_of_stream();
        let bus = self
            .pipeline
            .bus()
            .ok_or_else(|| Error::Gstreamer("pipeline without bus".into()))?;
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        match msg.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Eos(_)) => Ok(()),
            Some(gst::MessageView::Error(e)) => Err(Error::Gstreamer(format!(
                "draining {}: {}",
                self.candidate.element,
                e.error()
            ))),
            _ => Err(Error::Gstreamer(format!(
                "{} did not drain within {timeout:?}",
                self.candidate.element
            ))),
        }
    }

    /// Ends the stream and returns the frames still inside the encoder.
    pub fn finish(self) -> Result<Vec<EncodedFrame>> {
        let _ = self.src.end_of_stream();
        let mut rest = Vec::new();
        while let Some(f) = self.pull(Duration::from_secs(5))? {
            rest.push(f);
        }
        Ok(rest)
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
        let _ = self.pool.set_active(false);
    }
}

fn to_frame(sample: &gst::Sample) -> Result<EncodedFrame> {
    let buffer = sample
        .buffer()
        .ok_or_else(|| Error::Gstreamer("sample without buffer".into()))?;
    let map = buffer.map_readable()?;
    Ok(EncodedFrame {
        data: map.as_slice().to_vec(),
        pts: Duration::from_nanos(running_time(sample, buffer).unwrap_or(0)),
        keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
    })
}

/// The buffer's time on the input's clock. Encoders may shift timestamps (GstVideoEncoder adds
/// 1000 hours to keep DTS positive) and shift the segment with them; running time undoes that.
fn running_time(sample: &gst::Sample, buffer: &gst::BufferRef) -> Option<u64> {
    let pts = buffer.pts()?;
    let segment = sample
        .segment()
        .and_then(|s| s.downcast_ref::<gst::ClockTime>());
    Some(
        segment
            .and_then(|s| s.to_running_time(pts))
            .unwrap_or(pts)
            .nseconds(),
    )
}

fn bus_error_opt(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    let msg = bus.pop_filtered(&[gst::MessageType::Error])?;
    match msg.view() {
        gst::MessageView::Error(e) => Some(format!(
            "{} ({})",
            e.error(),
            e.debug().map(|d| d.to_string()).unwrap_or_default()
        )),
        _ => None,
    }
}

fn bus_error(pipeline: &gst::Pipeline) -> String {
    bus_error_opt(pipeline).unwrap_or_else(|| "no error message".into())
}

/// Tries one candidate for real: a small pipeline must turn a grey frame into a bitstream.
fn test_encode(candidate: &EncoderCandidate, codec: Codec) -> std::result::Result<(), String> {
    if gst::ElementFactory::find(candidate.element).is_none() {
        return Err(format!(
            "not registered in GStreamer (needs {})",
            candidate.needs
        ));
    }
    let mode = VideoMode {
        width: 320,
        height: 240,
        fps: 30,
    };
    let settings = EncoderSettings::for_mode(mode, codec);
    let enc = Encoder::open(candidate, &settings).map_err(|e| e.to_string())?;
    let grey = vec![128u8; 320 * 240 * 4];
    let frame = RgbaFrame {
        order: crate::convert::PixelOrder::Rgba,
        data: &grey,
        stride: 320 * 4,
        width: 320,
        height: 240,
    };
    for i in 0..3u64 {
        let buf = enc.convert(&frame).map_err(|e| e.to_string())?;
        enc.push(buf, Duration::from_millis(i * 33), false)
            .map_err(|e| e.to_string())?;
    }
    let _ = enc.src.end_of_stream();
    match enc.pull(Duration::from_secs(5)) {
        Ok(Some(f)) if !f.data.is_empty() => Ok(()),
        Ok(_) => Err("produced no output for a test frame".into()),
        Err(e) => Err(format!("failed on a test frame: {e}")),
    }
}

/// Picks the encoder for `codec` by test-encoding along the chain (or only `only`), logging the
/// choice and every skip.
pub fn probe_chain(codec: Codec, only: Option<&str>) -> Result<EncoderChoice> {
    init()?;
    let choice = choose(codec, only, |c| test_encode(c, codec))?;
    for s in &choice.skipped {
        tracing::info!(encoder = %s.element, reason = %s.reason, "encoder skipped");
    }
    tracing::info!(encoder = choice.candidate.element, hardware = choice.candidate.hardware, %codec, "encoder chosen");
    Ok(choice)
}
