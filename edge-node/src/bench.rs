//! `edge-node bench-pipeline`: where a frame's time goes (render, readback, convert, encode) and
//! how many sessions one node holds at full frame rate.
//!
//! With one session, frames are made one after another as fast as possible on a virtual clock,
//! so each stage's latency is measured alone. With several, real paced sessions run side by side
//! for `frames / fps` seconds and each one's achieved frame rate is reported.

use crate::encode::{Encoder, EncoderCandidate, EncoderSettings};
use crate::host::SessionHost;
use crate::offline::OfflineSession;
use crate::session::{FrameTimings, SessionConfig};
use crate::video::VideoMode;
use crate::{Error, Result};
use serde::Serialize;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Frames made before measuring, so shader compilation and encoder start-up are not counted.
const WARMUP_FRAMES: u64 = 15;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchRequest {
    /// Game identifier.
    pub game: String,
    /// Encoder settings, including the mode.
    pub settings: EncoderSettings,
    /// Frames per session.
    pub frames: u64,
    /// Sessions side by side.
    pub sessions: u32,
}

/// Percentiles of one stage.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StageSummary {
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
}

/// One session's result in a multi-session run.
#[derive(Debug, Clone, Serialize)]
pub struct SessionResult {
    /// Session index.
    pub session: u32,
    /// Frames encoded per second of wall time (after warm-up).
    pub fps: f64,
    /// Ticks skipped for running late.
    pub dropped_late: u64,
    /// Frames skipped because the encoder was busy.
    pub dropped_encoder_busy: u64,
    /// From asking for the session to its first frame going to the encoder, ms (for a
    /// packaged game: display, sandbox, the game until ready, capture).
    pub start_ms: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Vulkan device name.
    pub device: String,
    /// True on lavapipe.
    pub cpu_rendering: bool,
    /// Encoder element.
    pub encoder: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Target frame rate.
    pub fps: u32,
    /// Frames measured (all sessions).
    pub frames: u64,
    /// Sessions run.
    pub sessions: u32,
    /// Render stage.
    pub render: StageSummary,
    /// Readback stage.
    pub readback: StageSummary,
    /// RGBA → I420.
    pub convert: StageSummary,
    /// Encoder.
    pub encode: StageSummary,
    /// Render start → encoded frame.
    pub total: StageSummary,
    /// One session back to back: frames per second it could make.
    pub single_session_max_fps: Option<f64>,
    /// One session with frame N+1 rendering while frame N is converted and encoded.
    pub single_session_pipelined_fps: Option<f64>,
    /// Per-session results (several sessions).
    pub per_session: Vec<SessionResult>,
    /// Lowest achieved frame rate of any session.
    pub min_session_fps: Option<f64>,
    /// CPU cores on this machine.
    pub cpu_cores: usize,
}

