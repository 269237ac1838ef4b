//! `bench-webrtc`: what a player feels, measured end to end on this machine.
//!
//! - glass-to-glass latency (capture on the node → frame shown in headless Chromium) at the
//!   requested mode, p50/p99;
//! - time from the WHEP POST of the offer to the first decoded frame, over several launches;
//! - how many 720p30 streams one node holds at full frame rate (webrtc-rs viewers).
//!
//! Runs itself inside a network namespace with only `lo` (needs root), so no traffic leaves the
//! machine. Prints a table and one JSON line. Build with `--release` for figures worth quoting.

#![allow(clippy::print_stdout)] // a benchmark prints its figures

use clap::Parser;
use pixelgrid_tests::viewer;
use pixelgrid_tests::{TestNode, chromium_result, in_test_namespace, reexec_in_network_namespace};
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    about = "Glass-to-glass latency, time to first frame and streams per node, in Chromium and webrtc-rs"
)]
struct Args {
    /// Mode for the latency measurement, WIDTHxHEIGHT@FPS.
    #[arg(long, default_value = "1280x720@60")]
    mode: String,
    /// Seconds of latency samples.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Browser launches for time-to-first-frame.
    #[arg(long, default_value_t = 5)]
    launches: usize,
    /// Most 720p30 streams to try.
    #[arg(long, default_value_t = 16)]
    max_streams: usize,
}

fn pct(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1]
}

fn main() -> anyhow::Result<()> {
    if !in_test_namespace() {
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        std::process::exit(reexec_in_network_namespace(&args).code().unwrap_or(1));
    }
    pixelgrid_tests::bring_up_loopback();
    let args = Args::parse();
    let node = TestNode::start();

    // Glass-to-glass in Chromium.
    let url = format!(
        "http://{}/?autotest=bench&mode={}&seconds={}",
        node.addr, args.mode, args.seconds
    );
    let g2g = chromium_result(&url, Duration::from_secs(args.seconds + 40));

    // Time to first frame over several launches.
    let mut ttff = Vec::new();
    for _ in 0..args.launches {
        let url = format!("http://{}/?autotest=play&mode=1280x720@30", node.addr);
        let r = chromium_result(&url, Duration::from_secs(40));
        ttff.push(
            r["ttffMs"]
                .as_f64()
                .ok_or_else(|| anyhow::anyhow!("no first frame: {r}"))?,
        );
        let _ = pixelgrid_tests::eventually(Duration::from_secs(10), || node.live_sessions() == 0);
    }

    // Streams per node: add 720p30 sessions until one falls under 29 fps.
    let mut held = 0;
    let mut steps = Vec::new();
    let mut viewers = Vec::new();
    for k in 1..=args.max_streams {
        let dev = node.dev_session(1280, 720, 30);
        let v = node.runtime.block_on(viewer::connect(
            node.addr,
            &dev.whep_url,
            &dev.token,
            MIME_TYPE_H264,
        ))?;
        viewers.push(v);
        std::thread::sleep(Duration::from_secs(2));
        let before: Vec<_> = node
            .runtime
            .block_on(node.node.sessions())
            .into_iter()
            .map(|s| (s.session_id, s.stats.frames_encoded))
            .collect();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(4));
        let after = node.runtime.block_on(node.node.sessions());
        let secs = t0.elapsed().as_secs_f64();
        let min_fps = before
            .iter()
            .filter_map(|(id, b)| {
                after
                    .iter()
                    .find(|s| &s.session_id == id)
                    .map(|s| (s.stats.frames_encoded - b) as f64 / secs)
            })
            .fold(f64::INFINITY, f64::min);
        println!("{k:>3} streams: slowest session {min_fps:.1} fps");
        steps.push(json!({ "streams": k, "min_fps": min_fps }));
        if min_fps < 29.0 {
            break;
        }
        held = k;
    }
    for v in viewers {
        let _ = node.runtime.block_on(v.leave(node.addr));
    }

    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let ttff_p50 = pct(&mut ttff.clone(), 0.5);
    let ttff_p95 = pct(&mut ttff.clone(), 0.95);
    println!(
        "\nglass-to-glass at {} in Chromium ({} frames): p50 {:.1} ms, p99 {:.1} ms (to compositor: p50 {:.1}, p99 {:.1})",
        args.mode,
        g2g["g2g"]["n"],
        f(&g2g["g2g"]["p50"]),
        f(&g2g["g2g"]["p99"]),
        f(&g2g["g2p"]["p50"]),
        f(&g2g["g2p"]["p99"])
    );
    println!(
        "decoded {} frames at {} fps, {} lost, jitter buffer {:.1} ms",
        g2g["framesDecoded"],
        g2g["fps"],
        g2g["packetsLost"],
        f(&g2g["jitterBufferMs"])
    );
    println!(
        "offer POST → first decoded frame over {} launches: p50 {ttff_p50:.0} ms, p95 {ttff_p95:.0} ms",
        ttff.len()
    );
    println!("720p30 streams held at full frame rate: {held}");
    println!(
        "{}",
        json!({
            "mode": args.mode,
            "g2g_p50_ms": g2g["g2g"]["p50"], "g2g_p99_ms": g2g["g2g"]["p99"], "g2g_samples": g2g["g2g"]["n"],
            "to_compositor_p50_ms": g2g["g2p"]["p50"], "to_compositor_p99_ms": g2g["g2p"]["p99"],
            "fps": g2g["fps"], "frames_decoded": g2g["framesDecoded"], "packets_lost": g2g["packetsLost"],
            "ttff_ms": ttff, "ttff_p50_ms": ttff_p50, "ttff_p95_ms": ttff_p95,
            "streams_720p30_held": held, "stream_steps": steps,
            "cpu_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        })
    );
    Ok(())
}
