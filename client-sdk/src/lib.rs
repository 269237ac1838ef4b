//! PixelGrid's client SDK: launch a game on the grid and play it from Rust.
//!
//! ```no_run
//! # async fn demo() -> pixelgrid_client::Result<()> {
//! use pixelgrid_client::{Client, LaunchOptions};
//! // On a player's machine, grants come from the studio's backend (which holds the API key):
//! let client = Client::connect("http://127.0.0.1:50051").await?.with_grant_source(
//!     std::sync::Arc::new(|| Box::pin(async { Ok(my_backend_grant().await) })),
//! );
//! let mut session = client.launch("arena", LaunchOptions::default()).await?;
//! let frame = session.next_frame().await.expect("a frame");        // RGBA, with its capture time
//! session.input().key("ArrowRight", true).await?;                   // input to the game
//! println!("{:?}", session.stats());                                // fps, bitrate, RTT, g2g p50/p99
//! session.end().await;
//! # let _ = frame; Ok(()) }
//! # async fn my_backend_grant() -> String { String::new() }
//! ```
//!
//! - [`Client`] / [`Session`] ([`client`]): placement by measured RTT, WHEP over WebRTC, decoded
//!   frames ([`Frame`]) and optionally encoded access units ([`AccessUnit`]), typed input
//!   ([`InputSender`], [`InputEvent`]), live [`Stats`], [`Event`]s, and re-launch on another node
//!   when the node dies.
//! - [`stats`]: the clock-free statistics core.
//! - The rest of the crate serves the `pixelgrid` CLI: readable rows for nodes, sessions, epochs
//!   and payouts.

#![warn(missing_docs)]

pub mod audio;
pub mod client;
mod decoder;
mod error;
mod player;
pub mod reorder;
pub mod stats;
pub mod whep;

pub use audio::AudioChunk;
pub use client::{
    AccessUnit, Client, Event, Frame, GameInfo, GrantSource, InputSender, LaunchObserver,
    LaunchOptions, LaunchPhase, LaunchTimings, Session,
};
pub use decoder::{Codec, FrameFormat};
pub use error::{Error, Result};
pub use pixelgrid_proto::input::InputEvent;
pub use stats::Stats;

use pixelgrid_proto::orchestrator::v1 as pb;
use serde::Serialize;

/// A node as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRow {
    /// Node id (hex public key).
    pub node: String,
    /// READY or DRAINING.
    pub state: String,
    /// Region.
    pub region: String,
    /// Sessions running or reserved.
    pub sessions: u32,
    /// Free slots.
    pub free: u32,
    /// Games hosted.
    pub games: Vec<String>,
    /// WHEP base URL.
    pub whep: String,
    /// CPU load, percent.
    pub cpu_load_percent: u32,
    /// GPU telemetry in words ("unavailable: …" without an NVIDIA driver).
    pub gpu: String,
    /// Time since the last heartbeat, ms.
    pub heartbeat_age_ms: u64,
}

/// A session as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRow {
    /// Session id.
    pub session: String,
    /// Lifecycle state.
    pub state: String,
    /// Game.
    pub game: String,
    /// Serving node.
    pub node: String,
    /// WIDTHxHEIGHT@FPS.
    pub mode: String,
    /// Why it ended.
    pub reason: String,
}

fn state_name(s: i32) -> String {
    pb::SessionState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("SESSION_STATE_")
                .to_owned()
        })
        .unwrap_or_else(|_| "UNKNOWN".into())
}

impl From<&pb::NodeSummary> for NodeRow {
    fn from(n: &pb::NodeSummary) -> Self {
        Self {
            node: n
                .node_id
                .as_ref()
                .map(|i| i.hex.clone())
                .unwrap_or_default(),
            state: pb::NodeState::try_from(n.state)
                .map(|s| s.as_str_name().trim_start_matches("NODE_STATE_").to_owned())
                .unwrap_or_default(),
            region: n
                .region
                .as_ref()
                .map(|r| r.code.clone())
                .unwrap_or_default(),
            sessions: n.active_sessions,
            free: n.free_slots,
            games: n
                .capabilities
                .as_ref()
                .map(|c| c.games_installed.clone())
                .unwrap_or_default(),
            whep: n.whep_base_url.clone(),
            cpu_load_percent: n.cpu_load_percent,
            gpu: match &n.gpu {
                Some(g) if g.available => format!(
                    "{}% util, {}/{} MiB, encoder {}%, {} °C",
                    g.gpu_utilization_percent,
                    g.memory_used_bytes >> 20,
                    g.memory_total_bytes >> 20,
                    g.encoder_utilization_percent,
                    g.temperature_celsius
                ),
                Some(g) => format!("unavailable: {}", g.unavailable_reason),
                None => "not reported".into(),
            },
            heartbeat_age_ms: now_ms().saturating_sub(n.last_heartbeat_unix_ms),
        }
    }
}

