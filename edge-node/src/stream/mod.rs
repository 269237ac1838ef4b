//! Streaming sessions to players over WebRTC: WHEP signalling, session tokens, input.
//!
//! [`StreamNode`] owns the live sessions. A player (or any WHEP client) POSTs an SDP offer with a
//! session token to `/whep/{session}`; the first viewer of a session starts its game, renderer
//! and encoder, later viewers of the same session attach to the same stream. A session ends when
//! its last viewer leaves (DELETE, ICE failure, closed connection) or its token expires, and
//! everything it held is freed.

pub mod congestion;
mod peer;
pub mod protocol;
pub mod receipts;
mod whep;

pub use peer::{DEFAULT_CONNECT_DEADLINE, IceServer, PeerSettings};
pub use whep::router;

use crate::encode::EncoderSettings;
use crate::host::SessionHost;
use crate::session::{Session, SessionConfig, SessionFrame};
use crate::video::{Codec, VideoMode};
use crate::{Error, Result};
use peer::{Viewer, ViewerContext};
use pixelgrid_proto::token::{
    SessionClaims, TokenSigner, TokenVerifier, format_rfc3339, parse_rfc3339,
};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Serves `node`'s HTTP API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<StreamNode>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(node))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A session's name in `/metrics`: a digest, not the id — the metrics port is public and a
/// session id names a bearer-protected resource.
fn metrics_label(session_id: &str) -> String {
    use sha2::Digest as _;
    pixelgrid_proto::token::hex(&sha2::Sha256::digest(session_id.as_bytes())[..6])
}

/// Is this `candidate:` attribute a passive TCP candidate (one the node would connect out to)?
fn is_passive_tcp(candidate: &str) -> bool {
    let fields: Vec<&str> = candidate.split_whitespace().collect();
    fields.get(2).is_some_and(|t| t.eq_ignore_ascii_case("tcp"))
        && fields
            .windows(2)
            .any(|w| w[0] == "tcptype" && w[1].eq_ignore_ascii_case("passive"))
}

/// Wall-clock now, Unix milliseconds.
pub use pixelgrid_proto::clock::unix_ms_f64 as unix_ms;

fn unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Counters of one live session's stream.
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// Frames not sent to a viewer because it had fallen behind.
    pub frames_dropped_send: AtomicU64,
    /// Frames sent to viewers.
    pub frames_sent: AtomicU64,
    /// RTP payload bytes sent to viewers.
    pub bytes_sent: AtomicU64,
    /// Input events applied.
    pub input_accepted: AtomicU64,
    /// Input events and messages dropped.
    pub input_dropped: AtomicU64,
    /// A player's connection came up.
    pub player_connected: std::sync::atomic::AtomicBool,
    /// ... and the orchestrator has been told.
    pub connection_reported: std::sync::atomic::AtomicBool,
    /// The link estimate the stream follows (the lowest of its viewers'), bit/s; 0 before the
    /// first feedback.
    pub estimate_bps: AtomicU64,
    /// The encoder's target bitrate now, kbit/s.
    pub target_kbps: AtomicU64,
    /// Frames per second the stream is encoded at now (the ladder may halve the mode's).
    pub fps_now: AtomicU64,
    /// Retransmissions players asked for beyond their share of the link, not sent.
    pub retransmits_dropped: Arc<AtomicU64>,
    /// Each viewer's latest estimate.
    viewer_estimates: Mutex<Vec<(String, congestion::SharedEstimate)>>,
    /// The player's delivery receipts, for the node's reports.
    pub receipts: Mutex<receipts::ReceiptBook>,
}

impl StreamCounters {
    /// Follows `viewer`'s link estimate from now on.
    pub(crate) fn watch_viewer(&self, viewer: &str, estimate: congestion::SharedEstimate) {
        self.viewer_estimates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((viewer.to_owned(), estimate));
    }

    /// Stops following `viewer`.
    pub(crate) fn forget_viewer(&self, viewer: &str) {
        self.viewer_estimates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(v, _)| v != viewer);
    }

    /// The lowest estimate of the viewers that have reported one, bit/s.
    fn lowest_estimate(&self) -> Option<u64> {
        self.viewer_estimates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, e)| e.load(Ordering::Relaxed))
            .filter(|e| *e > 0)
            .min()
    }
}

/// How often a session looks at its viewers' estimates: under one transport-cc feedback interval
/// (50–100 ms in browsers), so the encoder follows each new estimate.
const ADAPT_EVERY: Duration = Duration::from_millis(25);

