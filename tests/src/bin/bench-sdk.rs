//! `bench-sdk`: what a player of the Rust SDK feels, on a local grid (orchestrator on the embedded
//! store, two edge nodes, loopback):
//! - time to first frame: the `launch` call → first decoded frame, over N launches;
//! - glass-to-glass at 1280x720@60: capture on the node → decoded by the SDK;
//! - reconnect: the serving node is killed → first frame decoded from the other node.
//!
//! `cargo run --release -p pixelgrid-tests --bin bench-sdk`

#![allow(clippy::print_stdout)]

use clap::Parser;
use orchestrator::store::EmbeddedStore;
use pixelgrid_client::{Client, LaunchOptions};
use pixelgrid_tests::TestGrid;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// Launches timed for time to first frame.
    #[arg(long, default_value_t = 20)]
    launches: usize,
    /// Seconds of 1280x720@60 play for glass-to-glass.
    #[arg(long, default_value_t = 10)]
    play_s: u64,
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let args = Args::parse();
    let mut grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 2, 4);
    let url = format!("http://{}", grid.orchestrator);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(Client::connect(&url)).unwrap();
    let hd = LaunchOptions {
        width: 1280,
        height: 720,
        fps: 60,
        ..LaunchOptions::default()
    };

    let mut ttff = Vec::new();
    for _ in 0..args.launches {
        rt.block_on(async {
            let started = Instant::now();
            let mut s = client.launch("arena", hd.clone()).await.unwrap();
            s.next_frame().await.unwrap();
            ttff.push(started.elapsed().as_secs_f64() * 1000.0);
            s.end().await;
        });
    }

    let (g2g_p50, g2g_p99, fps, node) = rt.block_on(async {
        let mut s = client.launch("arena", hd.clone()).await.unwrap();
        let end = Instant::now() + Duration::from_secs(args.play_s);
        let mut g2g = Vec::new();
        let mut frames = 0u64;
        let started = Instant::now();
        while Instant::now() < end {
            let f = s.next_frame().await.unwrap();
            frames += 1;
            if let Some(c) = f.capture_unix_ms {
                g2g.push(f.decoded_unix_ms - c);
            }
        }
        let fps = frames as f64 / started.elapsed().as_secs_f64();
        let node = s.node_id();
        // Left playing for the reconnect measurement.
        let p50 = quantile(&mut g2g, 0.5);
        let p99 = quantile(&mut g2g, 0.99);
        (p50, p99, fps, (node, s))
    });
    let (serving, mut s) = node;
    let killed = Instant::now();
    grid.kill_node(&serving);
    let reconnect_ms = rt.block_on(async {
        loop {
            s.next_frame().await.unwrap();
            if s.node_id() != serving {
                break killed.elapsed().as_secs_f64() * 1000.0;
            }
        }
    });
    rt.block_on(s.end());

    let ttff_p50 = quantile(&mut ttff, 0.5);
    let ttff_p95 = quantile(&mut ttff, 0.95);
    println!("| figure | measured | goal |");
    println!("| --- | --- | --- |");
    println!(
        "| launch → first decoded frame, {} launches at 1280x720@60 | p50 {ttff_p50:.0} ms, p95 {ttff_p95:.0} ms | p95 ≤ 800 ms |",
        ttff.len()
    );
    println!(
        "| glass-to-glass at 1280x720@60, capture → decoded by the Rust SDK ({fps:.1} fps) | p50 {g2g_p50:.1} ms, p99 {g2g_p99:.1} ms | p50 ≤ 12 ms |"
    );
    println!(
        "| serving node killed → first frame from the other node | {reconnect_ms:.0} ms | ≤ 5000 ms |"
    );
    println!(
        "{}",
        serde_json::json!({
            "launches": ttff.len(), "ttff_p50_ms": ttff_p50, "ttff_p95_ms": ttff_p95,
            "g2g_p50_ms": g2g_p50, "g2g_p99_ms": g2g_p99, "fps": fps,
            "reconnect_ms": reconnect_ms,
        })
    );
}
