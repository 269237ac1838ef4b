//! `pixelgrid check`: a checker's watch of nodes. For each node it launches short real sessions
//! on that node (one for a watch, `--sessions N` at once for a capacity check), sends each a
//! fresh random nonce as a render challenge, and must see every nonce in the pictures it decodes
//! within a deadline, at the mode asked for; it measures the frame rate, signs the result with
//! its own key (text in `pixelgrid_proto::check`) and hands it to the indexers named with
//! `--submit-to`, which count it when their rules name this checker.
//!
//! A node that accepted the launch but showed no picture, or whose connection failed, fails the
//! check; an orchestrator that cannot place the session (the node is full, draining or gone)
//! gives no result at all, since that says nothing about the node's honesty.

use pixelgrid_client::{Client, Error as SdkError, LaunchOptions, Session};
use pixelgrid_proto::identity::NodeKey;
use pixelgrid_proto::indexer::v1 as ipb;
use std::time::{Duration, Instant};

/// What `pixelgrid check` takes.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The node(s) to check (hex id; repeat the flag for several).
    #[arg(long, required_unless_present = "all_nodes")]
    node: Vec<String>,
    /// Check every node the orchestrator lists as ready (listed again each period).
    #[arg(long)]
    all_nodes: bool,
    /// The game to run (a built-in game: only those draw challenges).
    #[arg(long, default_value = "arena")]
    game: String,
    /// WIDTHxHEIGHT@FPS.
    #[arg(long, default_value = "640x360@30")]
    mode: String,
    /// How long the nonce may take to appear, ms.
    #[arg(long, default_value_t = 2_000)]
    deadline_ms: u64,
    /// Sessions to run on the node at once: 1 watches it; its advertised capacity checks that
    /// it really holds that many (every session must show its own nonce).
    #[arg(long, default_value_t = 1)]
    sessions: u32,
    /// This checker's identity key (created 0600 when missing); its public key names the checker.
    #[arg(long, default_value = "checker.key")]
    key: std::path::PathBuf,
    /// Indexer gRPC URL(s) to hand each signed result to (repeat for several).
    #[arg(long)]
    submit_to: Vec<String>,
    /// Keep checking: every node once in each period of this many seconds, at a random moment
    /// (0: check each node once and exit, failing when a node failed).
    #[arg(long, default_value_t = 0)]
    every_s: u64,
}

/// What one session of a check saw.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// How long after the challenge the nonce appeared.
    after: Option<Duration>,
    size: (u32, u32),
    fps: u32,
}

/// Watches one session: its first picture, then the challenge, then frames until the deadline.
async fn watch(mut session: Session, nonce: u32, deadline: Duration) -> Result<Seen, String> {
    tokio::time::timeout(Duration::from_secs(10), session.next_frame())
        .await
        .map_err(|_| "no picture in 10 s".to_owned())?
        .ok_or_else(|| "the session ended before its first picture".to_owned())?;
    // The data channel may open a moment after the first picture.
    let opening = Instant::now();
    while !session.input().is_open() && opening.elapsed() < Duration::from_secs(3) {
        let _ = tokio::time::timeout(Duration::from_millis(100), session.next_frame()).await;
    }
    let asked = Instant::now();
    session
        .input()
        .challenge(nonce)
        .await
        .map_err(|e| format!("the challenge could not be sent: {e}"))?;
    // At least a second of frames, to measure the rate.
    let window = deadline.max(Duration::from_secs(1));
    let mut seen = Seen::default();
    let mut frames = 0u32;
    while asked.elapsed() < window {
        let left = window.saturating_sub(asked.elapsed());
        let Ok(Some(f)) = tokio::time::timeout(left, session.next_frame()).await else {
            break;
        };
        frames += 1;
        seen.size = (f.width, f.height);
        if seen.after.is_none()
            && asked.elapsed() <= deadline
            && pixelgrid_proto::challenge::read(&f.data, f.width, f.height) == Some(nonce)
        {
            seen.after = Some(asked.elapsed());
        }
    }
    seen.fps = (f64::from(frames) / asked.elapsed().as_secs_f64()).round() as u32;
    session.end().await;
    Ok(seen)
}

/// A random nonce the challenge layout can draw.
fn fresh_nonce() -> anyhow::Result<u32> {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a nonce: {e}"))?;
    Ok(u32::from_le_bytes(bytes) % (pixelgrid_proto::challenge::MAX_NONCE + 1))
}

