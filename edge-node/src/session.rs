//! One game session: a game, a renderer and an encoder on the session's own frame clock.
//!
//! Each session runs on its own thread. Every tick of its [`FramePacer`] it advances the game with
//! the player's input, renders, converts and hands the frame to the encoder. If the encoder is
//! still busy with the previous frame the new one is dropped and counted, so nothing queues
//! without bound; ticks missed because the thread ran late are skipped and counted too. Encoded
//! frames reach the caller's callback on GStreamer's thread together with where the time went.

use crate::encode::{EncodedFrame, Encoder, EncoderCandidate, EncoderSettings};
use crate::game::{DrawList, FrameInfo, Game};
use crate::input::{InputEvent, InputRejected, InputState};
use crate::pacing::{FramePacer, Pace};
use crate::render::{GpuTimings, Renderer, VulkanContext};
use crate::{Error, Result};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How many recent frames' timings a session keeps.
const TIMINGS_KEPT: usize = 16_384;

/// Where one frame's time went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct FrameTimings {
    /// Recording, submitting and drawing on the device.
    pub render_ms: f64,
    /// Copying the picture into host memory.
    pub readback_ms: f64,
    /// RGBA → I420.
    pub convert_ms: f64,
    /// From pushing to the encoder until its output was ready.
    pub encode_ms: f64,
    /// From the start of rendering until the encoded frame was ready.
    pub total_ms: f64,
}

impl FrameTimings {
    /// Splits a submit→ready wall time into render and readback using the GPU's own timestamps
    /// where it has them (else all of it counts as render).
    pub fn split_gpu(wall_ms: f64, gpu: GpuTimings) -> (f64, f64) {
        let readback = gpu.copy_ms.unwrap_or(0.0).clamp(0.0, wall_ms);
        (wall_ms - readback, readback)
    }
}

/// An encoded frame as a session delivers it.
#[derive(Debug, Clone)]
pub struct SessionFrame {
    /// The bitstream and its presentation time (capture time on the session clock).
    pub encoded: EncodedFrame,
    /// The frame clock tick it was rendered for (the number drawn on screen).
    pub number: u64,
    /// Where its time went.
    pub timings: FrameTimings,
}

/// What a session is asked to run.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Identifier used in logs and spans.
    pub id: String,
    /// Game identifier from the catalogue.
    pub game: String,
    /// Video mode, codec, bitrate, GOP.
    pub encoder: EncoderSettings,
}

/// Counters a session keeps while it runs.
#[derive(Debug, Default)]
pub struct SessionCounters {
    frames_rendered: AtomicU64,
    frames_encoded: AtomicU64,
    keyframes: AtomicU64,
    dropped_late: AtomicU64,
    dropped_encoder_busy: AtomicU64,
    input_events: AtomicU64,
    timings: Mutex<VecDeque<FrameTimings>>,
    failure: Mutex<Option<String>>,
}

/// A snapshot of a session's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SessionStats {
    /// Frames rendered and sent to the encoder.
    pub frames_rendered: u64,
    /// Frames the encoder delivered.
    pub frames_encoded: u64,
    /// Of those, keyframes.
    pub keyframes: u64,
    /// Ticks skipped because the session ran late.
    pub dropped_late: u64,
    /// Frames not rendered because the encoder was still busy.
    pub dropped_encoder_busy: u64,
    /// Input events applied.
    pub input_events: u64,
    /// Seconds since the session started.
    pub elapsed_s: f64,
}

impl SessionCounters {
    /// Timings of the most recent frames, oldest first.
    pub fn recent_timings(&self) -> Vec<FrameTimings> {
        self.timings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }
}

enum Control {
    Input(InputEvent),
    ReleaseAll,
    Keyframe,
    Bitrate(u32),
    FrameDivisor(u32),
    /// Draw this render-challenge nonce on every frame from now on (built-in games).
    Challenge(u32),
    Stop,
}

/// Where a session's Opus packets go; `None` for a session without sound.
pub type AudioOut = Option<Box<dyn FnMut(crate::audio::AudioPacket) + Send>>;

