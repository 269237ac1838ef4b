//! `bench-network`: the stream on impaired links, congestion control on and off side by side.
//!
//! Each row is a fresh session of `arena` (1280x720@60 by default) played by the Rust SDK as a
//! player restricted to TURN relays: its media crosses a real coturn placed behind the
//! user-space impairment relay (`pixelgrid_tests::impair`), whose downlink the scenario shapes.
//! - cap: the link drops to `--cap-kbps` after a few seconds at full rate: time until the node's
//!   send rate is under the cap, glass-to-glass p95 from then on, frames decoded of those sent;
//!   then the cap is lifted: time until the encoder is back to 90 % of its full bitrate;
//! - 2 % random loss, and bursty (Gilbert–Elliott) loss of the same mean: frames decoded of
//!   those sent, freezes over 200 ms per minute, glass-to-glass p95;
//! - 50 ms more one-way delay: how much glass-to-glass rises over the same link without it;
//! - the relay path beside the direct one: launch → first frame, glass-to-glass p50.
//!
//! `cargo run --release -p pixelgrid-tests --bin bench-network`

#![allow(clippy::print_stdout)]

use clap::Parser;
use orchestrator::store::EmbeddedStore;
use pixelgrid_client::{LaunchOptions, Session};
use pixelgrid_tests::TestGrid;
use pixelgrid_tests::impair::{Direction, LinkConfig, Loss, UdpRelay};
use pixelgrid_tests::turn::Coturn;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// Width of the mode played.
    #[arg(long, default_value_t = 1280)]
    width: u32,
    /// Height of the mode played.
    #[arg(long, default_value_t = 720)]
    height: u32,
    /// Frame rate of the mode played.
    #[arg(long, default_value_t = 60)]
    fps: u32,
    /// The capped link's rate, kbit/s.
    #[arg(long, default_value_t = 2500)]
    cap_kbps: u64,
    /// Seconds each impaired phase lasts.
    #[arg(long, default_value_t = 15)]
    phase_s: u64,
    /// Launches timed on each path (relay, direct).
    #[arg(long, default_value_t = 8)]
    launches: usize,
    /// Only the launch paths (relay, direct), not the impaired links.
    #[arg(long)]
    paths_only: bool,
    /// Only the cap scenario with congestion control, printing its trace second by second.
    #[arg(long)]
    trace_cap: bool,
}

/// A grid whose single node runs congestion control or not, reached through coturn behind an
/// impairment relay.
struct Rig {
    grid: TestGrid,
    relay: Arc<UdpRelay>,
    _coturn: Coturn,
}

fn rig(rt: &tokio::runtime::Runtime, congestion_control: bool) -> Rig {
    let coturn = Coturn::start();
    let relay = Arc::new(
        rt.block_on(UdpRelay::start(
            coturn.addr,
            LinkConfig::default(),
            LinkConfig::default(),
            1,
        ))
        .expect("a relay"),
    );
    let turn = coturn.turn_config(relay.addr);
    let mut grid =
        TestGrid::start_configured(Arc::new(EmbeddedStore::new()), 0, 2, |g| g.with_turn(turn));
    grid.congestion_control = congestion_control;
    grid.add_node(5, 2);
    Rig {
        grid,
        relay,
        _coturn: coturn,
    }
}

/// What one session showed: decoded frames (seconds since start, glass-to-glass ms) and, every
/// 100 ms, (seconds, bytes the node had sent into the link, the encoder's target kbit/s).
#[derive(Default)]
struct Trace {
    frames: Vec<(f64, f64)>,
    samples: Vec<(f64, u64, Option<u64>)>,
}

impl Trace {
    fn frames_between(&self, from: f64, to: f64) -> Vec<f64> {
        self.frames
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, g)| *g)
            .collect()
    }

    /// The sender's rate over `[from, from + window)`, bit/s.
    fn send_rate(&self, from: f64, window: f64) -> Option<f64> {
        let at = |t: f64| self.samples.iter().find(|(s, _, _)| *s >= t);
        let (a, b) = (at(from)?, at(from + window)?);
        Some((b.1 - a.1) as f64 * 8.0 / (b.0 - a.0).max(1e-3))
    }

    /// Gaps over 200 ms between decoded frames in `[from, to)`.
    fn freezes(&self, from: f64, to: f64) -> usize {
        let t: Vec<f64> = self
            .frames
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(t, _)| *t)
            .collect();
        t.windows(2).filter(|w| w[1] - w[0] > 0.2).count()
    }
}

fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    Some(v[((v.len() as f64 * q) as usize).min(v.len() - 1)])
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.abs() < 10.0 => format!("{v:.1} ms"),
        Some(v) => format!("{v:.0} ms"),
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or("never".into(), |v| format!("{v:.1} s"))
}

/// Plays `s` until `until` seconds after `start`, recording into `trace`.
async fn record(s: &mut Session, relay: &UdpRelay, start: Instant, until: f64, trace: &mut Trace) {
    let mut next_sample = 0.0;
    loop {
        let now = start.elapsed().as_secs_f64();
        if now >= until {
            return;
        }
        if now >= next_sample {
            let (down, _) = relay.stats();
            trace
                .samples
                .push((now, down.offered_bytes, s.stats().target_kbps));
            next_sample = now + 0.1;
        }
        if let Ok(Some(f)) = tokio::time::timeout(Duration::from_millis(20), s.next_frame()).await
            && let Some(capture) = f.capture_unix_ms
        {
            let t = start.elapsed().as_secs_f64();
            trace.frames.push((t, f.decoded_unix_ms - capture));
        }
    }
}

/// Frames the node has encoded for its (only) session so far.
async fn node_frames(rig: &Rig) -> u64 {
    rig.grid.nodes[0]
        .1
        .sessions()
        .await
        .first()
        .map_or(0, |s| s.stats.frames_encoded)
}

fn options(a: &Args, relay_only: bool) -> LaunchOptions {
    LaunchOptions {
        width: a.width,
        height: a.height,
        fps: a.fps,
        relay_only,
        audio: false,
        reconnect: false,
        node_lost_after: Duration::from_secs(10),
        ..LaunchOptions::default()
    }
}

async fn launch(rig: &Rig, a: &Args) -> Session {
    rig.grid
        .player()
        .await
        .launch("arena", options(a, true))
        .await
        .expect("a relay-only launch")
}

/// The cap scenario's figures.
struct CapRow {
    under_cap_s: Option<f64>,
    g2g_p95: Option<f64>,
    decoded_share: f64,
    back_to_90_s: Option<f64>,
}

async fn cap_scenario(rig: &Rig, a: &Args, full_kbps: u64) -> CapRow {
    let mut s = launch(rig, a).await;
    let start = Instant::now();
    let mut trace = Trace::default();
    let warm = 4.0;
    record(&mut s, &rig.relay, start, warm, &mut trace).await;
    let cap_bps = a.cap_kbps * 1000;
    rig.relay
        .set(Direction::Down, LinkConfig::default().capped(cap_bps));
    let sent_before = node_frames(rig).await;
    let lift = warm + a.phase_s as f64;
    record(&mut s, &rig.relay, start, lift, &mut trace).await;
    let sent = node_frames(rig).await - sent_before;
    rig.relay.set(Direction::Down, LinkConfig::default());
    record(
        &mut s,
        &rig.relay,
        start,
        lift + a.phase_s as f64 + 5.0,
        &mut trace,
    )
    .await;
    s.end().await;

    if a.trace_cap {
        println!("| s | send kbit/s | target kbit/s | frames | g2g p50 ms |");
        let mut t = 0.0;
        while t + 0.5 < lift + 5.0 {
            let frames = trace.frames_between(t, t + 0.5);
            let target = trace
                .samples
                .iter()
                .find(|(s, _, _)| *s >= t)
                .and_then(|(_, _, k)| *k);
            println!(
                "| {t:.1} | {:.0} | {target:?} | {} | {} |",
                trace.send_rate(t, 0.5).unwrap_or(0.0) / 1e3,
                frames.len(),
                ms(quantile(&frames, 0.5))
            );
            t += 0.5;
        }
        let (down, _) = rig.relay.stats();
        println!("relay downlink: {down:?}");
    }
    // The first half-second window after the cap whose send rate is under it.
    let mut under = None;
    let mut t = warm;
    while t + 0.5 < lift {
        if trace.send_rate(t, 0.5).is_some_and(|r| r < cap_bps as f64) {
            under = Some(t + 0.5 - warm);
            break;
        }
        t += 0.1;
    }
    let settled = warm + under.unwrap_or(2.0);
    let g2g = trace.frames_between(settled, lift);
    let decoded = trace.frames_between(warm, lift).len() as f64;
    let back = trace
        .samples
        .iter()
        .find(|(t, _, k)| *t >= lift && k.is_some_and(|k| k * 10 >= full_kbps * 9))
        .map(|(t, _, _)| t - lift);
    CapRow {
        under_cap_s: under,
        g2g_p95: quantile(&g2g, 0.95),
        decoded_share: decoded / (sent.max(1) as f64),
        back_to_90_s: back,
    }
}

