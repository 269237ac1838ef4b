//! Sound for every session: Opus, 48 kHz stereo, 20 ms packets tuned for low delay, each stamped
//! on the session's clock (the same zero as the video's capture times) so a player can line the
//! two up.
//!
//! Two sources:
//! - built-in games: the generated [`soundtrack::Soundtrack`] (music, and a blip per key
//!   press), fed in real time: `appsrc ! opusenc ! appsink`;
//! - packaged games: the monitor of the session's own PulseAudio null sink:
//!   `pulsesrc server=unix:<session>/pulse/native device=game.monitor ! audioconvert !
//!   audioresample ! audio/x-raw,rate=48000,channels=2 ! opusenc ! appsink`.
//!
//! By hand: `gst-launch-1.0 audiotestsrc is-live=true ! opusenc frame-size=20
//! audio-type=restricted-lowdelay inband-fec=true ! fakesink`.

pub mod soundtrack;

use crate::{Error, Result};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use pixelgrid_proto::input::InputEvent;
use soundtrack::Soundtrack;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use pixelgrid_proto::audio::{CHANNELS, FRAME_MS, SAMPLE_RATE};
/// Opus bitrate, bits/s.
const BITRATE: i32 = 96_000;

/// One Opus packet.
#[derive(Debug, Clone)]
pub struct AudioPacket {
    /// The Opus packet (one frame of `FRAME_MS`).
    pub data: Vec<u8>,
    /// When its first sample was made or captured, on the session's clock.
    pub pts: Duration,
}

/// A running audio source and encoder; dropping it stops both.
pub struct AudioStream {
    pipeline: gst::Pipeline,
    feeder: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    soundtrack: Option<Arc<Mutex<Soundtrack>>>,
}

impl std::fmt::Debug for AudioStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioStream")
            .field("generated", &self.soundtrack.is_some())
            .finish()
    }
}

fn element(name: &str, package: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(name).build().map_err(|_| {
        Error::Gstreamer(format!(
            "no {name} element; install {package} (deploy/install-deps.sh)"
        ))
    })
}