/// Steers one session's encoder by its viewers' link estimates until aborted.
async fn adapt_stream(
    session: Arc<Session>,
    counters: Arc<StreamCounters>,
    mut ladder: congestion::Ladder,
) {
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(ADAPT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let Some(estimate) = counters.lowest_estimate() else {
            continue;
        };
        counters.estimate_bps.store(estimate, Ordering::Relaxed);
        let now_ms = started.elapsed().as_millis() as u64;
        if let Some(shape) = ladder.on_estimate(now_ms, estimate as f64) {
            tracing::debug!(session = %session.id(), estimate, kbps = shape.bitrate_kbps, fps = ladder.fps(), "stream follows the link");
            session.set_bitrate_kbps(shape.bitrate_kbps);
            session.set_frame_divisor(shape.fps_divisor);
            counters
                .target_kbps
                .store(u64::from(shape.bitrate_kbps), Ordering::Relaxed);
            counters
                .fps_now
                .store(u64::from(ladder.fps()), Ordering::Relaxed);
        }
    }
}

/// Node-wide counters of refused requests, by reason.
#[derive(Debug, Default, Serialize)]
pub struct RejectCounters {
    /// Bad or missing `Content-Type`, malformed SDP or fields.
    pub bad_request: AtomicU64,
    /// Missing, malformed, forged or expired token.
    pub unauthorized: AtomicU64,
    /// A valid token for another node or session.
    pub forbidden: AtomicU64,
    /// Unknown session, viewer or game.
    pub not_found: AtomicU64,
    /// A packaged game that would not start: it exited, crashed or opened no window in time.
    pub game_failed: AtomicU64,
    /// Full, draining, or a part of the node (display, encoder) unavailable.
    pub unavailable: AtomicU64,
    /// A body over its size limit (a trickle-ICE fragment).
    pub too_large: AtomicU64,
}

type FrameSinks = Arc<Mutex<Vec<(String, mpsc::Sender<Arc<SessionFrame>>)>>>;
type AudioSinks = Arc<Mutex<Vec<(String, mpsc::Sender<Arc<crate::audio::AudioPacket>>)>>>;

struct LiveSession {
    session: Arc<Session>,
    claims: SessionClaims,
    codec: Codec,
    encoder: String,
    rtp_epoch: u32,
    // RTP timestamp of session time 0 on the audio track (48 kHz), when the session has sound.
    audio_rtp_epoch: Option<u32>,
    epoch_unix_ms: f64,
    viewers: HashMap<String, Viewer>,
    sinks: FrameSinks,
    audio_sinks: AudioSinks,
    counters: Arc<StreamCounters>,
    expiry: tokio::task::JoinHandle<()>,
    /// Follows the viewers' link estimates ([`adapt_stream`]).
    adaptation: tokio::task::JoinHandle<()>,
    /// The mode's full video bitrate, kbit/s.
    full_kbps: u32,
}

/// A summary of a live session, for `GET /sessions`.
#[derive(Debug, Clone, Serialize)]
pub struct LiveSessionInfo {
    /// Session id.
    pub session_id: String,
    /// Game.
    pub game: String,
    /// Viewers attached.
    pub viewers: usize,
    /// Promised width, px.
    pub width: u32,
    /// Promised height, px.
    pub height: u32,
    /// Promised frame rate.
    pub fps: u32,
    /// Session counters.
    pub stats: crate::session::SessionStats,
    /// Token expiry.
    pub expires: String,
    /// The session token (proof of placement for the indexer); never listed.
    #[serde(skip)]
    pub token: String,
    /// The latest delivery receipt the player signed and the node could match; never listed.
    #[serde(skip)]
    pub receipt: Option<pixelgrid_proto::indexer::v1::DeliveryReceipt>,
}

/// What `POST /dev/sessions` returns.
#[derive(Debug, Clone, Serialize)]
pub struct DevSession {
    /// New session id.
    pub session_id: String,
    /// Token for it.
    pub token: String,
    /// Where to POST the offer (path on this node).
    pub whep_url: String,
}

/// How the node is set up for streaming.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// This node's id; tokens must name it.
    pub node_id: String,
    /// WebRTC settings.
    pub peer: PeerSettings,
    /// Tokens signed by the node itself (`--insecure-dev`) live this long.
    pub dev_token_ttl: Duration,
    /// Encoder threads per session.
    pub encoder_threads: u32,
    /// Most sessions this node runs at once.
    pub max_sessions: usize,
    /// The node's identity key, to answer the indexers' probes (none in dev mode).
    pub identity: Option<pixelgrid_proto::identity::NodeKey>,
}