/// The loss and delay scenarios' figures.
struct ImpairedRow {
    decoded_share: f64,
    freezes_per_min: f64,
    g2g_p50: Option<f64>,
    g2g_p95: Option<f64>,
}

async fn impaired_scenario(rig: &Rig, a: &Args, link: LinkConfig) -> ImpairedRow {
    let mut s = launch(rig, a).await;
    let start = Instant::now();
    let mut trace = Trace::default();
    let warm = 3.0;
    record(&mut s, &rig.relay, start, warm, &mut trace).await;
    rig.relay.set(Direction::Down, link);
    let sent_before = node_frames(rig).await;
    let end = warm + a.phase_s as f64;
    record(&mut s, &rig.relay, start, end, &mut trace).await;
    let sent = node_frames(rig).await - sent_before;
    rig.relay.set(Direction::Down, LinkConfig::default());
    s.end().await;
    let g2g = trace.frames_between(warm, end);
    ImpairedRow {
        decoded_share: g2g.len() as f64 / sent.max(1) as f64,
        freezes_per_min: trace.freezes(warm, end) as f64 * 60.0 / a.phase_s as f64,
        g2g_p50: quantile(&g2g, 0.5),
        g2g_p95: quantile(&g2g, 0.95),
    }
}

/// One path's launches: launch → first frame (p50, p95), glass-to-glass p50 of 5 s of play,
/// and the median of each phase of the launch (grant, CreateSession, probes, ChooseNode, offer,
/// WHEP answer, answer → first frame), ms.
struct PathRow {
    first_p50: Option<f64>,
    first_p95: Option<f64>,
    g2g_p50: Option<f64>,
    phases: [Option<f64>; 7],
}

async fn path_scenario(rig: &Rig, a: &Args, relay_only: bool) -> PathRow {
    let client = rig.grid.player().await;
    let mut firsts = Vec::new();
    let mut g2g = Vec::new();
    let mut phases: [Vec<f64>; 7] = Default::default();
    for i in 0..a.launches {
        let t = Instant::now();
        let mut s = client
            .launch("arena", options(a, relay_only))
            .await
            .expect("a launch");
        let launched = t.elapsed().as_secs_f64() * 1e3;
        if s.next_frame().await.is_some() {
            let first = t.elapsed().as_secs_f64() * 1e3;
            firsts.push(first);
            let l = s.launch_timings();
            for (k, v) in [
                l.grant_ms,
                l.create_session_ms,
                l.probes_ms,
                l.choose_node_ms,
                l.offer_ms,
                l.answer_ms,
                first - launched,
            ]
            .into_iter()
            .enumerate()
            {
                phases[k].push(v);
            }
        }
        if i == 0 {
            let start = Instant::now();
            let mut trace = Trace::default();
            record(&mut s, &rig.relay, start, 5.0, &mut trace).await;
            g2g = trace.frames_between(1.0, 5.0);
        }
        s.end().await;
    }
    PathRow {
        first_p50: quantile(&firsts, 0.5),
        first_p95: quantile(&firsts, 0.95),
        g2g_p50: quantile(&g2g, 0.5),
        phases: phases.map(|p| quantile(&p, 0.5)),
    }
}

fn main() {
    let a = Args::parse();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mode = edge_node::video::VideoMode::new(a.width, a.height, a.fps).expect("a valid mode");
    let full_kbps = u64::from(
        edge_node::encode::EncoderSettings::for_mode(mode, edge_node::video::Codec::H264)
            .bitrate_kbps,
    );
    println!(
        "bench-network: arena {}x{}@{} (full bitrate {full_kbps} kbit/s), relay-only through coturn behind the impairment relay, {} s phases\n",
        a.width, a.height, a.fps, a.phase_s
    );
    let share = |v: f64| format!("{:.1} %", v * 100.0);
    if a.trace_cap {
        let r = rig(&rt, true);
        rt.block_on(cap_scenario(&r, &a, full_kbps));
        return;
    }
    if !a.paths_only {
        impaired_links(&rt, &a, full_kbps, share);
    }
    paths(&rt, &a);
}

