//! `bench-soak`: a grid kept busy for a while, watched for anything that grows. An orchestrator
//! on a real etcd (compacting itself as the deploy files set it up), an indexer and two edge
//! nodes, in this process; players launch through the Rust SDK, play a few seconds and leave,
//! `--players` at a time, for `--minutes`. Every minute it records the process's memory, open
//! files and threads, etcd's database size and keys, and the launches' time to first frame. Once
//! warm (after the first `--warm-minutes`), the run fails when memory, files, threads, the
//! database or the keys keep rising: the last third's mean more than `--tolerance` above the
//! first warm third's.
//!
//! `cargo run --release -p pixelgrid-tests --bin bench-soak -- --minutes 20`

#![allow(clippy::print_stdout)]

use clap::Parser;
use orchestrator::store::{EtcdStore, LocalEtcd, Store};
use pixelgrid_client::LaunchOptions;
use pixelgrid_tests::TestGrid;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// Length of the run, minutes.
    #[arg(long, default_value_t = 20)]
    minutes: u64,
    /// Minutes left out of the trend (caches, pools and etcd filling up).
    #[arg(long, default_value_t = 2)]
    warm_minutes: u64,
    /// Players at once (two nodes of four slots hold eight).
    #[arg(long, default_value_t = 4)]
    players: usize,
    /// Seconds each player plays.
    #[arg(long, default_value_t = 5)]
    play_s: u64,
    /// How far the last third's mean may sit above the first warm third's, as a fraction.
    #[arg(long, default_value_t = 0.15)]
    tolerance: f64,
}

/// One minute's readings.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Sample {
    minute: u64,
    rss_mib: f64,
    fds: usize,
    threads: usize,
    etcd_db_mib: f64,
    etcd_keys: usize,
    launches: usize,
    failures: usize,
    first_frame_p50_ms: f64,
    first_frame_p95_ms: f64,
}

/// One reading of a sample, as a number.
type Reading = fn(&Sample) -> f64;

