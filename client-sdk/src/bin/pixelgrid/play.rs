//! `pixelgrid play`: launch a session headless through the SDK, show live stats on one line,
//! optionally save frames as PNG, record the stream, send scripted input, and print a summary.

use pixelgrid_client::{Client, Codec, Event, InputEvent, LaunchOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What to play and for how long.
#[derive(clap::Args, Debug)]
pub struct PlayArgs {
    /// Game to launch.
    #[arg(default_value = "arena")]
    game: String,
    /// Video mode, WIDTHxHEIGHT@FPS.
    #[arg(long, default_value = "1280x720@60")]
    mode: String,
    /// Codec: h264 or vp8.
    #[arg(long, default_value = "h264")]
    codec: String,
    /// Player's region code ("" = any).
    #[arg(long, default_value = "")]
    region: String,
    /// The studio's id for this player (recorded in the studio's usage).
    #[arg(long, default_value = "cli-player")]
    player: String,
    /// Refuse nodes farther than this, ms (0 = the orchestrator's policy).
    #[arg(long, default_value_t = 0)]
    max_latency_ms: u32,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Stop after this many decoded frames (0 = no limit).
    #[arg(long, default_value_t = 0)]
    frames: u64,
    /// Save decoded frames as PNG into this directory.
    #[arg(long)]
    png_dir: Option<PathBuf>,
    /// With --png-dir: save every Nth frame.
    #[arg(long, default_value_t = 30)]
    png_every: u64,
    /// Write the encoded stream here (H.264 Annex B, or raw VP8 frames).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Scripted input: comma-separated `MS:key:CODE:down|up` (ms after the first frame),
    /// e.g. `500:key:ArrowRight:down,1200:key:ArrowRight:up`.
    #[arg(long, default_value = "")]
    input: String,
    /// Do not re-launch on another node when the node is lost.
    #[arg(long)]
    no_reconnect: bool,
}

/// The final summary (`--json`).
#[derive(Debug, serde::Serialize)]
struct Summary {
    game: String,
    node: String,
    session: String,
    frames: u64,
    fps: f64,
    ttff_ms: f64,
    glass_to_glass_p50_ms: Option<f64>,
    glass_to_glass_p99_ms: Option<f64>,
    rtt_ms: Option<f64>,
    packets_lost: u64,
    reconnects: u32,
    reconnect_ms: Vec<u64>,
    pngs: u64,
    recorded_bytes: u64,
}

pub fn parse_mode(mode: &str) -> anyhow::Result<(u32, u32, u32)> {
    let bad = || anyhow::anyhow!("invalid --mode {mode:?}; use WIDTHxHEIGHT@FPS, e.g. 1280x720@60");
    let (size, fps) = mode.split_once('@').ok_or_else(bad)?;
    let (w, h) = size.split_once('x').ok_or_else(bad)?;
    Ok((
        w.parse().map_err(|_| bad())?,
        h.parse().map_err(|_| bad())?,
        fps.parse().map_err(|_| bad())?,
    ))
}

/// Parses `--input`: `(ms, event)` in time order.
fn parse_script(script: &str) -> anyhow::Result<Vec<(u64, InputEvent)>> {
    let mut out = Vec::new();
    for step in script.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let parts: Vec<&str> = step.split(':').collect();
        let bad = || {
            anyhow::anyhow!(
                "invalid --input step {step:?}; use MS:key:CODE:down|up, e.g. 500:key:ArrowRight:down"
            )
        };
        let [ms, "key", code, dir] = parts.as_slice() else {
            return Err(bad());
        };
        let down = match *dir {
            "down" => true,
            "up" => false,
            _ => return Err(bad()),
        };
        let event = InputEvent::Key {
            code: (*code).to_owned(),
            down,
        };
        event
            .validate()
            .map_err(|e| anyhow::anyhow!("--input step {step:?}: {e}"))?;
        out.push((ms.parse().map_err(|_| bad())?, event));
    }
    out.sort_by_key(|(ms, _)| *ms);
    Ok(out)
}

fn save_png(path: &std::path::Path, width: u32, height: u32, rgba: &[u8]) -> anyhow::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, width, height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(rgba)?;
    Ok(())
}