/// Live sessions and how to admit new ones; see the module docs.
pub struct StreamNode {
    host: Arc<SessionHost>,
    settings: StreamSettings,
    verifier: TokenVerifier,
    dev_signer: Option<TokenSigner>,
    sessions: tokio::sync::Mutex<HashMap<String, LiveSession>>,
    /// Refused requests by reason.
    pub rejects: RejectCounters,
    /// Players' delivery receipts kept and refused, all sessions.
    pub receipts: Arc<ReceiptCounters>,
    /// What became of this node's signed reports to the indexers.
    pub reports: Arc<crate::reporter::ReportCounters>,
    /// Peer connections not yet freed (viewers connected, connecting, or leaking).
    pub peer_connections: Arc<std::sync::atomic::AtomicU64>,
    gone: mpsc::UnboundedSender<(String, String)>,
    draining: std::sync::atomic::AtomicBool,
    /// Sessions this node dropped (their game, renderer or encoder stopped on its own), not yet
    /// reported to the indexers.
    dropped: std::sync::Mutex<Vec<String>>,
    /// The same sessions with why, not yet told to the orchestrator.
    ended: std::sync::Mutex<Vec<(String, String)>>,
    /// Sessions whose game is starting (each holds a slot, outside the sessions lock).
    starting: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Sessions that ended here, with their token's expiry (Unix s): a token starts one
    /// session, once, so these are refused until the token would have expired anyway.
    finished: std::sync::Mutex<HashMap<String, u64>>,
}

/// Players' delivery receipts this node kept (signed by the session's player, matching what it
/// sent) and refused.
#[derive(Debug, Default)]
pub struct ReceiptCounters {
    /// Kept for the reports.
    pub kept: AtomicU64,
    /// Refused (see [`receipts::ReceiptRefused`]).
    pub refused: AtomicU64,
}

/// Most viewers of one session (one controls, the rest watch).
pub const MAX_VIEWERS: usize = 4;
/// Most ICE candidates in one trickle-ICE fragment, and trickled to one viewer in all.
pub const MAX_CANDIDATES_PER_FRAGMENT: usize = 32;
/// See [`MAX_CANDIDATES_PER_FRAGMENT`].
pub const MAX_CANDIDATES_PER_VIEWER: usize = 128;
/// How long an ended session whose token this node never saw is remembered (longer than any
/// session token lives).
const FINISHED_UNKNOWN_EXPIRY_S: u64 = 24 * 3600;
/// Most ended sessions remembered; past it the ones expiring soonest are forgotten first.
const MAX_FINISHED: usize = 100_000;

impl std::fmt::Debug for StreamNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamNode")
            .field("node_id", &self.settings.node_id)
            .finish()
    }
}