/// Checks `node` once. `Ok(None)` when the orchestrator could not place the check (no verdict
/// on the node); otherwise the signed result and, when failed, why.
async fn check_node(
    client: &Client,
    key: &NodeKey,
    args: &CheckArgs,
    node: &str,
) -> anyhow::Result<Option<(ipb::SignedCheckResult, String)>> {
    let (width, height, fps) = crate::play::parse_mode(&args.mode)?;
    let options = LaunchOptions {
        width,
        height,
        fps,
        audio: false,
        reconnect: false,
        node_id: Some(node.to_owned()),
        ..LaunchOptions::default()
    };
    let nonce = fresh_nonce()?;
    let deadline = Duration::from_millis(args.deadline_ms);
    let mut session_id = String::new();
    let mut watches = tokio::task::JoinSet::new();
    let mut why = String::new();
    for i in 0..args.sessions.max(1) {
        match client.launch(&args.game, options.clone()).await {
            Ok(session) => {
                if session_id.is_empty() {
                    session_id = session.session_id();
                }
                // Each session its own nonce: one picture cannot answer for another.
                let n = (nonce + i) % (pixelgrid_proto::challenge::MAX_NONCE + 1);
                watches.spawn(watch(session, n, deadline));
            }
            Err(e @ (SdkError::Connection { .. } | SdkError::NoReachableNode(_))) => {
                why = format!(
                    "session {} of {} did not connect: {e}",
                    i + 1,
                    args.sessions
                );
                break;
            }
            Err(e) if i == 0 => {
                tracing::warn!(node, error = %e, "the orchestrator did not place the check; no result");
                return Ok(None);
            }
            Err(e) => {
                why = format!("only {i} of {} sessions were placed: {e}", args.sessions);
                break;
            }
        }
    }
    let mut worst = Seen {
        after: Some(Duration::ZERO),
        size: (width, height),
        fps: u32::MAX,
    };
    while let Some(joined) = watches.join_next().await {
        match joined.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(seen) => {
                worst.after = worst.after.zip(seen.after).map(|(a, b)| a.max(b));
                if seen.size != (width, height) {
                    worst.size = seen.size;
                }
                worst.fps = worst.fps.min(seen.fps);
            }
            Err(e) => {
                worst.after = None;
                if why.is_empty() {
                    why = e;
                }
            }
        }
    }
    if worst.fps == u32::MAX {
        worst.fps = 0;
    }
    let at_promise = worst.size == (width, height) && worst.fps * 100 >= fps * 90;
    if why.is_empty() {
        why = match (worst.after, at_promise) {
            (None, _) => format!(
                "a nonce was not in the picture within {} ms",
                args.deadline_ms
            ),
            (_, false) => format!(
                "{}x{} at {} fps, not the {width}x{height}@{fps} asked for",
                worst.size.0, worst.size.1, worst.fps
            ),
            _ => String::new(),
        };
    }
    if session_id.is_empty() {
        // Nothing started: the check still needs a name of its own.
        session_id = format!("unplaced-{nonce}-{}", pixelgrid_proto::clock::unix_ms());
    }
    let result = ipb::CheckResult {
        node_id: Some(pixelgrid_proto::types::v1::NodeId {
            hex: node.to_owned(),
        }),
        session_id,
        nonce,
        passed: why.is_empty(),
        seen_after_ms: worst.after.map_or(0, |d| d.as_millis() as u64),
        mode: Some(pixelgrid_proto::types::v1::VideoMode {
            width_px: worst.size.0,
            height_px: worst.size.1,
            fps: worst.fps,
        }),
        sessions: args.sessions.max(1),
        at_unix_ms: pixelgrid_proto::clock::unix_ms(),
    };
    Ok(Some((pixelgrid_proto::check::sign(result, key), why)))
}

/// Hands a signed result to an indexer; returns its verdict's name and detail.
async fn submit(url: &str, signed: &ipb::SignedCheckResult) -> anyhow::Result<(String, String)> {
    let channel = pixelgrid_proto::transport::connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("indexer {url}: {e}"))?;
    let ack = ipb::indexer_client::IndexerClient::new(channel)
        .submit_check_result(signed.clone())
        .await
        .map_err(|e| anyhow::anyhow!("indexer {url}: {}", e.message()))?
        .into_inner();
    let verdict = ipb::ReportVerdict::try_from(ack.verdict).map_or_else(
        |_| format!("{}", ack.verdict),
        |v| v.as_str_name().to_owned(),
    );
    Ok((verdict, ack.detail))
}

