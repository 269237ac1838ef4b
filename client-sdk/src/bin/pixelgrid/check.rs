//! `pixelgrid check`: a checker's watch of one node. It launches a short real session on that
//! node, sends a fresh random nonce as a render challenge, and must see the nonce in the
//! pictures it decodes within a deadline, at the mode asked for; it measures the frame rate and
//! signs the result with its own key, so an indexer can tell whose verdict it is.
//!
//! The signature is ed25519 over the text `"pixelgrid/check/v1\n"` followed by node, session,
//! nonce, passed (0/1), seen_after_ms, width, height, fps and at_unix_ms, each followed by
//! `"\n"`.

use pixelgrid_client::{Client, LaunchOptions};
use std::time::{Duration, Instant};

/// What `pixelgrid check` takes.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The node to check (hex id).
    #[arg(long)]
    node: String,
    /// The game to run (a built-in game: only those draw challenges).
    #[arg(long, default_value = "arena")]
    game: String,
    /// WIDTHxHEIGHT@FPS.
    #[arg(long, default_value = "640x360@30")]
    mode: String,
    /// How long the nonce may take to appear, ms.
    #[arg(long, default_value_t = 2_000)]
    deadline_ms: u64,
    /// This checker's identity key (created 0600 when missing); its public key names the checker.
    #[arg(long, default_value = "checker.key")]
    key: std::path::PathBuf,
}

/// A signed check result, as printed.
#[derive(Debug, serde::Serialize)]
struct CheckResult {
    node: String,
    session: String,
    nonce: u32,
    passed: bool,
    seen_after_ms: u64,
    width: u32,
    height: u32,
    fps: u32,
    at_unix_ms: u64,
    checker: String,
    signature: String,
    why: String,
}

/// The text a checker signs.
fn signed_text(r: &CheckResult) -> String {
    format!(
        "pixelgrid/check/v1\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
        r.node,
        r.session,
        r.nonce,
        u8::from(r.passed),
        r.seen_after_ms,
        r.width,
        r.height,
        r.fps,
        r.at_unix_ms
    )
}

/// Runs one check; prints the signed result (JSON); fails when the node failed it.
#[allow(clippy::print_stdout)]
pub async fn check(
    orchestrator: &str,
    api_key: Option<&str>,
    args: CheckArgs,
) -> anyhow::Result<()> {
    let api_key = api_key.ok_or_else(|| {
        anyhow::anyhow!("check launches like a player: it needs a studio's --api-key")
    })?;
    let (width, height, fps) = crate::play::parse_mode(&args.mode)?;
    let (key, _) = pixelgrid_proto::identity::NodeKey::load_or_create(&args.key)
        .map_err(|e| anyhow::anyhow!("checker key {}: {e}", args.key.display()))?;
    let client = Client::connect(orchestrator)
        .await?
        .with_api_key(api_key, "checker");
    let mut session = client
        .launch(
            &args.game,
            LaunchOptions {
                width,
                height,
                fps,
                audio: false,
                reconnect: false,
                node_id: Some(args.node.clone()),
                ..LaunchOptions::default()
            },
        )
        .await?;
    let session_id = session.session_id();
    let mut nonce_bytes = [0u8; 4];
    getrandom::fill(&mut nonce_bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for a nonce: {e}"))?;
    let nonce = u32::from_le_bytes(nonce_bytes) % (pixelgrid_proto::challenge::MAX_NONCE + 1);
    // The first picture shows the node runs at all; then the challenge.
    tokio::time::timeout(Duration::from_secs(10), session.next_frame())
        .await
        .map_err(|_| anyhow::anyhow!("no picture from node {} in 10 s", args.node))?
        .ok_or_else(|| anyhow::anyhow!("the session ended before its first picture"))?;
    let asked = Instant::now();
    session.input().challenge(nonce).await?;
    let deadline = Duration::from_millis(args.deadline_ms);
    let (mut seen, mut size, mut frames) = (None, (0, 0), 0u32);
    let window = Instant::now();
    while asked.elapsed() < deadline.max(Duration::from_secs(1)) {
        let left = deadline
            .max(Duration::from_secs(1))
            .saturating_sub(asked.elapsed());
        let Ok(Some(f)) = tokio::time::timeout(left, session.next_frame()).await else {
            break;
        };
        frames += 1;
        size = (f.width, f.height);
        if seen.is_none()
            && asked.elapsed() <= deadline
            && pixelgrid_proto::challenge::read(&f.data, f.width, f.height) == Some(nonce)
        {
            seen = Some(asked.elapsed());
        }
    }
    let measured_fps = (f64::from(frames) / window.elapsed().as_secs_f64()).round() as u32;
    session.end().await;
    let at_promise = size == (width, height) && measured_fps * 100 >= fps * 90;
    let passed = seen.is_some() && at_promise;
    let why = match (seen, at_promise) {
        (None, _) => format!(
            "the nonce was not in the picture within {} ms",
            args.deadline_ms
        ),
        (_, false) => format!(
            "{}x{} at {measured_fps} fps, not the {}x{}@{fps} asked for",
            size.0, size.1, width, height
        ),
        _ => String::new(),
    };
    let mut result = CheckResult {
        node: args.node.clone(),
        session: session_id,
        nonce,
        passed,
        seen_after_ms: seen.map_or(0, |d| d.as_millis() as u64),
        width: size.0,
        height: size.1,
        fps: measured_fps,
        at_unix_ms: pixelgrid_proto::clock::unix_ms(),
        checker: key.node_id(),
        signature: String::new(),
        why,
    };
    result.signature =
        pixelgrid_proto::token::hex(&key.sign(signed_text(&result).as_bytes()).signature);
    println!("{}", serde_json::to_string(&result)?);
    anyhow::ensure!(
        passed,
        "node {} failed the check: {}",
        args.node,
        result.why
    );
    Ok(())
}