use pixelgrid_proto::clock::unix_ms as now_ms;

impl From<&pb::Session> for SessionRow {
    fn from(s: &pb::Session) -> Self {
        Self {
            session: s.session_id.clone(),
            state: state_name(s.state),
            game: s.game.clone(),
            node: s
                .node_id
                .as_ref()
                .map(|i| i.hex.clone())
                .unwrap_or_default(),
            mode: s
                .mode
                .map(|m| format!("{}x{}@{}", m.width_px, m.height_px, m.fps))
                .unwrap_or_default(),
            reason: s.end_reason.clone(),
        }
    }
}

/// A closed epoch as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EpochRow {
    /// Epoch number.
    pub epoch: u64,
    /// Start (RFC 3339, UTC).
    pub start: String,
    /// Nodes with a payout.
    pub nodes_paid: u32,
    /// Sum of payouts, micro-credits.
    pub total_micro_credits: u64,
    /// Merkle root (hex).
    pub merkle_root: String,
}

impl From<&pixelgrid_proto::indexer::v1::Epoch> for EpochRow {
    fn from(e: &pixelgrid_proto::indexer::v1::Epoch) -> Self {
        Self {
            epoch: e.number,
            start: pixelgrid_proto::token::format_rfc3339(e.start_unix_ms / 1000),
            nodes_paid: e.nodes_paid,
            total_micro_credits: e.total_micro_credits,
            merkle_root: pixelgrid_proto::token::hex(&e.merkle_root),
        }
    }
}

/// One node's payout as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PayoutRow {
    /// Node id (hex).
    pub node: String,
    /// Payout, micro-credits.
    pub amount_micro_credits: u64,
    /// Verified uptime, ms.
    pub uptime_ms: u64,
    /// Play delivered at the promised quality, ms.
    pub delivered_ms: u64,
    /// Taken back for dropped sessions, micro-credits.
    pub refunded_micro_credits: u64,
    /// Whether uptime reached the SLA floor.
    pub sla_met: bool,
    /// What studios paid for its delivered play (before the protocol fee), micro-credits.
    pub studio_paid_micro_credits: u64,
}

impl From<&pixelgrid_proto::indexer::v1::NodePayout> for PayoutRow {
    fn from(p: &pixelgrid_proto::indexer::v1::NodePayout) -> Self {
        Self {
            node: p
                .node_id
                .as_ref()
                .map(|n| n.hex.clone())
                .unwrap_or_default(),
            amount_micro_credits: p.amount_micro_credits,
            uptime_ms: p.uptime_ms,
            delivered_ms: p.delivered_ms,
            refunded_micro_credits: p.refunded_micro_credits,
            sla_met: p.sla_met,
            studio_paid_micro_credits: p.studio_paid_micro_credits,
        }
    }
}

/// Left-aligned columns with a header row.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(header.iter().map(|h| (*h).to_owned()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

/// Shortens a 64-hex-digit id for tables.
pub fn short(id: &str) -> String {
    if id.len() > 16 {
        format!("{}…", &id[..12])
    } else {
        id.to_owned()
    }
}

/// A row the CLI prints: a table line, or an object in a JSON array.
pub trait Row: Serialize {
    /// Column headers.
    const HEADER: &'static [&'static str];
    /// The cells, in header order.
    fn cells(&self) -> Vec<String>;
}

/// Rows as a table, or as a JSON array with `json`.
pub fn render<R: Row>(rows: &[R], json: bool) -> String {
    if json {
        serde_json::to_string(rows).unwrap_or_default()
    } else {
        table(R::HEADER, &rows.iter().map(Row::cells).collect::<Vec<_>>())
    }
}