/// A running session; dropping it stops it.
#[derive(Debug)]
pub struct Session {
    id: String,
    control: mpsc::Sender<Control>,
    // Its sound, stopped with the session.
    audio: Mutex<Option<crate::audio::AudioStream>>,
    // A packaged game takes input straight into its display, not on the next frame.
    game_input: Option<Arc<crate::runtime::GameInput>>,
    counters: Arc<SessionCounters>,
    started: Instant,
    // The wall clock at `started`, Unix ms: capture times are `epoch_unix_ms + pts`.
    epoch_unix_ms: f64,
    worker: Mutex<Option<JoinHandle<()>>>,
}

struct PendingFrame {
    pts: Duration,
    number: u64,
    started: Instant,
    pushed: Instant,
    render_ms: f64,
    readback_ms: f64,
    convert_ms: f64,
}

// The encoder end every kind of session shares: frames in, with their timings noted for when
// the encoded frame comes out.
struct FramePush {
    encoder: Encoder,
    counters: Arc<SessionCounters>,
    pending: Arc<Mutex<VecDeque<PendingFrame>>>,
    keyframe_requested: bool,
    /// Encode one tick in this many (the congestion ladder halves the frame rate with 2).
    frame_divisor: u64,
    /// Session time of the last keyframe forced by a request.
    last_forced_keyframe: Option<Duration>,
    /// The frame-clock tick of the last frame pushed.
    last_tick_encoded: Option<u64>,
    /// The bitrate the stream should carry, once the congestion ladder has set one.
    target_kbps: Option<u32>,
}

/// The shortest time between two keyframes forced by requests (PLI, FIR, a player's message).
pub const KEYFRAME_GAP: Duration = Duration::from_millis(300);

impl FramePush {
    fn new(
        encoder: Encoder,
        counters: &Arc<SessionCounters>,
        on_frame: impl FnMut(SessionFrame) + Send + 'static,
    ) -> Self {
        let pending: Arc<Mutex<VecDeque<PendingFrame>>> = Arc::default();
        install_delivery(
            &encoder,
            Arc::clone(&pending),
            Arc::clone(counters),
            on_frame,
        );
        Self {
            encoder,
            counters: Arc::clone(counters),
            pending,
            keyframe_requested: false,
            frame_divisor: 1,
            last_forced_keyframe: None,
            last_tick_encoded: None,
            target_kbps: None,
        }
    }

    /// Sets the encoder's target bitrate as the stream will carry it.
    fn set_bitrate_kbps(&mut self, kbps: u32) -> Result<()> {
        self.target_kbps = Some(kbps);
        self.apply_bitrate()
    }

    /// Encodes one tick in `n` from now on.
    fn set_frame_divisor(&mut self, n: u32) -> Result<()> {
        self.frame_divisor = u64::from(n.max(1));
        self.apply_bitrate()
    }

    /// x264 budgets bits per frame from the frame rate in its caps, not from timestamps: fed
    /// one frame in `n` it produces about 1/n of its target (measured: 0.8–0.9 Mbit/s sent of
    /// 1.5–1.6 asked, at half rate). It is asked for n × the target so the stream carries it.
    fn apply_bitrate(&mut self) -> Result<()> {
        let Some(kbps) = self.target_kbps else {
            return Ok(());
        };
        let per_frame_budget = self.encoder.candidate().element == "x264enc";
        let factor = if per_frame_budget {
            self.frame_divisor.min(8) as u32
        } else {
            1
        };
        self.encoder.set_bitrate_kbps(kbps.saturating_mul(factor))
    }

    /// True when the ladder's frame rate leaves out `tick` (it comes less than `frame_divisor`
    /// ticks after the last frame encoded); the game still advances.
    fn skips(&self, tick: u64) -> bool {
        self.last_tick_encoded
            .is_some_and(|last| tick < last + self.frame_divisor)
    }