/// Plays; prints the summary; returns an error (non-zero exit) naming why it failed.
#[allow(clippy::print_stdout)]
pub async fn play(
    orchestrator: &str,
    api_key: Option<&str>,
    json: bool,
    args: PlayArgs,
) -> anyhow::Result<()> {
    let api_key = api_key.ok_or_else(|| {
        anyhow::anyhow!(
            "play needs a studio's --api-key (or PIXELGRID_API_KEY); `pixelgrid studios create` prints one"
        )
    })?;
    let (width, height, fps) = parse_mode(&args.mode)?;
    let codec = match args.codec.as_str() {
        "h264" => Codec::H264,
        "vp8" => Codec::Vp8,
        other => anyhow::bail!("invalid --codec {other:?}; use h264 or vp8"),
    };
    let mut script = parse_script(&args.input)?.into_iter().peekable();
    if let Some(dir) = &args.png_dir {
        std::fs::create_dir_all(dir)?;
    }
    let mut record = match &args.record {
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p)?)),
        None => None,
    };
    let started = Instant::now();
    let client = Client::connect(orchestrator)
        .await?
        .with_api_key(api_key, &args.player);
    let mut session = client
        .launch(
            &args.game,
            LaunchOptions {
                width,
                height,
                fps,
                codecs: vec![codec],
                region: args.region.clone(),
                max_latency_ms: args.max_latency_ms,
                access_units: record.is_some(),
                reconnect: !args.no_reconnect,
                ..LaunchOptions::default()
            },
        )
        .await?;
    let input = session.input();
    let deadline = started + Duration::from_secs_f64(args.duration_s);
    let mut first_frame: Option<Instant> = None;
    let (mut frames, mut pngs, mut recorded) = (0u64, 0u64, 0u64);
    let mut reconnect_ms = Vec::new();
    let mut last_line = Instant::now();
    let outcome: anyhow::Result<()> = loop {
        if Instant::now() >= deadline || (args.frames > 0 && frames >= args.frames) {
            break Ok(());
        }
        while let Some(e) = session.try_event() {
            match e {
                Event::Reconnected { after_ms, .. } => reconnect_ms.push(after_ms),
                Event::Ended { reason } => return Err(anyhow::anyhow!("session ended: {reason}")),
                _ => {}
            }
        }
        if let Some(start) = first_frame {
            while script
                .peek()
                .is_some_and(|(ms, _)| start.elapsed() >= Duration::from_millis(*ms))
            {
                let (_, event) = script.next().expect("peeked");
                input.send(&[event]).await?;
            }
        }
        if let Some(file) = record.as_mut() {
            while let Ok(Some(unit)) =
                tokio::time::timeout(Duration::ZERO, session.next_access_unit()).await
            {
                file.write_all(&unit.data)?;
                recorded += unit.data.len() as u64;
            }
        }
        let frame =
            match tokio::time::timeout(Duration::from_millis(100), session.next_frame()).await {
                Ok(Some(f)) => f,
                Ok(None) => break Err(anyhow::anyhow!("the session ended")),
                Err(_) => {
                    if first_frame.is_none() && started.elapsed() > Duration::from_secs(10) {
                        break Err(anyhow::anyhow!("no frame within 10 s of launching"));
                    }
                    continue;
                }
            };
        first_frame.get_or_insert_with(Instant::now);
        frames += 1;
        if let Some(dir) = &args.png_dir
            && frames % args.png_every.max(1) == 1
        {
            save_png(
                &dir.join(format!("frame-{frames:06}.png")),
                frame.width,
                frame.height,
                &frame.data,
            )?;
            pngs += 1;
        }
        if !json && last_line.elapsed() >= Duration::from_millis(500) {
            last_line = Instant::now();
            let s = session.stats();
            let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            eprint!(
                "\r{frames} frames  {:.1} fps  {:.0} kbit/s  rtt {} ms  jitter {:.1} ms  lost {}  g2g p50 {} / p99 {} ms  node {}   ",
                s.fps,
                s.bitrate_kbps,
                ms(s.rtt_ms),
                s.jitter_ms,
                s.packets_lost,
                ms(s.glass_to_glass_p50_ms),
                ms(s.glass_to_glass_p99_ms),
                &session.node_id()[..8.min(session.node_id().len())],
            );
        }
    };
    if !json {
        eprintln!();
    }
    if let Some(mut file) = record {
        file.flush()?;
    }
    let stats = session.stats();
    let summary = Summary {
        game: args.game.clone(),
        node: session.node_id(),
        session: session.session_id(),
        frames,
        fps: first_frame.map_or(0.0, |f| frames as f64 / f.elapsed().as_secs_f64().max(1e-3)),
        ttff_ms: first_frame.map_or(-1.0, |f| (f - started).as_secs_f64() * 1000.0),
        glass_to_glass_p50_ms: stats.glass_to_glass_p50_ms,
        glass_to_glass_p99_ms: stats.glass_to_glass_p99_ms,
        rtt_ms: stats.rtt_ms,
        packets_lost: stats.packets_lost,
        reconnects: reconnect_ms.len() as u32,
        reconnect_ms,
        pngs,
        recorded_bytes: recorded,
    };
    session.end().await;
    outcome?;
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "{} frames from node {} ({:.1} fps), first frame after {:.0} ms, glass-to-glass p50 {:?} / p99 {:?} ms, {} reconnects",
            summary.frames,
            summary.node,
            summary.fps,
            summary.ttff_ms,
            summary.glass_to_glass_p50_ms,
            summary.glass_to_glass_p99_ms,
            summary.reconnects
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_and_modes_parse_and_bad_ones_say_how_to_write_them() {
        let s = parse_script("1200:key:ArrowRight:up, 500:key:ArrowRight:down").unwrap();
        assert_eq!(s[0].0, 500);
        assert_eq!(s[1].0, 1200);
        assert!(
            parse_script("500:key:ArrowRight:sideways")
                .unwrap_err()
                .to_string()
                .contains("MS:key:CODE:down|up")
        );
        assert!(parse_script("5:key:Bad Code!:down").is_err());
        assert_eq!(parse_mode("640x360@30").unwrap(), (640, 360, 30));
        assert!(
            parse_mode("640x360")
                .unwrap_err()
                .to_string()
                .contains("WIDTHxHEIGHT@FPS")
        );
    }
}