impl StreamNode {
    /// A node that trusts tokens from `verifier`. With `dev_signer` the node also signs its own
    /// (`--insecure-dev`). Must be called inside a tokio runtime.
    pub fn new(
        host: Arc<SessionHost>,
        settings: StreamSettings,
        verifier: TokenVerifier,
        dev_signer: Option<TokenSigner>,
    ) -> Arc<Self> {
        let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<(String, String)>();
        let node = Arc::new(Self {
            host,
            settings,
            verifier,
            dev_signer,
            sessions: tokio::sync::Mutex::new(HashMap::new()),
            rejects: RejectCounters::default(),
            receipts: Arc::default(),
            reports: Arc::default(),
            peer_connections: Arc::default(),
            gone: gone_tx,
            draining: std::sync::atomic::AtomicBool::new(false),
            dropped: std::sync::Mutex::new(Vec::new()),
            ended: std::sync::Mutex::new(Vec::new()),
            starting: std::sync::Mutex::default(),
            finished: std::sync::Mutex::default(),
        });
        // Watchdog: a session whose thread ended by itself was dropped by this node; its players
        // are let go and the indexers told (it is refunded).
        let weak = Arc::downgrade(&node);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                node.drop_stopped_sessions().await;
            }
        });
        let weak = Arc::downgrade(&node);
        tokio::spawn(async move {
            while let Some((session, viewer)) = gone_rx.recv().await {
                let Some(node) = weak.upgrade() else { return };
                node.remove_viewer(&session, &viewer, "connection closed or failed")
                    .await;
            }
        });
        node
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.settings.node_id
    }

    /// Answers an indexer's probe: this node's signature over the nonce, or `None` without an
    /// identity key.
    pub fn answer_probe(&self, nonce: &[u8]) -> Option<(String, Vec<u8>)> {
        let key = self.settings.identity.as_ref()?;
        let sig = key.sign(&pixelgrid_proto::identity::probe_message(nonce));
        Some((key.node_id(), sig.signature))
    }

    /// True when the node signs its own tokens.
    pub fn dev_mode(&self) -> bool {
        self.dev_signer.is_some()
    }

    /// Checks a bearer token for `session_id` on this node.
    pub fn authorize(
        &self,
        token: &str,
        session_id: &str,
    ) -> Result<SessionClaims, pixelgrid_proto::token::TokenError> {
        use pixelgrid_proto::token::TokenError;
        let claims = self.verifier.verify(token, unix_s())?;
        if claims.nid != self.settings.node_id {
            return Err(TokenError::WrongNode(claims.nid));
        }
        if claims.sid != session_id {
            return Err(TokenError::WrongSession(claims.sid));
        }
        if self.has_finished(&claims.sid) {
            return Err(TokenError::SessionEnded(claims.sid));
        }
        Ok(claims)
    }

    fn has_finished(&self, session_id: &str) -> bool {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(session_id)
    }

    /// Remembers that `claims`' session ended, so its token starts nothing again.
    fn remember_finished(&self, claims: &SessionClaims) {
        self.remember_finished_until(
            &claims.sid,
            parse_rfc3339(&claims.exp).unwrap_or(unix_s() + FINISHED_UNKNOWN_EXPIRY_S),
        );
    }

    fn remember_finished_until(&self, session_id: &str, expires_unix_s: u64) {
        let now = unix_s();
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        finished.retain(|_, exp| *exp > now);
        if finished.len() >= MAX_FINISHED {
            let mut by_expiry: Vec<(u64, String)> = finished
                .iter()
                .map(|(id, exp)| (*exp, id.clone()))
                .collect();
            by_expiry.sort();
            for (_, id) in by_expiry.iter().take(MAX_FINISHED / 10) {
                finished.remove(id);
            }
        }
        finished.insert(session_id.to_owned(), expires_unix_s);
    }

    /// Creates a session token signed by this node (`--insecure-dev` only).
    pub fn dev_session(&self, game: &str, mode: VideoMode) -> Result<DevSession> {
        let signer = self
            .dev_signer
            .as_ref()
            .ok_or_else(|| Error::invalid("mode", "dev sessions need --insecure-dev"))?;
        self.host.check_game(game, mode)?;
        let session_id = random_id();
        let now = unix_s();
        let claims = SessionClaims {
            sid: session_id.clone(),
            nid: self.settings.node_id.clone(),
            game: game.to_owned(),
            width: mode.width,
            height: mode.height,
            fps: mode.fps,
            iat: format_rfc3339(now),
            exp: format_rfc3339(now + self.settings.dev_token_ttl.as_secs().max(1)),
            aud: self.settings.node_id.clone(),
            nbf: format_rfc3339(now),
            pk: String::new(),
            ..Default::default()
        };
        Ok(DevSession {
            whep_url: format!("/whep/{session_id}"),
            token: signer.sign(&claims),
            session_id,
        })
    }

    /// Adds a viewer to the session the token names (starting the session if it is not live) and
    /// returns (viewer id, answer SDP).
    pub async fn add_viewer(
        self: &Arc<Self>,
        claims: SessionClaims,
        token: &str,
        offer: String,
    ) -> Result<(String, String)> {
        let codec = peer::codec_for_offer(&offer).ok_or_else(|| {
            Error::invalid(
                "sdp",
                "the offer has no H.264 or VP8 video this node can send",
            )
        })?;
        // The slow parts (a game's start, ICE gathering) run without the sessions lock, so
        // heartbeats, metrics and other players never wait behind one launch.
        let start_here = {
            let sessions = self.sessions.lock().await;
            if self.has_finished(&claims.sid) {
                // It ended while this offer was on its way in.
                return Err(Error::Unavailable(format!(
                    "session {} has ended; launch again",
                    claims.sid
                )));
            }
            if sessions.contains_key(&claims.sid) {
                false
            } else {
                let mut starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
                if starting.contains(&claims.sid) {
                    return Err(Error::Unavailable(
                        "this session is still starting; offer again in a moment".into(),
                    ));
                }
                if self.is_draining() {
                    return Err(Error::Unavailable(
                        "this node is draining and takes no new sessions".into(),
                    ));
                }
                if sessions.len() + starting.len() >= self.settings.max_sessions {
                    return Err(Error::Unavailable(format!(
                        "this node is full ({} sessions)",
                        self.settings.max_sessions
                    )));
                }
                starting.insert(claims.sid.clone());
                true
            }
        };
        if start_here {
            let started = self.start_session(&claims, codec).await;
            self.starting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&claims.sid);
            self.sessions
                .lock()
                .await
                .insert(claims.sid.clone(), started?);
        }
        let viewer_id = random_id();
        let ctx = {
            let sessions = self.sessions.lock().await;
            let live = sessions.get(&claims.sid).ok_or_else(|| {
                Error::Unavailable("the session ended before this viewer could join".into())
            })?;
            live.counters
                .receipts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_token(token);
            if live.viewers.len() >= MAX_VIEWERS {
                return Err(Error::Unavailable(format!(
                    "session {} has its {MAX_VIEWERS} viewers",
                    claims.sid
                )));
            }
            ViewerContext {
                session: Arc::clone(&live.session),
                session_id: claims.sid.clone(),
                codec: live.codec,
                encoder: live.encoder.clone(),
                width: claims.width,
                height: claims.height,
                fps: claims.fps,
                full_kbps: live.full_kbps,
                rtp_epoch: live.rtp_epoch,
                audio_rtp_epoch: live.audio_rtp_epoch,
                epoch_unix_ms: live.epoch_unix_ms,
                counters: Arc::clone(&live.counters),
                gone: self.gone.clone(),
                controls: Arc::default(),
                receipts: Arc::clone(&self.receipts),
                peer_connections: Arc::clone(&self.peer_connections),
            }
        };
        let opened = peer::open(viewer_id.clone(), offer, ctx, &self.settings.peer).await;
        let mut sessions = self.sessions.lock().await;
        let (answer, viewer) = match opened {
            Ok(v) => v,
            Err(e) => {
                if let Some(live) = sessions.get(&claims.sid) {
                    live.counters.forget_viewer(&viewer_id);
                }
                if sessions
                    .get(&claims.sid)
                    .is_some_and(|live| live.viewers.is_empty())
                {
                    let dead = sessions.remove(&claims.sid).expect("present");
                    drop(sessions);
                    close_session(dead, "first viewer failed to connect").await;
                }
                return Err(e);
            }
        };
        let Some(live) = sessions.get_mut(&claims.sid) else {
            drop(sessions);
            viewer.close().await;
            return Err(Error::Unavailable(
                "the session ended while this viewer was joining".into(),
            ));
        };
        if live.viewers.len() >= MAX_VIEWERS {
            // Others joined while this one was connecting.
            live.counters.forget_viewer(&viewer_id);
            drop(sessions);
            viewer.close().await;
            return Err(Error::Unavailable(format!(
                "session {} has its {MAX_VIEWERS} viewers",
                claims.sid
            )));
        }
        live.sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((viewer_id.clone(), viewer.frames.clone()));
        if let Some(audio) = &viewer.audio {
            live.audio_sinks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((viewer_id.clone(), audio.clone()));
        }
        // The first viewer drives the game; the rest watch (until the driver leaves).
        let controls = !live
            .viewers
            .values()
            .any(|v| v.controls.load(Ordering::Relaxed));
        viewer.controls.store(controls, Ordering::Relaxed);
        live.viewers.insert(viewer_id.clone(), viewer);
        tracing::info!(session = %claims.sid, viewer = %viewer_id, controls, "viewer joined");
        Ok((viewer_id, answer))
    }

    async fn start_session(
        self: &Arc<Self>,
        claims: &SessionClaims,
        codec: Codec,
    ) -> Result<LiveSession> {
        let mode = VideoMode::new(claims.width, claims.height, claims.fps)?;
        let mut settings = EncoderSettings::for_mode(mode, codec);
        settings.threads = self.settings.encoder_threads;
        let full_kbps = settings.bitrate_kbps;
        let config = SessionConfig {
            id: claims.sid.clone(),
            game: claims.game.clone(),
            encoder: settings,
        };
        let sinks: FrameSinks = Arc::default();
        let counters = Arc::new(StreamCounters {
            receipts: Mutex::new(receipts::ReceiptBook::new(&claims.sid, &claims.pk)),
            ..StreamCounters::default()
        });
        let (frame_sinks, frame_counters) = (Arc::clone(&sinks), Arc::clone(&counters));
        let on_frame = move |frame: SessionFrame| {
            let frame = Arc::new(frame);
            for (_, tx) in frame_sinks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                if tx.try_send(Arc::clone(&frame)).is_err() {
                    frame_counters
                        .frames_dropped_send
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        let audio_sinks: AudioSinks = Arc::default();
        let packet_sinks = Arc::clone(&audio_sinks);
        let on_audio = move |packet: crate::audio::AudioPacket| {
            let packet = Arc::new(packet);
            for (_, tx) in packet_sinks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
            {
                let _ = tx.try_send(Arc::clone(&packet));
            }
        };
        let host = Arc::clone(&self.host);
        let encoder = host.encoder_for(codec)?.candidate.element.to_owned();
        let session = tokio::task::spawn_blocking(move || {
            host.start_session_with_audio(&config, on_frame, Some(Box::new(on_audio)))
        })
        .await
        .map_err(|e| Error::Session {
            id: claims.sid.clone(),
            reason: e.to_string(),
        })??;
        let expires = parse_rfc3339(&claims.exp).unwrap_or(0);
        let weak = Arc::downgrade(self);
        let sid = claims.sid.clone();
        let expiry = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(expires.saturating_sub(unix_s()))).await;
            if let Some(node) = weak.upgrade() {
                node.end_session(&sid, "token expired").await;
            }
        });
        tracing::info!(session = %claims.sid, game = %claims.game, %codec, %encoder, "session started");
        let session = Arc::new(session);
        counters
            .target_kbps
            .store(u64::from(full_kbps), Ordering::Relaxed);
        counters
            .fps_now
            .store(u64::from(claims.fps), Ordering::Relaxed);
        let adaptation = tokio::spawn(adapt_stream(
            Arc::clone(&session),
            Arc::clone(&counters),
            congestion::Ladder::new(full_kbps, claims.fps),
        ));
        Ok(LiveSession {
            audio_rtp_epoch: session.has_audio().then(random_u32),
            epoch_unix_ms: session.epoch_unix_ms(),
            session,
            claims: claims.clone(),
            codec,
            encoder,
            rtp_epoch: random_u32(),
            viewers: HashMap::new(),
            sinks,
            audio_sinks,
            counters,
            expiry,
            adaptation,
            full_kbps,
        })
    }

    /// Adds a trickled ICE candidate (`a=candidate:` lines of an SDP fragment) to a viewer.
    pub async fn add_candidates(
        &self,
        session_id: &str,
        viewer_id: &str,
        sdpfrag: &str,
    ) -> Result<bool> {
        let (pc, trickled) = {
            let sessions = self.sessions.lock().await;
            match sessions
                .get(session_id)
                .and_then(|s| s.viewers.get(viewer_id))
            {
                Some(v) => (Arc::clone(&v.pc), Arc::clone(&v.trickled)),
                None => return Ok(false),
            }
        };
        let mid = sdpfrag
            .lines()
            .find_map(|l| l.trim().strip_prefix("a=mid:"))
            .map(str::to_owned);
        let count = sdpfrag
            .lines()
            .filter(|l| l.trim().starts_with("a=candidate:"))
            .count();
        if count > MAX_CANDIDATES_PER_FRAGMENT {
            return Err(Error::invalid(
                "sdpfrag",
                format!("{count} candidates; at most {MAX_CANDIDATES_PER_FRAGMENT} per fragment"),
            ));
        }
        if trickled.fetch_add(count as u32, Ordering::Relaxed) as usize + count
            > MAX_CANDIDATES_PER_VIEWER
        {
            return Err(Error::invalid(
                "sdpfrag",
                format!("more than {MAX_CANDIDATES_PER_VIEWER} candidates for one viewer"),
            ));
        }
        for line in sdpfrag.lines().filter_map(|l| l.trim().strip_prefix("a=")) {
            // A trickled passive TCP candidate makes webrtc-rs open a TCP connection to wherever
            // it names: a player could aim the node at its own network. Players that reach the
            // node over TCP connect to it (active), so it never needs one.
            if line.starts_with("candidate:") && is_passive_tcp(line) {
                continue;
            }
            if line.starts_with("candidate:") {
                let init = rtc::peer_connection::transport::RTCIceCandidateInit {
                    candidate: line.to_owned(),
                    sdp_mid: mid.clone(),
                    ..Default::default()
                };
                pc.add_ice_candidate(init)
                    .await
                    .map_err(|e| Error::invalid("candidate", e.to_string()))?;
            }
        }
        Ok(true)
    }

    /// Removes one viewer; the session ends with its last viewer. False when there was none.
    pub async fn remove_viewer(&self, session_id: &str, viewer_id: &str, reason: &str) -> bool {
        let mut sessions = self.sessions.lock().await;
        let Some(live) = sessions.get_mut(session_id) else {
            return false;
        };
        let Some(viewer) = live.viewers.remove(viewer_id) else {
            return false;
        };
        live.counters.forget_viewer(viewer_id);
        live.sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _)| id != viewer_id);
        live.audio_sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _)| id != viewer_id);
        if viewer.controls.load(Ordering::Relaxed)
            && let Some(next) = live.viewers.values().next()
        {
            next.controls.store(true, Ordering::Relaxed);
        }
        let last = live.viewers.is_empty();
        let dead = if last {
            sessions.remove(session_id)
        } else {
            None
        };
        if let Some(dead) = &dead {
            self.remember_finished(&dead.claims);
        }
        drop(sessions);
        tracing::info!(session = %session_id, viewer = %viewer_id, %reason, "viewer left");
        viewer.close().await;
        if let Some(dead) = dead {
            close_session(dead, "last viewer left").await;
        }
        true
    }

    /// Ends a session and every viewer of it. False when it was not live.
    pub async fn end_session(&self, session_id: &str, reason: &str) -> bool {
        let dead = self.sessions.lock().await.remove(session_id);
        match dead {
            Some(dead) => {
                self.remember_finished(&dead.claims);
                close_session(dead, reason).await;
                true
            }
            None => {
                // Ended before its player ever reached this node: its token must not start it.
                self.remember_finished_until(session_id, unix_s() + FINISHED_UNKNOWN_EXPIRY_S);
                false
            }
        }
    }

    /// Live sessions now.
    pub async fn sessions(&self) -> Vec<LiveSessionInfo> {
        self.sessions
            .lock()
            .await
            .iter()
            .map(|(id, s)| {
                let (token, receipt) = s
                    .counters
                    .receipts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .for_report();
                LiveSessionInfo {
                    session_id: id.clone(),
                    game: s.claims.game.clone(),
                    viewers: s.viewers.len(),
                    width: s.claims.width,
                    height: s.claims.height,
                    fps: s.claims.fps,
                    stats: s.session.stats(),
                    expires: s.claims.exp.clone(),
                    token,
                    receipt,
                }
            })
            .collect()
    }

    /// The node's metrics in Prometheus text format.
    pub async fn metrics(&self) -> String {
        use pixelgrid_proto::metrics::{Exposition, Sample};
        let sessions = self.sessions.lock().await;
        let per_session = |f: &dyn Fn(&LiveSession) -> f64| -> Vec<Sample<'static>> {
            sessions
                .iter()
                .map(|(id, s)| (vec![("session", metrics_label(id))], f(s)))
                .collect()
        };
        let encode_p50 = |s: &LiveSession| {
            let mut t: Vec<f64> = s
                .session
                .counters()
                .recent_timings()
                .iter()
                .map(|t| t.encode_ms)
                .collect();
            t.sort_by(f64::total_cmp);
            t.get(t.len() / 2).copied().unwrap_or(0.0) / 1000.0
        };
        let r = &self.rejects;
        let reject = |reason: &'static str, c: &AtomicU64| {
            (
                vec![("reason", reason.to_owned())],
                c.load(Ordering::Relaxed) as f64,
            )
        };
        Exposition::new()
            .gauge(
                "pixelgrid_edge_sessions",
                "Live game sessions on this node.",
                &[(vec![], sessions.len() as f64)],
            )
            .gauge(
                "pixelgrid_edge_session_slots",
                "Sessions this node holds at most.",
                &[(vec![], self.settings.max_sessions as f64)],
            )
            .gauge(
                "pixelgrid_edge_draining",
                "1 while the node takes no new sessions.",
                &[(vec![], f64::from(u8::from(self.is_draining())))],
            )
            .gauge(
                "pixelgrid_edge_viewers",
                "Players connected, per session.",
                &per_session(&|s| s.viewers.len() as f64),
            )
            .counter(
                "pixelgrid_edge_frames_encoded_total",
                "Frames encoded, per session (rate() gives the frame rate).",
                &per_session(&|s| s.session.stats().frames_encoded as f64),
            )
            .counter(
                "pixelgrid_edge_frames_sent_total",
                "Frames sent to players, per session.",
                &per_session(&|s| s.counters.frames_sent.load(Ordering::Relaxed) as f64),
            )
            .counter(
                "pixelgrid_edge_sent_bytes_total",
                "RTP payload bytes sent to players, per session (rate() × 8 gives the bitrate).",
                &per_session(&|s| s.counters.bytes_sent.load(Ordering::Relaxed) as f64),
            )
            .gauge(
                "pixelgrid_edge_link_estimate_bytes_per_second",
                "Congestion-control estimate of the link to the session's players (the lowest of its viewers'); 0 before the first feedback.",
                &per_session(&|s| s.counters.estimate_bps.load(Ordering::Relaxed) as f64 / 8.0),
            )
            .gauge(
                "pixelgrid_edge_encoder_target_bytes_per_second",
                "The encoder's target rate, set from the link estimate (× 8 for its bitrate).",
                &per_session(&|s| s.counters.target_kbps.load(Ordering::Relaxed) as f64 * 125.0),
            )
            .counter(
                "pixelgrid_edge_retransmissions_refused_total",
                "Retransmissions players asked for beyond their share of the link, not sent, per session.",
                &per_session(&|s| s.counters.retransmits_dropped.load(Ordering::Relaxed) as f64),
            )
            .gauge(
                "pixelgrid_edge_stream_fps",
                "Frame rate the session is encoded at (the congestion ladder halves the mode's on a poor link).",
                &per_session(&|s| s.counters.fps_now.load(Ordering::Relaxed) as f64),
            )
            .gauge(
                "pixelgrid_edge_encode_seconds",
                "Median encode time of the session's recent frames.",
                &per_session(&encode_p50),
            )
            .counter(
                "pixelgrid_edge_input_dropped_total",
                "Player input events and messages dropped by the gate, per session.",
                &per_session(&|s| s.counters.input_dropped.load(Ordering::Relaxed) as f64),
            )
            .counter(
                "pixelgrid_edge_reports_total",
                "Signed reports to the indexers (one per indexer), by what became of them.",
                &[
                    ("accepted", &self.reports.accepted),
                    ("replayed", &self.reports.replayed),
                    ("refused", &self.reports.refused),
                    ("dropped", &self.reports.dropped),
                ]
                .map(|(outcome, c)| {
                    (
                        vec![("outcome", outcome.to_owned())],
                        c.load(Ordering::Relaxed) as f64,
                    )
                }),
            )
            .gauge(
                "pixelgrid_edge_reports_waiting",
                "Reports waiting in the outboxes for an indexer's acknowledgement.",
                &[(vec![], self.reports.waiting.load(Ordering::Relaxed) as f64)],
            )
            .gauge(
                "pixelgrid_edge_peer_connections",
                "WebRTC peer connections not yet freed: viewers connected or connecting (more than that is a leak).",
                &[(
                    vec![],
                    self.peer_connections.load(Ordering::Relaxed) as f64,
                )],
            )
            .counter(
                "pixelgrid_edge_receipts_total",
                "Players' signed delivery receipts, kept for the indexers' reports or refused.",
                &[
                    (
                        vec![("outcome", "kept".into())],
                        self.receipts.kept.load(Ordering::Relaxed) as f64,
                    ),
                    (
                        vec![("outcome", "refused".into())],
                        self.receipts.refused.load(Ordering::Relaxed) as f64,
                    ),
                ],
            )
            .counter(
                "pixelgrid_edge_requests_refused_total",
                "Signalling requests refused, by reason.",
                &[
                    reject("bad_request", &r.bad_request),
                    reject("too_large", &r.too_large),
                    reject("unauthorized", &r.unauthorized),
                    reject("forbidden", &r.forbidden),
                    reject("not_found", &r.not_found),
                    reject("game_failed", &r.game_failed),
                    reject("unavailable", &r.unavailable),
                ],
            )
            .finish()
    }

    /// Ends the sessions whose thread stopped on its own and records them as dropped.
    async fn drop_stopped_sessions(&self) {
        let stopped: Vec<LiveSession> = {
            let mut sessions = self.sessions.lock().await;
            let ids: Vec<String> = sessions
                .iter()
                .filter(|(_, s)| s.session.is_finished())
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| sessions.remove(id)).collect()
        };
        for s in stopped {
            let why = s
                .session
                .failure()
                .unwrap_or_else(|| "its thread ended".into());
            let id = s.claims.sid.clone();
            self.remember_finished(&s.claims);
            tracing::warn!(session = %id, reason = %why, "session dropped by this node");
            self.dropped
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(id.clone());
            self.ended
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((id, why.clone()));
            for v in s.viewers.values() {
                v.say_ended(&why).await;
            }
            // The message goes out with the SCTP association's next flush; closing at once
            // could drop it.
            tokio::time::sleep(Duration::from_millis(250)).await;
            close_session(s, &format!("dropped: {why}")).await;
        }
    }

    /// Sessions this node dropped since the last call, with why (each once), for the
    /// orchestrator.
    pub fn take_ended(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.ended.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Sessions this node dropped since the last call (each once), for the reporter.
    pub fn take_dropped(&self) -> Vec<String> {
        std::mem::take(&mut *self.dropped.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Ids of the live sessions.
    pub async fn session_ids(&self) -> Vec<String> {
        self.sessions.lock().await.keys().cloned().collect()
    }

    /// Sessions whose player connected since the last call (each reported once).
    pub async fn take_newly_connected(&self) -> Vec<String> {
        self.sessions
            .lock()
            .await
            .iter()
            .filter(|(_, s)| {
                s.counters.player_connected.load(Ordering::Relaxed)
                    && !s.counters.connection_reported.swap(true, Ordering::Relaxed)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Stops (or resumes) taking new sessions; running ones go on.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// True while draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Sessions this node can still start.
    pub async fn free_slots(&self) -> usize {
        self.settings
            .max_sessions
            .saturating_sub(self.sessions.lock().await.len())
    }

    /// Ends every session (shutdown).
    pub async fn close_all(&self) {
        let all: Vec<_> = self.sessions.lock().await.drain().map(|(_, s)| s).collect();
        for s in all {
            close_session(s, "node shutting down").await;
        }
    }
}

async fn close_session(live: LiveSession, reason: &str) {
    live.expiry.abort();
    live.adaptation.abort();
    live.sinks.lock().unwrap_or_else(|p| p.into_inner()).clear();
    live.audio_sinks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    for (_, v) in live.viewers {
        v.close().await;
    }
    let session = live.session;
    let id = live.claims.sid.clone();
    // Joining the session thread blocks for up to a frame; keep it off the async workers.
    let _ = tokio::task::spawn_blocking(move || session.shutdown()).await;
    tracing::info!(session = %id, %reason, "session ended");
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_ne_bytes(b)
}

fn random_id() -> String {
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    pixelgrid_proto::token::hex(&b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn passive_tcp_candidates_are_told_apart() {
        assert!(super::is_passive_tcp(
            "candidate:1 1 tcp 2124414975 10.0.0.5 2379 typ host tcptype passive"
        ));
        assert!(super::is_passive_tcp(
            "candidate:1 1 TCP 1 169.254.169.254 80 typ host tcptype PASSIVE"
        ));
        assert!(!super::is_passive_tcp(
            "candidate:1 1 tcp 2128609279 127.0.0.1 9 typ host tcptype active"
        ));
        assert!(!super::is_passive_tcp(
            "candidate:2 1 udp 2130706431 127.0.0.1 5000 typ host"
        ));
    }
}