fn impaired_links(
    rt: &tokio::runtime::Runtime,
    a: &Args,
    full_kbps: u64,
    share: impl Fn(f64) -> String,
) {
    let random = LinkConfig {
        loss: Loss::Random(0.02),
        ..LinkConfig::default()
    };
    let bursty = LinkConfig {
        loss: Loss::bursty(0.02, 4.0),
        ..LinkConfig::default()
    };
    let delayed = LinkConfig {
        delay: Duration::from_millis(50),
        ..LinkConfig::default()
    };
    println!("| scenario | figure | congestion control on | off |");
    println!("|---|---|---|---|");
    let table = |scenario: &str, figure: &str, on: String, off: String| {
        println!("| {scenario} | {figure} | {on} | {off} |");
    };
    let mut results = Vec::new();
    for cc in [true, false] {
        let r = rig(rt, cc);
        let cap = rt.block_on(cap_scenario(&r, a, full_kbps));
        let base = rt.block_on(impaired_scenario(&r, a, LinkConfig::default()));
        let random = rt.block_on(impaired_scenario(&r, a, random));
        let bursty = rt.block_on(impaired_scenario(&r, a, bursty));
        let delayed = rt.block_on(impaired_scenario(&r, a, delayed));
        results.push((cap, base, random, bursty, delayed));
    }
    let (on, off) = (&results[0], &results[1]);
    let cap_label = format!("cap {} kbit/s", a.cap_kbps);
    table(
        &cap_label,
        "send rate under the cap after",
        secs(on.0.under_cap_s),
        secs(off.0.under_cap_s),
    );
    table(
        &cap_label,
        "glass-to-glass p95 once under",
        ms(on.0.g2g_p95),
        ms(off.0.g2g_p95),
    );
    table(
        &cap_label,
        "frames decoded of those sent",
        share(on.0.decoded_share),
        share(off.0.decoded_share),
    );
    table(
        "cap lifted",
        "encoder back to 90 % after",
        secs(on.0.back_to_90_s),
        "n/a (fixed)".into(),
    );
    for (label, on, off) in [
        ("2 % random loss", &on.2, &off.2),
        ("2 % bursty loss (bursts of 4)", &on.3, &off.3),
    ] {
        table(
            label,
            "frames decoded of those sent",
            share(on.decoded_share),
            share(off.decoded_share),
        );
        table(
            label,
            "freezes > 200 ms per minute",
            format!("{:.1}", on.freezes_per_min),
            format!("{:.1}", off.freezes_per_min),
        );
        table(label, "glass-to-glass p95", ms(on.g2g_p95), ms(off.g2g_p95));
    }
    let rise = |d: &ImpairedRow, b: &ImpairedRow| ms(d.g2g_p50.zip(b.g2g_p50).map(|(d, b)| d - b));
    table(
        "+50 ms one-way delay",
        "glass-to-glass p50 rise",
        rise(&on.4, &on.1),
        rise(&off.4, &off.1),
    );
    table(
        "clean link",
        "glass-to-glass p50 / p95",
        format!("{} / {}", ms(on.1.g2g_p50), ms(on.1.g2g_p95)),
        format!("{} / {}", ms(off.1.g2g_p50), ms(off.1.g2g_p95)),
    );
}

fn paths(rt: &tokio::runtime::Runtime, a: &Args) {
    let r = rig(rt, true);
    let relayed = rt.block_on(path_scenario(&r, a, true));
    let direct = rt.block_on(path_scenario(&r, a, false));
    println!("\n| path | launch → first frame p50 | p95 | glass-to-glass p50 |");
    println!("|---|---|---|---|");
    for (label, row) in [("relay-only via coturn", &relayed), ("direct", &direct)] {
        println!(
            "| {label} | {} | {} | {} |",
            ms(row.first_p50),
            ms(row.first_p95),
            ms(row.g2g_p50)
        );
    }
    println!("\nWhere a launch's time goes (medians):\n");
    println!(
        "| path | grant | CreateSession | probes | ChooseNode | offer (ICE gathering) | WHEP answer (node starts the session) | answer → first frame |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (label, row) in [("relay-only via coturn", &relayed), ("direct", &direct)] {
        let cells: Vec<String> = row.phases.iter().map(|p| ms(*p)).collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
}