impl Row for NodeRow {
    const HEADER: &'static [&'static str] = &[
        "NODE", "STATE", "REGION", "SESSIONS", "FREE", "CPU", "GAMES", "WHEP", "GPU",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            short(&self.node),
            self.state.clone(),
            self.region.clone(),
            self.sessions.to_string(),
            self.free.to_string(),
            format!("{}%", self.cpu_load_percent),
            self.games.join(","),
            self.whep.clone(),
            self.gpu.clone(),
        ]
    }
}

impl Row for SessionRow {
    const HEADER: &'static [&'static str] = &["SESSION", "STATE", "GAME", "NODE", "MODE", "REASON"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.session.clone(),
            self.state.clone(),
            self.game.clone(),
            short(&self.node),
            self.mode.clone(),
            self.reason.clone(),
        ]
    }
}

impl Row for EpochRow {
    const HEADER: &'static [&'static str] = &["EPOCH", "START", "NODES", "TOTAL", "ROOT"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.epoch.to_string(),
            self.start.clone(),
            self.nodes_paid.to_string(),
            self.total_micro_credits.to_string(),
            self.merkle_root.clone(),
        ]
    }
}

impl Row for PayoutRow {
    const HEADER: &'static [&'static str] = &[
        "NODE",
        "AMOUNT",
        "UPTIME_S",
        "DELIVERED_S",
        "REFUNDED",
        "SLA",
        "STUDIO_PAID",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            short(&self.node),
            self.amount_micro_credits.to_string(),
            format!("{:.1}", self.uptime_ms as f64 / 1000.0),
            format!("{:.1}", self.delivered_ms as f64 / 1000.0),
            self.refunded_micro_credits.to_string(),
            if self.sla_met { "yes" } else { "no" }.into(),
            self.studio_paid_micro_credits.to_string(),
        ]
    }
}

impl Row for GameInfo {
    const HEADER: &'static [&'static str] = &[
        "GAME",
        "VERSION",
        "NAME",
        "MODES",
        "READY NODES",
        "FREE SLOTS",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.version.clone(),
            self.name.clone(),
            if self.modes.is_empty() {
                "any".into()
            } else {
                self.modes.join(" ")
            },
            self.ready_nodes.to_string(),
            self.free_slots.to_string(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "LONG"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONG\nxyz  1\nq    22");
    }
}

/// A studio as the CLI shows it (never a key, only key ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StudioRow {
    /// Studio id.
    pub studio: String,
    /// Display name.
    pub name: String,
    /// Games it may launch; empty means all.
    pub games: Vec<String>,
    /// Concurrent sessions allowed (0 = no limit).
    pub max_sessions: u32,
    /// Minutes per UTC day (0 = no limit).
    pub max_minutes_per_day: u32,
    /// Highest mode, `WxH@F` with `any` for no limit.
    pub max_mode: String,
    /// Keys that work.
    pub keys: Vec<String>,
    /// Revoked keys.
    pub revoked_keys: Vec<String>,
}

impl From<&pb::Studio> for StudioRow {
    fn from(s: &pb::Studio) -> Self {
        let l = s.limits.unwrap_or_default();
        let m = l.max_mode.unwrap_or_default();
        let any = |v: u32| {
            if v == 0 {
                "any".to_owned()
            } else {
                v.to_string()
            }
        };
        Self {
            studio: s.studio_id.clone(),
            name: s.name.clone(),
            games: s.games.clone(),
            max_sessions: l.max_concurrent_sessions,
            max_minutes_per_day: l.max_minutes_per_day,
            max_mode: if m.width_px == 0 && m.height_px == 0 && m.fps == 0 {
                "any".into()
            } else {
                format!("{}x{}@{}", any(m.width_px), any(m.height_px), any(m.fps))
            },
            keys: s
                .keys
                .iter()
                .filter(|k| k.revoked_unix_ms == 0)
                .map(|k| k.key_id.clone())
                .collect(),
            revoked_keys: s
                .keys
                .iter()
                .filter(|k| k.revoked_unix_ms != 0)
                .map(|k| k.key_id.clone())
                .collect(),
        }
    }
}