    fn push(&mut self, buffer: gstreamer::Buffer, frame: PendingFrame) -> Result<()> {
        let pts = frame.pts;
        self.last_tick_encoded = Some(frame.number);
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(frame);
        // Forced keyframes are at least KEYFRAME_GAP apart: every player's loss asks for one, and
        // a keyframe is several frames' worth of bits on a link that is already losing packets.
        // A request inside the gap waits for it to pass rather than being dropped.
        let keyframe = self.keyframe_requested
            && self
                .last_forced_keyframe
                .is_none_or(|t| pts.saturating_sub(t) >= KEYFRAME_GAP);
        if keyframe {
            self.keyframe_requested = false;
            self.last_forced_keyframe = Some(pts);
        }
        self.encoder.push(buffer, pts, keyframe)?;
        self.counters
            .frames_rendered
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// True (and counted) when the encoder still has the previous frame.
    fn busy(&self) -> bool {
        let busy = self.encoder.is_busy();
        if busy {
            self.counters
                .dropped_encoder_busy
                .fetch_add(1, Ordering::Relaxed);
        }
        busy
    }
}

struct Worker {
    game: Box<dyn Game>,
    renderer: Renderer,
    out: FramePush,
    pacer: FramePacer,
    input: InputState,
    draw: DrawList,
    control: mpsc::Receiver<Control>,
    width: u32,
    height: u32,
    // Time zero of the session's clock, shared with its sound.
    epoch: Instant,
    // A checker's render challenge, drawn on every frame once set.
    challenge: Option<u32>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Session {
    /// Starts a session on its own thread. `on_frame` receives every encoded frame, `audio`
    /// every Opus packet of the game's generated soundtrack.
    pub fn start(
        vulkan: &Arc<VulkanContext>,
        game: Box<dyn Game>,
        encoder: &EncoderCandidate,
        config: &SessionConfig,
        on_frame: impl FnMut(SessionFrame) + Send + 'static,
        audio: AudioOut,
    ) -> Result<Self> {
        let mode = config.encoder.mode;
        let (epoch, epoch_unix_ms) = (Instant::now(), pixelgrid_proto::clock::unix_ms_f64());
        let renderer = Renderer::new(vulkan, mode.width, mode.height)?;
        let encoder = Encoder::open(encoder, &config.encoder)?;
        let counters = Arc::new(SessionCounters::default());
        let out = FramePush::new(encoder, &counters, on_frame);
        let (tx, rx) = mpsc::channel();
        let worker = Worker {
            game,
            renderer,
            out,
            pacer: FramePacer::new(mode.fps),
            input: InputState::default(),
            draw: DrawList::default(),
            control: rx,
            width: mode.width,
            height: mode.height,
            epoch,
            challenge: None,
        };
        let audio = audio
            .map(|out| crate::audio::AudioStream::soundtrack(epoch, out))
            .transpose()?;
        let handle = spawn_worker(config, &counters, move || worker.run())?;
        Ok(Self {
            id: config.id.clone(),
            control: tx,
            audio: Mutex::new(audio),
            game_input: None,
            counters,
            started: epoch,
            epoch_unix_ms,
            worker: Mutex::new(Some(handle)),
        })
    }

    /// Starts a session of a packaged game: its private world, display capture and encoder, on
    /// a thread of its own. Returns once the game is ready, or with why it did not get there.
    pub fn start_packaged(
        runtime: &crate::runtime::RuntimeConfig,
        game: &crate::runtime::store::InstalledGame,
        encoder: &EncoderCandidate,
        config: &SessionConfig,
        on_frame: impl FnMut(SessionFrame) + Send + 'static,
        audio: AudioOut,
    ) -> Result<Self> {
        let mode = config.encoder.mode;
        let (epoch, epoch_unix_ms) = (Instant::now(), pixelgrid_proto::clock::unix_ms_f64());
        let encoder = Encoder::open(encoder, &config.encoder)?;
        let counters = Arc::new(SessionCounters::default());
        let out = FramePush::new(encoder, &counters, on_frame);
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (runtime, game, id) = (runtime.clone(), game.clone(), config.id.clone());
        // The world is made on the session's own thread: the sandbox dies with the thread that
        // started it, so it must be the one that lives as long as the session.
        let handle = spawn_worker(config, &counters, move || {
            let world = crate::runtime::World::start(&runtime, &game, mode, &id);
            let world = match world {
                Ok(w) => w,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            let capture = match crate::runtime::capture::Capture::open(
                &world.display_name(),
                mode.width,
                mode.height,
            ) {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            // The game's sound, when it has any and the player wants it.
            let sound = match (world.pulse_server(), audio) {
                (Some(server), Some(out)) => {
                    match crate::audio::AudioStream::from_pulse(&server, "game.monitor", epoch, out)
                    {
                        Ok(s) => Some(s),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return Ok(());
                        }
                    }
                }
                _ => None,
            };
            let _ = ready_tx.send(Ok((Arc::clone(world.input()), sound)));
            CaptureWorker {
                epoch,
                capture,
                world,
                out,
                pacer: FramePacer::new(mode.fps),
                control: rx,
                mode,
            }
            .run()
        })?;
        let (input, sound) = match ready_rx.recv() {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e);
            }
            Err(_) => {
                let _ = handle.join();
                return Err(Error::Session {
                    id: config.id.clone(),
                    reason: "the session thread stopped while starting".into(),
                });
            }
        };
        Ok(Self {
            id: config.id.clone(),
            control: tx,
            audio: Mutex::new(sound),
            game_input: Some(input),
            counters,
            started: epoch,
            epoch_unix_ms,
            worker: Mutex::new(Some(handle)),
        })
    }