/// A field of `/proc/self/status` in kB.
fn status_kb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map_or(0, Iterator::count)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// The mean of `f` over `samples`.
fn mean(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    samples.iter().map(f).sum::<f64>() / samples.len().max(1) as f64
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.minutes >= args.warm_minutes + 3,
        "--minutes must leave at least three warm minutes after --warm-minutes"
    );
    let etcd = LocalEtcd::start_with(
        1,
        &[
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "1m",
        ],
    )?;
    let store_rt = tokio::runtime::Runtime::new()?;
    let store = Arc::new(store_rt.block_on(EtcdStore::connect(&etcd.endpoints))?);
    // Ended sessions readable for a minute and usage kept two (an hour and 35 days by default),
    // so their records come and go within the run.
    let mut grid = TestGrid::start_configured(Arc::clone(&store) as Arc<dyn Store>, 0, 4, |g| {
        g.with_config(|c| {
            c.session_retention = Duration::from_secs(60);
            c.usage_retention = Duration::from_secs(120);
        })
    });
    let _indexer = grid.start_indexer(indexer::tally::TallyConfig {
        epoch_ms: 60_000,
        slot_ms: 5_000,
        ..Default::default()
    });
    grid.add_node(1, 4);
    grid.add_node(2, 4);

    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<std::sync::Mutex<(Vec<f64>, usize)>> = Arc::default();
    let started = Instant::now();
    let mut samples = Vec::new();
    grid.runtime.block_on(async {
        let mut players = Vec::new();
        for p in 0..args.players {
            let (client, stop, results) = (
                grid.player().await,
                Arc::clone(&stop),
                Arc::clone(&results),
            );
            let play = Duration::from_secs(args.play_s);
            players.push(tokio::spawn(async move {
                // Staggered, so players do not arrive in step.
                tokio::time::sleep(Duration::from_millis(700 * p as u64)).await;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let launched = client
                        .launch(
                            "arena",
                            LaunchOptions {
                                width: 320,
                                height: 240,
                                fps: 30,
                                reconnect: false,
                                ..LaunchOptions::default()
                            },
                        )
                        .await;
                    let Ok(mut session) = launched else {
                        results.lock().unwrap().1 += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    };
                    match tokio::time::timeout(Duration::from_secs(10), session.next_frame()).await
                    {
                        Ok(Some(_)) => {
                            let ms = t.elapsed().as_secs_f64() * 1e3;
                            results.lock().unwrap().0.push(ms);
                        }
                        _ => results.lock().unwrap().1 += 1,
                    }
                    let until = Instant::now() + play;
                    while Instant::now() < until {
                        let _ = tokio::time::timeout(Duration::from_secs(1), session.next_frame())
                            .await;
                    }
                    session.end().await;
                }
            }));
        }
        println!(
            "| minute | RSS MiB | open files | threads | etcd db MiB | etcd keys | launches | failed | first frame p50 / p95 ms |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for minute in 1..=args.minutes {
            let due = started + Duration::from_secs(60 * minute);
            tokio::time::sleep_until(due.into()).await;
            let (mut times, failures) = std::mem::take(&mut *results.lock().unwrap());
            let (db, _) = store.db_size().await.unwrap_or((0, 0));
            let keys = store
                .range(orchestrator::slots::ROOT)
                .await
                .map_or(0, |k| k.len());
            let s = Sample {
                minute,
                rss_mib: status_kb("VmRSS:") / 1024.0,
                fds: count_dir("/proc/self/fd"),
                threads: count_dir("/proc/self/task"),
                etcd_db_mib: db as f64 / 1048576.0,
                etcd_keys: keys,
                launches: times.len(),
                failures,
                first_frame_p50_ms: pct(&mut times, 0.5),
                first_frame_p95_ms: pct(&mut times, 0.95),
            };
            println!(
                "| {} | {:.1} | {} | {} | {:.2} | {} | {} | {} | {:.0} / {:.0} |",
                s.minute,
                s.rss_mib,
                s.fds,
                s.threads,
                s.etcd_db_mib,
                s.etcd_keys,
                s.launches,
                s.failures,
                s.first_frame_p50_ms,
                s.first_frame_p95_ms
            );
            samples.push(s);
        }
        stop.store(true, Ordering::Relaxed);
        for p in players {
            let _ = p.await;
        }
    });
    let warm: Vec<Sample> = samples
        .iter()
        .filter(|s| s.minute > args.warm_minutes)
        .cloned()
        .collect();
    let third = (warm.len() / 3).max(1);
    let (first, last) = (&warm[..third], &warm[warm.len() - third..]);
    let mut rising = Vec::new();
    let checks: [(&str, Reading); 6] = [
        ("memory", |s| s.rss_mib),
        ("open files", |s| s.fds as f64),
        ("threads", |s| s.threads as f64),
        ("etcd database", |s| s.etcd_db_mib),
        ("etcd keys", |s| s.etcd_keys as f64),
        ("time to first frame p95", |s| s.first_frame_p95_ms),
    ];
    for (name, f) in checks {
        let (a, b) = (mean(first, f), mean(last, f));
        let verdict = if b > a * (1.0 + args.tolerance) + 1.0 {
            rising.push(name);
            "RISING"
        } else {
            "flat"
        };
        println!("{name}: {a:.1} → {b:.1} ({verdict})");
    }
    let launches: usize = samples.iter().map(|s| s.launches).sum();
    let failures: usize = samples.iter().map(|s| s.failures).sum();
    println!(
        "{}",
        serde_json::json!({ "minutes": args.minutes, "launches": launches, "failures": failures, "rising": rising, "samples": samples })
    );
    drop(grid);
    drop(etcd);
    anyhow::ensure!(
        rising.is_empty(),
        "still rising once warm: {}",
        rising.join(", ")
    );
    anyhow::ensure!(
        failures * 100 <= launches.max(1),
        "{failures} of {launches} launches failed"
    );
    Ok(())
}