impl Row for StudioRow {
    const HEADER: &'static [&'static str] = &[
        "STUDIO", "NAME", "GAMES", "SESSIONS", "MIN/DAY", "MAX MODE", "KEYS", "REVOKED",
    ];
    fn cells(&self) -> Vec<String> {
        let or_all = |v: &[String]| {
            if v.is_empty() {
                "all".to_owned()
            } else {
                v.join(",")
            }
        };
        let limit = |v: u32| {
            if v == 0 {
                "-".to_owned()
            } else {
                v.to_string()
            }
        };
        vec![
            self.studio.clone(),
            self.name.clone(),
            or_all(&self.games),
            limit(self.max_sessions),
            limit(self.max_minutes_per_day),
            self.max_mode.clone(),
            self.keys.join(","),
            self.revoked_keys.join(","),
        ]
    }
}

/// One metered session as the CLI shows and exports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRow {
    /// Session id.
    pub session: String,
    /// Studio.
    pub studio: String,
    /// The studio's player id.
    pub player: String,
    /// Game.
    pub game: String,
    /// Serving node.
    pub node: String,
    /// WIDTHxHEIGHT@FPS.
    pub mode: String,
    /// Connected, Unix ms (0 if never).
    pub started_unix_ms: u64,
    /// Ended, Unix ms.
    pub ended_unix_ms: u64,
    /// Minutes played, to the millisecond.
    pub minutes: f64,
    /// How it ended.
    pub state: String,
    /// Why.
    pub reason: String,
}

impl From<&pb::UsageRecord> for UsageRow {
    fn from(u: &pb::UsageRecord) -> Self {
        let m = u.mode.unwrap_or_default();
        Self {
            session: u.session_id.clone(),
            studio: u.studio_id.clone(),
            player: u.player_id.clone(),
            game: u.game.clone(),
            node: u
                .node_id
                .as_ref()
                .map(|n| n.hex.clone())
                .unwrap_or_default(),
            mode: format!("{}x{}@{}", m.width_px, m.height_px, m.fps),
            started_unix_ms: u.started_unix_ms,
            ended_unix_ms: u.ended_unix_ms,
            minutes: u.played_ms as f64 / 60_000.0,
            state: state_name(u.final_state),
            reason: u.end_reason.clone(),
        }
    }
}

impl Row for UsageRow {
    const HEADER: &'static [&'static str] = &[
        "SESSION", "STUDIO", "PLAYER", "GAME", "NODE", "MODE", "STARTED", "ENDED", "MINUTES",
        "STATE", "REASON",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.session.clone(),
            self.studio.clone(),
            self.player.clone(),
            self.game.clone(),
            short(&self.node),
            self.mode.clone(),
            self.started_unix_ms.to_string(),
            self.ended_unix_ms.to_string(),
            format!("{:.3}", self.minutes),
            self.state.clone(),
            self.reason.clone(),
        ]
    }
}

/// Rows as CSV (RFC 4180: fields with a comma, quote or line break are quoted), full ids.
pub fn render_csv(rows: &[UsageRow]) -> String {
    let field = |f: &str| {
        if f.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f.to_owned()
        }
    };
    let mut out = UsageRow::HEADER
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for r in rows {
        let mut cells = r.cells();
        cells[4] = r.node.clone();
        out.push_str(&cells.iter().map(|c| field(c)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod usage_tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting_and_keeps_full_node_ids() {
        let row = UsageRow {
            session: "s1".into(),
            studio: "acme".into(),
            player: "p,1".into(),
            game: "arena".into(),
            node: "ab".repeat(32),
            mode: "640x360@30".into(),
            started_unix_ms: 1,
            ended_unix_ms: 60_001,
            minutes: 1.0,
            state: "ENDED".into(),
            reason: "said \"bye\"".into(),
        };
        let csv = render_csv(&[row]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "session,studio,player,game,node,mode,started,ended,minutes,state,reason"
        );
        assert!(lines[1].contains("\"p,1\"") && lines[1].contains("\"said \"\"bye\"\"\""));
        assert!(lines[1].contains(&"ab".repeat(32)));
    }
}