    /// The session's identifier.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Validates and forwards one input event to the game.
    pub fn send_input(&self, event: InputEvent) -> Result<(), InputRejected> {
        event.validate()?;
        match &self.game_input {
            Some(game) => match game.send(&event) {
                Ok(()) => {
                    self.counters.input_events.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(session = %self.id, error = %e, "input not delivered"),
            },
            None => {
                if let Some(audio) = &*self.audio.lock().unwrap_or_else(|p| p.into_inner()) {
                    audio.on_input(&event);
                }
                let _ = self.control.send(Control::Input(event));
            }
        }
        Ok(())
    }

    /// Wall-clock time of the session clock's zero, Unix ms.
    pub fn epoch_unix_ms(&self) -> f64 {
        self.epoch_unix_ms
    }

    /// True when the session makes sound.
    pub fn has_audio(&self) -> bool {
        self.audio
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Lets go of every key and button (the player's channel closed or went silent).
    pub fn release_all_input(&self) {
        match &self.game_input {
            Some(game) => game.release_all(),
            None => {
                let _ = self.control.send(Control::ReleaseAll);
            }
        }
    }

    /// Makes the next frame a keyframe (a viewer joined or lost packets).
    pub fn request_keyframe(&self) {
        let _ = self.control.send(Control::Keyframe);
    }

    /// Changes the encoder's target bitrate.
    pub fn set_bitrate_kbps(&self, kbps: u32) {
        let _ = self.control.send(Control::Bitrate(kbps));
    }

    /// Draws `nonce` (a checker's render challenge, ≤ 999,999,999) on every frame from now on.
    pub fn set_challenge(&self, nonce: u32) {
        let _ = self.control.send(Control::Challenge(nonce));
    }

    /// Encodes one frame in `divisor` from now on (1 = every frame of the mode).
    pub fn set_frame_divisor(&self, divisor: u32) {
        let _ = self.control.send(Control::FrameDivisor(divisor.max(1)));
    }

    /// The live counters (shared with the session's thread).
    pub fn counters(&self) -> &Arc<SessionCounters> {
        &self.counters
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SessionStats {
        let c = &self.counters;
        SessionStats {
            frames_rendered: c.frames_rendered.load(Ordering::Relaxed),
            frames_encoded: c.frames_encoded.load(Ordering::Relaxed),
            keyframes: c.keyframes.load(Ordering::Relaxed),
            dropped_late: c.dropped_late.load(Ordering::Relaxed),
            dropped_encoder_busy: c.dropped_encoder_busy.load(Ordering::Relaxed),
            input_events: c.input_events.load(Ordering::Relaxed),
            elapsed_s: self.started.elapsed().as_secs_f64(),
        }
    }

    /// Why the session stopped on its own, if it did.
    pub fn failure(&self) -> Option<String> {
        self.counters
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the session, waits for its thread and returns its final counters.
    pub fn stop(self) -> Result<SessionStats> {
        self.shutdown();
        match self.failure() {
            Some(reason) => Err(Error::Session {
                id: self.id.clone(),
                reason,
            }),
            None => Ok(self.stats()),
        }
    }

    /// Stops the session and waits for its thread (which frees its renderer and encoder); later
    /// calls do nothing. Blocks for up to a frame plus the encoder's drain.
    pub fn shutdown(&self) {
        drop(self.audio.lock().unwrap_or_else(|p| p.into_inner()).take());
        let _ = self.control.send(Control::Stop);
        let handle = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// True once the session's thread has ended (stopped, or failed).
    pub fn is_finished(&self) -> bool {
        self.worker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|h| h.is_finished())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn spawn_worker(
    config: &SessionConfig,
    counters: &Arc<SessionCounters>,
    work: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<JoinHandle<()>> {
    let span = tracing::info_span!("session", id = %config.id, game = %config.game);
    let counters = Arc::clone(counters);
    std::thread::Builder::new()
        .name(format!(
            "session-{}",
            config.id.chars().take(8).collect::<String>()
        ))
        .spawn(move || {
            let _enter = span.enter();
            if let Err(e) = work() {
                tracing::error!(error = %e, "session failed");
                *counters.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        })
        .map_err(|e| Error::Session {
            id: config.id.clone(),
            reason: format!("cannot start thread: {e}"),
        })
}

fn install_delivery(
    encoder: &Encoder,
    pending: Arc<Mutex<VecDeque<PendingFrame>>>,
    counters: Arc<SessionCounters>,
    mut on_frame: impl FnMut(SessionFrame) + Send + 'static,
) {
    encoder.on_frame(move |encoded| {
        let done = Instant::now();
        let p = {
            let mut q = pending.lock().unwrap_or_else(|p| p.into_inner());
            // Frames come out in order; anything older than this one was lost inside the encoder.
            while q.front().is_some_and(|p| p.pts < encoded.pts) {
                q.pop_front();
            }
            q.pop_front().filter(|p| p.pts == encoded.pts)
        };
        let (number, timings) = match p {
            Some(p) => (
                p.number,
                FrameTimings {
                    render_ms: p.render_ms,
                    readback_ms: p.readback_ms,
                    convert_ms: p.convert_ms,
                    encode_ms: ms(done - p.pushed),
                    total_ms: ms(done - p.started),
                },
            ),
            None => (0, FrameTimings::default()),
        };
        counters.frames_encoded.fetch_add(1, Ordering::Relaxed);
        if encoded.keyframe {
            counters.keyframes.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut t = counters.timings.lock().unwrap_or_else(|p| p.into_inner());
            if t.len() == TIMINGS_KEPT {
                t.pop_front();
            }
            t.push_back(timings);
        }
        on_frame(SessionFrame {
            encoded,
            number,
            timings,
        });
    });
}

impl Worker {
    /// Applies one control message; false means stop.
    fn handle(&mut self, c: Control) -> Result<bool> {
        match c {
            Control::Input(e) => {
                if self.input.apply(&e).is_ok() {
                    self.out
                        .counters
                        .input_events
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            Control::ReleaseAll => self.input.release_all(),
            Control::Keyframe => self.out.keyframe_requested = true,
            Control::Bitrate(kbps) => self.out.set_bitrate_kbps(kbps)?,
            Control::FrameDivisor(n) => self.out.set_frame_divisor(n)?,
            Control::Challenge(n) => self.challenge = Some(n),
            Control::Stop => return Ok(false),
        }
        Ok(true)
    }

    fn run(mut self) -> Result<()> {
        let result = self.run_until_stopped();
        // Deliver what is still inside the encoder before the pipeline is torn down.
        let drained = self.out.encoder.drain(Duration::from_secs(2));
        result.and(drained)
    }

    fn run_until_stopped(&mut self) -> Result<()> {
        let epoch = self.epoch;
        let mut last_due_us = 0;
        loop {
            let now_us = epoch.elapsed().as_micros() as u64;
            match self.pacer.poll(now_us) {
                Pace::SleepUntil(due) => match self
                    .control
                    .recv_timeout(Duration::from_micros(due - now_us))
                {
                    Ok(c) => {
                        // Input is shown on a frame made now, not at the next tick.
                        let input = matches!(c, Control::Input(_));
                        if !self.handle(c)? {
                            return Ok(());
                        }
                        if input {
                            self.pacer.hurry(epoch.elapsed().as_micros() as u64);
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                },
                Pace::Render {
                    tick,
                    due_us,
                    skipped,
                } => {
                    while let Ok(c) = self.control.try_recv() {
                        if !self.handle(c)? {
                            return Ok(());
                        }
                    }
                    self.out
                        .counters
                        .dropped_late
                        .fetch_add(skipped, Ordering::Relaxed);
                    self.game
                        .advance(Duration::from_micros(due_us - last_due_us), &self.input);
                    self.input.end_frame();
                    last_due_us = due_us;
                    if self.out.skips(tick) || self.out.busy() {
                        continue;
                    }
                    self.render_and_push(tick, epoch)?;
                }
            }
        }
    }

    fn render_and_push(&mut self, tick: u64, epoch: Instant) -> Result<()> {
        let info = FrameInfo {
            width: self.width,
            height: self.height,
            frame_number: tick,
        };
        self.game.record(&info, &mut self.draw);
        if let Some(nonce) = self.challenge {
            crate::game::draw_challenge(&mut self.draw, nonce, self.width, self.height);
        }
        let started = Instant::now();
        let ticket = self.renderer.submit(&self.draw)?;
        let encoder = &self.out.encoder;
        let ((ready, buffer), gpu) = self
            .renderer
            .read(ticket, |frame| (Instant::now(), encoder.convert(frame)))?;
        let buffer = buffer?;
        let converted = Instant::now();
        let (render_ms, readback_ms) = FrameTimings::split_gpu(ms(ready - started), gpu);
        let frame = PendingFrame {
            pts: started - epoch,
            number: tick,
            started,
            pushed: converted,
            render_ms,
            readback_ms,
            convert_ms: ms(converted - ready),
        };
        self.out.push(buffer, frame)
    }
}

// A packaged game's session: the display's picture grabbed on each tick of the session's frame
// clock into the encoder; the game's exit ends the session with the reason.
struct CaptureWorker {
    epoch: Instant,
    // Before `world`: the capture lets go of the display before the display goes.
    capture: crate::runtime::capture::Capture,
    world: crate::runtime::World,
    out: FramePush,
    pacer: FramePacer,
    control: mpsc::Receiver<Control>,
    mode: crate::video::VideoMode,
}

impl CaptureWorker {
    fn run(mut self) -> Result<()> {
        let result = self.run_until_stopped();
        let drained = self.out.encoder.drain(Duration::from_secs(2));
        result.and(drained)
    }

    /// Applies one control message; false means stop. Input goes straight to the display
    /// (`Session::send_input`), not through here.
    fn handle(&mut self, c: Control) -> Result<bool> {
        match c {
            Control::Stop => return Ok(false),
            Control::Keyframe => self.out.keyframe_requested = true,
            Control::Bitrate(kbps) => self.out.set_bitrate_kbps(kbps)?,
            Control::FrameDivisor(n) => self.out.set_frame_divisor(n)?,
            // A packaged game's picture is its own: render challenges are for built-in games.
            Control::Input(_) | Control::ReleaseAll | Control::Challenge(_) => {}
        }
        Ok(true)
    }

    fn run_until_stopped(&mut self) -> Result<()> {
        let epoch = self.epoch;
        let mut pinned = Instant::now();
        loop {
            let now_us = epoch.elapsed().as_micros() as u64;
            let (tick, skipped) = match self.pacer.poll(now_us) {
                Pace::SleepUntil(due) => {
                    match self
                        .control
                        .recv_timeout(Duration::from_micros(due - now_us))
                    {
                        Ok(c) => {
                            if !self.handle(c)? {
                                return Ok(());
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                    }
                    continue;
                }
                Pace::Render { tick, skipped, .. } => (tick, skipped),
            };
            while let Ok(c) = self.control.try_recv() {
                if !self.handle(c)? {
                    return Ok(());
                }
            }
            self.out
                .counters
                .dropped_late
                .fetch_add(skipped, Ordering::Relaxed);
            self.world.beat();
            if let Some(reason) = self.world.exited() {
                return Err(Error::GameFailed {
                    game: self.world.game_name().to_owned(),
                    reason: format!("it {reason}"),
                });
            }
            if pinned.elapsed() >= Duration::from_millis(500) {
                self.world.keep_windows_pinned();
                pinned = Instant::now();
            }
            if self.out.skips(tick) || self.out.busy() {
                continue;
            }
            let started = Instant::now();
            let picture = crate::render::RgbaFrame {
                order: crate::convert::PixelOrder::Bgrx,
                data: self.capture.grab()?,
                stride: self.mode.width as usize * 4,
                width: self.mode.width,
                height: self.mode.height,
            };
            let grabbed = Instant::now();
            let buffer = self.out.encoder.convert(&picture)?;
            let converted = Instant::now();
            let frame = PendingFrame {
                pts: started - epoch,
                number: tick,
                started,
                pushed: converted,
                render_ms: 0.0,
                readback_ms: ms(grabbed - started),
                convert_ms: ms(converted - grabbed),
            };
            self.out.push(buffer, frame)?;
        }
    }
}