/// Summarises samples in milliseconds.
pub fn summarise(samples: &mut [f64]) -> StageSummary {
    if samples.is_empty() {
        return StageSummary::default();
    }
    samples.sort_by(f64::total_cmp);
    let at =
        |p: f64| samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    StageSummary {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        mean_ms: samples.iter().sum::<f64>() / samples.len() as f64,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the benchmark described by `req` on `host`.
pub fn run(host: &SessionHost, req: &BenchRequest) -> Result<BenchReport> {
    if req.frames == 0 {
        return Err(Error::invalid("frames", "must be at least 1"));
    }
    if req.sessions == 0 || req.sessions > 64 {
        return Err(Error::invalid(
            "sessions",
            format!("{} is out of range; use 1..=64", req.sessions),
        ));
    }
    let choice = host.encoder_for(req.settings.codec)?;
    // A packaged game runs only as a real, paced session.
    let (timings, max_fps, pipelined, per_session) =
        if req.sessions == 1 && !host.is_packaged(&req.game) {
            let (t, fps) = sequential(host, req, &choice.candidate)?;
            let pipelined = pipelined_fps(host, req, &choice.candidate)?;
            (t, Some(fps), Some(pipelined), Vec::new())
        } else {
            let (t, s) = side_by_side(host, req)?;
            (t, None, None, s)
        };
    let pick =
        |f: fn(&FrameTimings) -> f64| summarise(&mut timings.iter().map(f).collect::<Vec<_>>());
    let mode = req.settings.mode;
    Ok(BenchReport {
        device: host.vulkan().info().name.clone(),
        cpu_rendering: host.vulkan().info().cpu_fallback,
        encoder: choice.candidate.element.to_owned(),
        width: mode.width,
        height: mode.height,
        fps: mode.fps,
        frames: timings.len() as u64,
        sessions: req.sessions,
        render: pick(|t| t.render_ms),
        readback: pick(|t| t.readback_ms),
        convert: pick(|t| t.convert_ms),
        encode: pick(|t| t.encode_ms),
        total: pick(|t| t.total_ms),
        single_session_max_fps: max_fps,
        single_session_pipelined_fps: pipelined,
        min_session_fps: per_session.iter().map(|s| s.fps).min_by(f64::total_cmp),
        per_session,
        cpu_cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    })
}

fn sequential(
    host: &SessionHost,
    req: &BenchRequest,
    encoder: &crate::encode::EncoderCandidate,
) -> Result<(Vec<FrameTimings>, f64)> {
    let mode: VideoMode = req.settings.mode;
    let mut session = OfflineSession::new(host.vulkan(), host.catalogue(), &req.game, mode)?;
    let enc = Encoder::open(encoder, &req.settings)?;
    let interval = Duration::from_micros(mode.frame_interval_us());
    let mut out = Vec::with_capacity(req.frames as usize);
    let mut measured_since = Instant::now();
    for i in 0..WARMUP_FRAMES + req.frames {
        if i == WARMUP_FRAMES {
            measured_since = Instant::now();
        }
        let started = Instant::now();
        let ((ready, buffer), cost) = session.next_frame(|f| (Instant::now(), enc.convert(f)))?;
        let converted = Instant::now();
        enc.push(buffer?, interval * i as u32, false)?;
        let frame = enc.pull(Duration::from_secs(5))?.ok_or_else(|| {
            Error::Gstreamer(format!("{} gave no frame back within 5 s", encoder.element))
        })?;
        let done = Instant::now();
        if frame.pts != interval * i as u32 {
            return Err(Error::Gstreamer(format!(
                "encoder returned frame at {:?}, expected {:?}",
                frame.pts,
                interval * i as u32
            )));
        }
        if i >= WARMUP_FRAMES {
            let (render_ms, readback_ms) = FrameTimings::split_gpu(ms(cost.wall), cost.gpu);
            out.push(FrameTimings {
                render_ms,
                readback_ms,
                convert_ms: ms(converted - ready),
                encode_ms: ms(done - converted),
                total_ms: ms(done - started),
            });
        }
    }
    let fps = req.frames as f64 / measured_since.elapsed().as_secs_f64();
    Ok((out, fps))
}

/// Frames per second one session makes when frame N+1 is rendered while frame N is converted
/// and encoded (the renderer's ring of slots at work).
fn pipelined_fps(
    host: &SessionHost,
    req: &BenchRequest,
    encoder: &EncoderCandidate,
) -> Result<f64> {
    let mode = req.settings.mode;
    let mut session = OfflineSession::new(host.vulkan(), host.catalogue(), &req.game, mode)?;
    let enc = Encoder::open(encoder, &req.settings)?;
    let interval = Duration::from_micros(mode.frame_interval_us());
    let total = WARMUP_FRAMES + req.frames;
    let mut in_flight = VecDeque::new();
    let mut started = Instant::now();
    for i in 0..total + 1 {
        if i == WARMUP_FRAMES {
            started = Instant::now();
        }
        if i < total {
            in_flight.push_back(session.submit_next()?);
        }
        // Keep one frame rendering ahead of the one being converted and encoded.
        if in_flight.len() > 1 || i == total {
            let Some(frame) = in_flight.pop_front() else {
                break;
            };
            let n = frame.number();
            let (buffer, _) = session.read(frame, |f| enc.convert(f))?;
            enc.push(buffer?, interval * n as u32, false)?;
            enc.pull(Duration::from_secs(5))?.ok_or_else(|| {
                Error::Gstreamer(format!("{} gave no frame back within 5 s", encoder.element))
            })?;
        }
    }
    Ok(req.frames as f64 / started.elapsed().as_secs_f64())
}

fn side_by_side(
    host: &SessionHost,
    req: &BenchRequest,
) -> Result<(Vec<FrameTimings>, Vec<SessionResult>)> {
    let mode = req.settings.mode;
    let mut start_ms = Vec::new();
    let sessions = (0..req.sessions)
        .map(|i| {
            let config = SessionConfig {
                id: format!("bench-{i}"),
                game: req.game.clone(),
                encoder: req.settings,
            };
            let asked = Instant::now();
            let s = host.start_session(&config, |_| {})?;
            while s.stats().frames_rendered == 0 && asked.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(2));
            }
            start_ms.push(ms(asked.elapsed()));
            Ok(s)
        })
        .collect::<Result<Vec<_>>>()?;
    // Warm up, then measure over the requested number of frame intervals.
    std::thread::sleep(Duration::from_secs(1));
    let before: Vec<_> = sessions.iter().map(|s| s.stats()).collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_micros(mode.frame_interval_us() * req.frames));
    let elapsed = started.elapsed().as_secs_f64();
    let mut timings = Vec::new();
    let mut results = Vec::new();
    for (i, (s, b)) in sessions.iter().zip(&before).enumerate() {
        let a = s.stats();
        let encoded = a.frames_encoded - b.frames_encoded;
        let recent = s.counters().recent_timings();
        timings.extend(recent.iter().rev().take(encoded as usize).copied());
        results.push(SessionResult {
            session: i as u32,
            fps: encoded as f64 / elapsed,
            dropped_late: a.dropped_late - b.dropped_late,
            dropped_encoder_busy: a.dropped_encoder_busy - b.dropped_encoder_busy,
            start_ms: start_ms[i],
        });
    }
    for s in sessions {
        s.stop()?;
    }
    Ok((timings, results))
}

