//! The session's sound: Opus packets from the audio track (one per RTP packet, RFC 7587) decoded
//! by GStreamer to 48 kHz stereo 16-bit PCM — `appsrc ! opusdec ! audioconvert ! appsink`.

use crate::{Error, Result};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use pixelgrid_proto::audio::SAMPLE_RATE;

/// 20 ms (or so) of decoded sound.
#[derive(Debug, Clone)]
pub struct AudioChunk {
    /// Interleaved stereo samples (left, right, left, ...), 48 kHz.
    pub pcm: Vec<i16>,
    /// Root-mean-square level, 0.0 (silence) to 1.0.
    pub level: f32,
    /// The RTP timestamp of the packet it came from.
    pub rtp_timestamp: u32,
    /// When the node made or captured it (node's clock, Unix ms), once its `hello` arrived.
    pub capture_unix_ms: Option<f64>,
    /// When it came out of the decoder here, Unix ms.
    pub decoded_unix_ms: f64,
}

pub use pixelgrid_proto::audio::level;

/// An Opus decoder fed packet by packet.
pub(crate) struct AudioDecoder {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    // RTP timestamps of packets pushed and not yet decoded, in order (one buffer out per in).
    pending: Arc<Mutex<VecDeque<u32>>>,
}

impl AudioDecoder {
    /// Starts a decoder; `on_pcm(samples, rtp_timestamp)` gets each decoded packet.
    pub fn start(mut on_pcm: impl FnMut(Vec<i16>, u32) + Send + 'static) -> Result<Self> {
        gst::init().map_err(|e| Error::Decoder(e.to_string()))?;
        let fail = |e: gst::glib::BoolError| Error::Decoder(e.to_string());
        let caps = gst::Caps::builder("audio/x-opus")
            .field("channel-mapping-family", 0i32)
            .field("channels", 2i32)
            .field("rate", SAMPLE_RATE as i32)
            .build();
        let src = gst_app::AppSrc::builder()
            .caps(&caps)
            .format(gst::Format::Time)
            .is_live(true)
            .build();
        let dec = gst::ElementFactory::make("opusdec")
            .build()
            .map_err(|_| Error::Decoder("no opusdec; install gstreamer1.0-plugins-base".into()))?;
        let convert = gst::ElementFactory::make("audioconvert")
            .build()
            .map_err(|_| Error::Decoder("no audioconvert".into()))?;
        let pcm = gst::Caps::builder("audio/x-raw")
            .field("format", "S16LE")
            .field("layout", "interleaved")
            .field("rate", SAMPLE_RATE as i32)
            .field("channels", 2i32)
            .build();
        let sink = gst_app::AppSink::builder().caps(&pcm).sync(false).build();
        let pending: Arc<Mutex<VecDeque<u32>>> = Arc::default();
        let out_pending = Arc::clone(&pending);
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let rtp = out_pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .pop_front()
                        .unwrap_or(0);
                    if let Some(buffer) = sample.buffer()
                        && let Ok(map) = buffer.map_readable()
                    {
                        let samples = map
                            .as_slice()
                            .chunks_exact(2)
                            .map(|b| i16::from_le_bytes([b[0], b[1]]))
                            .collect();
                        on_pcm(samples, rtp);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        let pipeline = gst::Pipeline::new();
        pipeline
            .add_many([src.upcast_ref(), &dec, &convert, sink.upcast_ref()])
            .map_err(fail)?;
        gst::Element::link_many([src.upcast_ref(), &dec, &convert, sink.upcast_ref()])
            .map_err(fail)?;
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| Error::Decoder(format!("audio decoder would not start: {e}")))?;
        Ok(Self {
            pipeline,
            src,
            pending,
        })
    }

    /// Decodes one Opus packet that arrived with `rtp_timestamp`.
    pub fn push(&self, payload: Vec<u8>, rtp_timestamp: u32) {
        if payload.is_empty() {
            return;
        }
        {
            let mut q = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            // A decoder that fell behind: forget the oldest rather than grow.
            if q.len() >= 50 {
                q.pop_front();
            }
            q.push_back(rtp_timestamp);
        }
        let mut buffer = gst::Buffer::from_mut_slice(payload);
        if let Some(b) = buffer.get_mut() {
            let ns = u64::from(rtp_timestamp) * 1_000_000_000 / u64::from(SAMPLE_RATE);
            b.set_pts(gst::ClockTime::from_nseconds(ns));
        }
        let _ = self.src.push_buffer(buffer);
    }
}

impl Drop for AudioDecoder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