/// Prints one result as a JSON line with what each indexer said; true when the node passed and
/// every indexer took it.
#[allow(clippy::print_stdout)]
async fn publish(args: &CheckArgs, signed: &ipb::SignedCheckResult, why: &str) -> bool {
    let r = signed.result.clone().unwrap_or_default();
    let mode = r.mode.unwrap_or_default();
    let mut indexers = Vec::new();
    let mut all_taken = true;
    for url in &args.submit_to {
        // An indexer that misses a result decides the node's epoch without it: try again a
        // few times when it cannot be reached (a refusal is its answer, not retried).
        let mut outcome = submit(url, signed).await;
        for wait_ms in [500, 1_000, 2_000] {
            if outcome.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            outcome = submit(url, signed).await;
        }
        let (verdict, detail) = outcome.unwrap_or_else(|e| ("UNREACHABLE".into(), e.to_string()));
        all_taken &= verdict == ipb::ReportVerdict::Accepted.as_str_name();
        indexers.push(serde_json::json!({"url": url, "verdict": verdict, "detail": detail}));
    }
    let line = serde_json::json!({
        "node": r.node_id.map(|n| n.hex).unwrap_or_default(),
        "session": r.session_id,
        "nonce": r.nonce,
        "passed": r.passed,
        "seen_after_ms": r.seen_after_ms,
        "width": mode.width_px,
        "height": mode.height_px,
        "fps": mode.fps,
        "sessions": r.sessions,
        "at_unix_ms": r.at_unix_ms,
        "checker": signed.checker,
        "signature": pixelgrid_proto::token::hex(&signed.signature),
        "why": why,
        "indexers": indexers,
    });
    println!("{line}");
    r.passed && all_taken
}

/// The nodes to check now: those named, or every ready node the orchestrator lists.
async fn nodes_to_check(
    orchestrator: &str,
    api_key: &str,
    args: &CheckArgs,
) -> anyhow::Result<Vec<String>> {
    use pixelgrid_proto::orchestrator::v1 as opb;
    if !args.all_nodes {
        return Ok(args.node.clone());
    }
    let channel = pixelgrid_proto::transport::connect(orchestrator)
        .await
        .map_err(|e| anyhow::anyhow!("orchestrator {orchestrator}: {e}"))?;
    let mut client = opb::orchestrator_client::OrchestratorClient::new(channel);
    let (mut nodes, mut page_token) = (args.node.clone(), String::new());
    loop {
        let request = pixelgrid_proto::transport::with_bearer(
            opb::ListNodesRequest {
                region_code: String::new(),
                page_size: 0,
                page_token,
            },
            api_key,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let page = client
            .list_nodes(request)
            .await
            .map_err(|e| anyhow::anyhow!("listing nodes: {}", e.message()))?
            .into_inner();
        nodes.extend(
            page.nodes
                .into_iter()
                .filter(|n| n.state == opb::NodeState::Ready as i32)
                .filter_map(|n| n.node_id.map(|id| id.hex)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    nodes.sort();
    nodes.dedup();
    Ok(nodes)
}

/// Runs the checks; see the module docs.
pub async fn check(
    orchestrator: &str,
    api_key: Option<&str>,
    args: CheckArgs,
) -> anyhow::Result<()> {
    let api_key = api_key.ok_or_else(|| {
        anyhow::anyhow!("check launches like a player: it needs a studio's --api-key")
    })?;
    crate::play::parse_mode(&args.mode)?;
    let (key, _) = NodeKey::load_or_create(&args.key)
        .map_err(|e| anyhow::anyhow!("checker key {}: {e}", args.key.display()))?;
    let client = Client::connect(orchestrator)
        .await?
        .with_api_key(api_key, "checker");
    if args.every_s == 0 {
        let mut failed = Vec::new();
        for node in &nodes_to_check(orchestrator, api_key, &args).await? {
            match check_node(&client, &key, &args, node).await? {
                Some((signed, why)) => {
                    if !publish(&args, &signed, &why).await {
                        failed.push(format!(
                            "{node}: {}",
                            if why.is_empty() {
                                "an indexer refused the result"
                            } else {
                                &why
                            }
                        ));
                    }
                }
                None => failed.push(format!(
                    "{node}: the orchestrator could not place a check on it"
                )),
            }
        }
        anyhow::ensure!(failed.is_empty(), "{}", failed.join("; "));
        return Ok(());
    }
    // At a random moment in each period, so a node cannot tell when to be honest.
    let period = Duration::from_secs(args.every_s);
    loop {
        let started = Instant::now();
        let nodes = nodes_to_check(orchestrator, api_key, &args)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot list the nodes; checking those named");
                args.node.clone()
            });
        for node in &nodes {
            let slot = period / u32::try_from(nodes.len()).unwrap_or(u32::MAX).max(1);
            let wait = slot.mul_f64(
                f64::from(fresh_nonce()?) / f64::from(pixelgrid_proto::challenge::MAX_NONCE),
            );
            tokio::time::sleep(wait).await;
            match check_node(&client, &key, &args, node).await {
                Ok(Some((signed, why))) => {
                    publish(&args, &signed, &why).await;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(node, error = %e, "check not run"),
            }
        }
        tokio::time::sleep(period.saturating_sub(started.elapsed())).await;
    }
}