impl BenchReport {
    /// A table for people.
    pub fn table(&self) -> String {
        let mut s = format!(
            "device: {} ({})\nencoder: {}\nmode: {}x{}@{}  sessions: {}  frames measured: {}  cores: {}\n\n{:<10}{:>10}{:>10}{:>10}\n",
            self.device,
            if self.cpu_rendering {
                "CPU rendering"
            } else {
                "GPU"
            },
            self.encoder,
            self.width,
            self.height,
            self.fps,
            self.sessions,
            self.frames,
            self.cpu_cores,
            "stage",
            "p50 ms",
            "p99 ms",
            "mean ms"
        );
        for (name, st) in [
            ("render", self.render),
            ("readback", self.readback),
            ("convert", self.convert),
            ("encode", self.encode),
            ("total", self.total),
        ] {
            s += &format!(
                "{name:<10}{:>10.2}{:>10.2}{:>10.2}\n",
                st.p50_ms, st.p99_ms, st.mean_ms
            );
        }
        if let Some(fps) = self.single_session_max_fps {
            s += &format!("\none session back to back: {fps:.1} fps\n");
        }
        if let Some(fps) = self.single_session_pipelined_fps {
            s += &format!("one session, next frame rendered during encode: {fps:.1} fps\n");
        }
        if !self.per_session.is_empty() {
            s += "\nsession   fps   dropped(late)   dropped(encoder busy)   start ms\n";
            for r in &self.per_session {
                s += &format!(
                    "{:<8}{:>6.1}{:>16}{:>24}{:>11.0}\n",
                    r.session, r.fps, r.dropped_late, r.dropped_encoder_busy, r.start_ms
                );
            }
            if let Some(m) = self.min_session_fps {
                s += &format!("min_session_fps: {m:.1} (target {})\n", self.fps);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarise(&mut v);
        assert_eq!((s.p50_ms, s.p99_ms, s.mean_ms), (50.0, 99.0, 50.5));
        assert_eq!(summarise(&mut []).p99_ms, 0.0);
    }
}