/// `opusenc ! appsink`, delivering packets stamped `base + buffer pts` to `on_packet`.
fn encoder_tail(
    pipeline: &gst::Pipeline,
    base: Duration,
    mut on_packet: impl FnMut(AudioPacket) + Send + 'static,
) -> Result<gst::Element> {
    let enc = element("opusenc", "gstreamer1.0-plugins-base")?;
    enc.set_property("bitrate", BITRATE);
    enc.set_property_from_str("frame-size", &FRAME_MS.to_string());
    enc.set_property_from_str("audio-type", "restricted-lowdelay");
    // In-band FEC lets a lost packet be rebuilt from the next one.
    enc.set_property("inband-fec", true);
    enc.set_property("packet-loss-percentage", 5i32);
    let sink = gst_app::AppSink::builder().sync(false).build();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(buffer) = sample.buffer()
                    && let Ok(map) = buffer.map_readable()
                {
                    let pts = buffer
                        .pts()
                        .map_or(Duration::ZERO, |t| Duration::from_nanos(t.nseconds()));
                    on_packet(AudioPacket {
                        data: map.as_slice().to_vec(),
                        pts: base + pts,
                    });
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline.add_many([&enc, sink.upcast_ref()])?;
    enc.link(&sink)?;
    Ok(enc)
}

fn pcm_caps() -> gst::Caps {
    gst::Caps::builder("audio/x-raw")
        .field("format", "S16LE")
        .field("layout", "interleaved")
        .field("rate", SAMPLE_RATE as i32)
        .field("channels", CHANNELS as i32)
        .build()
}

impl AudioStream {
    /// The built-in games' generated soundtrack, made in real time from `epoch` on.
    pub fn soundtrack(
        epoch: Instant,
        on_packet: impl FnMut(AudioPacket) + Send + 'static,
    ) -> Result<Self> {
        gst::init()?;
        let pipeline = gst::Pipeline::new();
        let src = gst_app::AppSrc::builder()
            .caps(&pcm_caps())
            .format(gst::Format::Time)
            .is_live(true)
            .build();
        let enc = encoder_tail(&pipeline, Duration::ZERO, on_packet)?;
        pipeline.add(&src)?;
        src.link(&enc)?;
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| Error::Gstreamer(format!("audio pipeline would not start: {e}")))?;
        let track = Arc::new(Mutex::new(Soundtrack::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (feeder_track, feeder_stop) = (Arc::clone(&track), Arc::clone(&stop));
        let feeder = std::thread::Builder::new()
            .name("soundtrack".into())
            .spawn(move || feed(src, feeder_track, feeder_stop, epoch))
            .map_err(|e| Error::Gstreamer(format!("cannot start the soundtrack thread: {e}")))?;
        Ok(Self {
            pipeline,
            feeder: Some(feeder),
            stop,
            soundtrack: Some(track),
        })
    }

    /// A packaged game's sound, from the monitor of `device` on the PulseAudio `server`
    /// (`unix:/path/native`).
    pub fn from_pulse(
        server: &str,
        device: &str,
        epoch: Instant,
        on_packet: impl FnMut(AudioPacket) + Send + 'static,
    ) -> Result<Self> {
        gst::init()?;
        let pipeline = gst::Pipeline::new();
        let src = element("pulsesrc", "gstreamer1.0-pulseaudio")?;
        src.set_property("server", server);
        src.set_property("device", device);
        // 20 ms segments: the capture itself adds no more than one packet of delay.
        src.set_property("buffer-time", 40_000i64);
        src.set_property("latency-time", 20_000i64);
        let convert = element("audioconvert", "gstreamer1.0-plugins-base")?;
        let resample = element("audioresample", "gstreamer1.0-plugins-base")?;
        let caps = gst::ElementFactory::make("capsfilter")
            .property("caps", pcm_caps())
            .build()?;
        // Buffer times count from the moment the pipeline starts playing.
        let base = epoch.elapsed();
        let enc = encoder_tail(&pipeline, base, on_packet)?;
        pipeline.add_many([&src, &convert, &resample, &caps])?;
        gst::Element::link_many([&src, &convert, &resample, &caps, &enc])?;
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| Error::Gstreamer(format!("game audio capture would not start: {e}")))?;
        Ok(Self {
            pipeline,
            feeder: None,
            stop: Arc::new(AtomicBool::new(false)),
            soundtrack: None,
        })
    }

    /// A player's input, for sound effects (generated soundtracks only).
    pub fn on_input(&self, event: &InputEvent) {
        let Some(track) = &self.soundtrack else {
            return;
        };
        let pitch = match event {
            InputEvent::Key { code, down: true } => {
                440.0 + 40.0 * (code.bytes().map(u32::from).sum::<u32>() % 20) as f32
            }
            InputEvent::MouseButton { down: true, .. } => 660.0,
            InputEvent::GamepadButton { pressed: true, .. } => 550.0,
            _ => return,
        };
        track.lock().unwrap_or_else(|p| p.into_inner()).blip(pitch);
    }
}

/// Pushes 20 ms of the soundtrack every 20 ms, each stamped with its time on the session clock.
fn feed(
    src: gst_app::AppSrc,
    track: Arc<Mutex<Soundtrack>>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
) {
    let samples = (SAMPLE_RATE * FRAME_MS / 1000) as usize;
    let frame = Duration::from_millis(u64::from(FRAME_MS));
    let start = epoch.elapsed();
    let mut n: u32 = 0;
    let mut pcm = vec![0i16; samples * CHANNELS as usize];
    while !stop.load(Ordering::Relaxed) {
        let due = start + frame * n;
        if let Some(wait) = due.checked_sub(epoch.elapsed()) {
            std::thread::sleep(wait);
        }
        track
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fill(&mut pcm);
        let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut buffer = gst::Buffer::from_mut_slice(bytes);
        {
            let b = buffer.get_mut().expect("fresh buffer");
            b.set_pts(gst::ClockTime::from_nseconds(due.as_nanos() as u64));
            b.set_duration(gst::ClockTime::from_nseconds(frame.as_nanos() as u64));
        }
        if src.push_buffer(buffer).is_err() {
            return;
        }
        n += 1;
    }
}

impl Drop for AudioStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(f) = self.feeder.take() {
            let _ = f.join();
        }
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
