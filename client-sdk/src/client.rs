//! [`Client`] and [`Session`]: launch a game through the orchestrator and play it.
//!
//! `launch` asks the orchestrator for candidates (`CreateSession`), measures the round trip to
//! each node's `/probe` concurrently, lets the orchestrator place the session with those
//! measurements (`ChooseNode`: a slot reserved atomically, a signed token), then connects to the
//! chosen node over WHEP. A supervisor task watches the node: when neither video nor a message
//! on the data channel has arrived for `node_lost_after`, the node is taken as lost, the session is launched again (excluding that
//! node) and frames resume on the same [`Session`], with [`Event::NodeLost`] and
//! [`Event::Reconnected`] saying so.

use crate::decoder::{Codec, FrameFormat};
use crate::player::{Connection, Sinks, unix_ms};
use crate::stats::{Stats, StatsMeter};
use crate::whep::split_url;
use crate::{Error, Result};
use pixelgrid_proto::input::InputEvent;
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_proto::orchestrator::v1::orchestrator_client::OrchestratorClient;
use pixelgrid_proto::types::v1 as types;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use webrtc::data_channel::DataChannel;

/// A decoded picture.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Width, px.
    pub width: u32,
    /// Height, px.
    pub height: u32,
    /// Pixel layout of `data`.
    pub format: FrameFormat,
    /// Pixels, rows top to bottom.
    pub data: Vec<u8>,
    /// The RTP timestamp it arrived with.
    pub rtp_timestamp: u32,
    /// When the node captured it (node's clock, Unix ms), once the node's `hello` arrived.
    pub capture_unix_ms: Option<f64>,
    /// When it came out of the decoder here, Unix ms.
    pub decoded_unix_ms: f64,
}

/// An encoded access unit (H.264 Annex B, or a VP8 frame), for apps with their own decoder.
#[derive(Debug, Clone)]
pub struct AccessUnit {
    /// The bytes.
    pub data: Vec<u8>,
    /// True for a keyframe.
    pub keyframe: bool,
    /// The RTP timestamp it arrived with.
    pub rtp_timestamp: u32,
    /// When the node captured it, Unix ms, once known.
    pub capture_unix_ms: Option<f64>,
}

/// What happened to a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Connected to a node.
    Connected {
        /// Node id.
        node_id: String,
        /// Session id.
        session_id: String,
        /// Measured round trip to the node, ms.
        rtt_ms: u32,
    },
    /// The stream runs below half its frame rate.
    Degraded {
        /// What is wrong.
        reason: String,
    },
    /// The node stopped sending.
    NodeLost {
        /// Node id.
        node_id: String,
        /// Why it is taken as lost.
        reason: String,
    },
    /// Playing again, on another node.
    Reconnected {
        /// The new node.
        node_id: String,
        /// The new session id.
        session_id: String,
        /// From losing the old node to connected to the new one, ms.
        after_ms: u64,
    },
    /// The session is over.
    Ended {
        /// Why.
        reason: String,
    },
}

/// How to launch.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The game's version (from [`Client::games`]); `None` takes any version a node has.
    pub version: Option<String>,
    /// Width, px.
    pub width: u32,
    /// Height, px.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Codecs this player decodes, most preferred first.
    pub codecs: Vec<Codec>,
    /// Player's region code ("" = any).
    pub region: String,
    /// Refuse nodes farther than this, ms (0 = the orchestrator's policy).
    pub max_latency_ms: u32,
    /// Decoded frame layout.
    pub frame_format: FrameFormat,
    /// Also hand out the encoded access units ([`Session::next_access_unit`]).
    pub access_units: bool,
    /// Receive and decode the game's sound ([`Session::next_audio`]); false leaves the audio
    /// m-line out of the offer, and the node sends none.
    pub audio: bool,
    /// Re-launch on another node when the node is lost.
    pub reconnect: bool,
    /// Nothing from the node (no video, no message on the data channel) for this long means the
    /// node is lost. A node that still answers while its game holds the pictures back (a
    /// packaged game loading its data) is slow, not lost: [`Event::Degraded`] says so. Nodes
    /// say they are alive on the data channel every 100 ms, so 500 ms (the default) is five
    /// missed in a row.
    pub node_lost_after: Duration,
    /// Reach the node only through the TURN relays the orchestrator hands out (as a player
    /// behind a NAT that lets nothing else through would); fails when it hands out none.
    pub relay_only: bool,
    /// Reach the node over ICE-TCP only, opening no UDP socket at all, as a player whose
    /// network blocks UDP would (nodes offer TCP candidates beside UDP ones).
    pub tcp_only: bool,
    /// Launch on this node only (hex id): what a checker does to watch one node's stream.
    pub node_id: Option<String>,
    /// Told each [`LaunchPhase`] as the launch (or a re-launch after a node loss) reaches it.
    pub on_phase: Option<LaunchObserver>,
}

/// How far a launch has come, for a "finding a node… connecting…" line on the player's screen.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LaunchPhase {
    /// CreateSession answered with this many candidate nodes; their round trips are measured
    /// next.
    Candidates {
        /// Candidates offered.
        count: usize,
    },
    /// ChooseNode reserved a slot on this node; the WHEP offer goes to it next.
    Chosen {
        /// The node (hex id).
        node_id: String,
    },
    /// The node answered the offer: pictures follow.
    Connected {
        /// The node (hex id).
        node_id: String,
    },
}

/// Called with each [`LaunchPhase`], on the launching task: the launch goes on when it returns,
/// so keep it short (a test may hold a launch at a phase with it).
#[derive(Clone)]
pub struct LaunchObserver(pub Arc<dyn Fn(&LaunchPhase) + Send + Sync>);

impl std::fmt::Debug for LaunchObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LaunchObserver")
    }
}

impl Default for LaunchOptions {
    fn default() -> Self {
        Self {
            version: None,
            width: 1280,
            height: 720,
            fps: 60,
            codecs: vec![Codec::H264],
            region: String::new(),
            max_latency_ms: 0,
            frame_format: FrameFormat::Rgba,
            access_units: false,
            audio: true,
            reconnect: true,
            node_lost_after: Duration::from_millis(500),
            relay_only: false,
            tcp_only: false,
            node_id: None,
            on_phase: None,
        }
    }
}

/// A game the grid offers, as [`Client::games`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GameInfo {
    /// What to pass to [`Client::launch`].
    pub id: String,
    /// Its version (for [`LaunchOptions::version`]).
    pub version: String,
    /// Shown to players.
    pub name: String,
    /// Modes it plays in (`WIDTHxHEIGHT@FPS`); empty means any.
    pub modes: Vec<String>,
    /// Ready nodes that have it.
    pub ready_nodes: u32,
    /// Free slots on those nodes.
    pub free_slots: u32,
}

/// A fresh launch grant from a studio's backend, asked for once per launch (and re-launch).
pub type GrantSource = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String>> + Send>>
        + Send
        + Sync,
>;

/// What the client launches with.
#[derive(Clone, Default)]
enum Credentials {
    /// Nothing: the catalogue only.
    #[default]
    None,
    /// A studio's API key: the client mints its own grants. For a studio's servers and the
    /// operator's tools, never for a player's machine.
    ApiKey { key: String, player: String },
    /// Grants from the studio's backend.
    Grants(GrantSource),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::None => "None",
            Credentials::ApiKey { .. } => "ApiKey(…)",
            Credentials::Grants(_) => "Grants(…)",
        })
    }
}

/// A connection to the grid's orchestrator.
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    grpc: OrchestratorClient<tonic::transport::Channel>,
    credentials: Credentials,
}

/// `request` with `authorization: Bearer <credential>`.
fn authorised<T>(request: T, credential: &str) -> Result<tonic::Request<T>> {
    pixelgrid_proto::transport::with_bearer(request, credential).map_err(|reason| {
        Error::InvalidArgument {
            field: "credential",
            reason,
        }
    })
}

type ChannelSlot = Arc<Mutex<Option<Arc<dyn DataChannel>>>>;

/// Sends the player's input to the session's current node.
#[derive(Clone)]
pub struct InputSender {
    current: Arc<Mutex<ChannelSlot>>,
    started: Instant,
}

impl std::fmt::Debug for InputSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputSender").finish_non_exhaustive()
    }
}

impl InputSender {
    /// Sends events, in order, as one message.
    pub async fn send(&self, events: &[InputEvent]) -> Result<()> {
        let t = self.started.elapsed().as_secs_f64() * 1000.0;
        let events: Vec<serde_json::Value> = events
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("t".into(), t.into());
                }
                v
            })
            .collect();
        let text = serde_json::json!({"type": "input", "v": 1, "events": events}).to_string();
        self.send_text(&text).await
    }

    /// Asks the node to draw `nonce` (≤ 999,999,999) into every frame from now on: a checker's
    /// render challenge; read it back from decoded frames with
    /// [`pixelgrid_proto::challenge::read`]. Built-in games only.
    pub async fn challenge(&self, nonce: u32) -> Result<()> {
        let text = serde_json::json!({"type": "challenge", "v": 1, "nonce": nonce}).to_string();
        self.send_text(&text).await
    }

    async fn send_text(&self, text: &str) -> Result<()> {
        let slot = Arc::clone(&self.current.lock().unwrap_or_else(|p| p.into_inner()));
        let dc = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let dc = dc.ok_or_else(|| Error::Connection {
            node: "current".into(),
            reason: "the input channel is not open yet".into(),
        })?;
        dc.send_text(text).await.map_err(|e| Error::Connection {
            node: "current".into(),
            reason: format!("input: {e}"),
        })
    }

    /// Presses (`down`) or releases a key by DOM `KeyboardEvent.code` ("ArrowRight", "KeyW").
    pub async fn key(&self, code: &str, down: bool) -> Result<()> {
        self.send(&[InputEvent::Key {
            code: code.into(),
            down,
        }])
        .await
    }

    /// True once the input channel is open.
    pub fn is_open(&self) -> bool {
        let slot = Arc::clone(&self.current.lock().unwrap_or_else(|p| p.into_inner()));
        let channel = slot.lock().unwrap_or_else(|p| p.into_inner());
        channel.is_some()
    }
}

/// A playing session; see the module docs.
#[derive(Debug)]
pub struct Session {
    frames: tokio::sync::mpsc::Receiver<Frame>,
    units: Option<tokio::sync::mpsc::Receiver<AccessUnit>>,
    audio: Option<tokio::sync::mpsc::Receiver<crate::audio::AudioChunk>>,
    events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    input: InputSender,
    meter: Arc<Mutex<StatsMeter>>,
    current: Arc<Mutex<(String, String)>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    supervisor: tokio::task::JoinHandle<()>,
    launch_timings: LaunchTimings,
}

fn codec_of(c: Codec) -> types::VideoCodec {
    match c {
        Codec::H264 => types::VideoCodec::H264,
        Codec::Vp8 => types::VideoCodec::Vp8,
    }
}

/// Round trip to a candidate's probe (best of two), or `None` when it does not answer in a
/// second. The candidate's `probe_url` says how to reach it (`https://` for a node serving TLS);
/// an orchestrator that gives none means plain HTTP to its probe address.
async fn measure_rtt(candidate: &pb::Candidate) -> Option<u32> {
    let url = match &candidate.probe_url {
        u if !u.is_empty() => u.clone(),
        _ => format!("http://{}/probe", candidate.probe_address),
    };
    let (target, path) = split_url(&url).await.ok()?;
    let mut best: Option<u32> = None;
    for _ in 0..2 {
        let started = Instant::now();
        let r = pixelgrid_proto::http::request_to(
            &target,
            "GET",
            &path,
            &[],
            b"",
            Duration::from_secs(1),
        )
        .await
        .ok()?;
        if r.status >= 300 {
            return None;
        }
        let ms = started.elapsed().as_millis().max(1) as u32;
        best = Some(best.map_or(ms, |b| b.min(ms)));
    }
    best
}

/// Where a launch's time went, ms: the first placement of a session, in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LaunchTimings {
    /// Getting a launch grant (0 with an API key: minted on the way).
    pub grant_ms: f64,
    /// CreateSession: the candidates.
    pub create_session_ms: f64,
    /// Round trips to each candidate's probe (concurrent, best of two).
    pub probes_ms: f64,
    /// ChooseNode: the reservation and the session token.
    pub choose_node_ms: f64,
    /// The peer connection set up and its candidates gathered.
    pub offer_ms: f64,
    /// WHEP POST → answer: the node starts the session (game, renderer, encoder) meanwhile.
    pub answer_ms: f64,
}

/// A placed and connected session.
struct Placed {
    connection: Connection,
    rtt_ms: u32,
    timings: LaunchTimings,
}

impl Client {
    /// Connects to the orchestrator's gRPC endpoint (`http://host:50051`).
    pub async fn connect(orchestrator_url: &str) -> Result<Self> {
        // https:// is TLS (the CA from PIXELGRID_CA_FILE, or the system's roots).
        let grpc = OrchestratorClient::new(
            pixelgrid_proto::transport::connect(orchestrator_url)
                .await
                .map_err(Error::Orchestrator)?,
        );
        Ok(Self {
            url: orchestrator_url.to_owned(),
            grpc,
            credentials: Credentials::None,
        })
    }

    /// Launches with a studio's API key, minting a grant for `player` (the studio's id for
    /// them) per launch. For a studio's own servers, bots and tools: an API key never belongs
    /// on a player's machine — there, use [`Client::with_grant_source`].
    pub fn with_api_key(mut self, api_key: &str, player: &str) -> Self {
        self.credentials = Credentials::ApiKey {
            key: api_key.trim().to_owned(),
            player: player.to_owned(),
        };
        self
    }

    /// Launches with grants from `source` (typically a call to the studio's backend, which
    /// holds the API key and calls `CreateLaunchGrant`); it is called once per launch and per
    /// re-launch, since a grant starts one launch, once.
    pub fn with_grant_source(mut self, source: GrantSource) -> Self {
        self.credentials = Credentials::Grants(source);
        self
    }

    /// Mints a launch grant with this client's API key (what a studio's backend does).
    pub async fn create_grant(&self, player: &str, game: &str) -> Result<String> {
        let Credentials::ApiKey { key, .. } = &self.credentials else {
            return Err(Error::InvalidArgument {
                field: "credentials",
                reason: "minting a grant needs the studio's API key (Client::with_api_key)".into(),
            });
        };
        let r = self
            .grpc
            .clone()
            .create_launch_grant(authorised(
                pb::CreateLaunchGrantRequest {
                    player_id: player.to_owned(),
                    game: game.to_owned(),
                    ttl_s: 0,
                },
                key,
            )?)
            .await
            .map_err(|s| Error::Orchestrator(format!("{}: {}", self.url, s.message())))?;
        Ok(r.into_inner().grant)
    }

    /// A grant for one launch of `game`.
    async fn grant(&self, game: &str) -> Result<String> {
        match &self.credentials {
            Credentials::None => Err(Error::InvalidArgument {
                field: "credentials",
                reason: "launching needs a grant: Client::with_grant_source (players) or Client::with_api_key (a studio's servers)".into(),
            }),
            Credentials::ApiKey { player, .. } => self.create_grant(player, game).await,
            Credentials::Grants(source) => source().await,
        }
    }

    /// The grid's catalogue: each game and version some node has, with its modes and how many
    /// ready nodes offer it.
    pub async fn games(&self) -> Result<Vec<GameInfo>> {
        let r = self
            .grpc
            .clone()
            .list_games(pb::ListGamesRequest {})
            .await
            .map_err(|s| Error::Orchestrator(format!("{}: {}", self.url, s.message())))?
            .into_inner();
        Ok(r.games
            .into_iter()
            .map(|g| GameInfo {
                id: g.id,
                version: g.version,
                name: g.name,
                modes: g.modes,
                ready_nodes: g.ready_nodes,
                free_slots: g.free_slots,
            })
            .collect())
    }

    /// Launches `game` and starts playing it.
    pub async fn launch(&self, game: &str, options: LaunchOptions) -> Result<Session> {
        if options.codecs.is_empty() {
            return Err(Error::InvalidArgument {
                field: "codecs",
                reason: "name at least one codec".into(),
            });
        }
        let (frames_tx, frames) = tokio::sync::mpsc::channel(8);
        let (units_tx, units) = if options.access_units {
            let (tx, rx) = tokio::sync::mpsc::channel(32);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let meter = Arc::new(Mutex::new(StatsMeter::new()));
        let (audio_tx, audio) = if options.audio {
            // About two seconds of 20 ms packets.
            let (tx, rx) = tokio::sync::mpsc::channel(100);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let sinks = Sinks {
            frames: frames_tx,
            units: units_tx,
            audio: audio_tx,
            meter: Arc::clone(&meter),
            format: options.frame_format,
        };
        let placed = self.place(game, &options, &[], sinks.clone()).await?;
        let launch_timings = placed.timings;
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let _ = events_tx.send(Event::Connected {
            node_id: placed.connection.node_id.clone(),
            session_id: placed.connection.session_id.clone(),
            rtt_ms: placed.rtt_ms,
        });
        let input = InputSender {
            current: Arc::new(Mutex::new(placed.connection.channel())),
            started: Instant::now(),
        };
        let current = Arc::new(Mutex::new((
            placed.connection.node_id.clone(),
            placed.connection.session_id.clone(),
        )));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let supervisor = tokio::spawn(supervise(Supervisor {
            client: self.clone(),
            game: game.to_owned(),
            options,
            sinks,
            connection: placed.connection,
            events: events_tx,
            input: Arc::clone(&input.current),
            current: Arc::clone(&current),
            stop: stop_rx,
        }));
        Ok(Session {
            frames,
            units,
            audio,
            events,
            input,
            meter,
            current,
            stop: Some(stop_tx),
            supervisor,
            launch_timings,
        })
    }

    /// One placement: candidates, concurrent RTT probes, choice, connection.
    async fn place(
        &self,
        game: &str,
        options: &LaunchOptions,
        exclude: &[String],
        sinks: Sinks,
    ) -> Result<Placed> {
        let mut grpc = self.grpc.clone();
        let status = |s: tonic::Status| {
            Error::Orchestrator(format!(
                "{} (launching {game:?}): {}",
                self.url,
                s.message()
            ))
        };
        let tell = |p: LaunchPhase| {
            if let Some(o) = &options.on_phase {
                (o.0)(&p);
            }
        };
        let mut timings = LaunchTimings::default();
        let mut phase = Instant::now();
        let mut lap = move || {
            let ms = phase.elapsed().as_secs_f64() * 1e3;
            phase = Instant::now();
            ms
        };
        let grant = self.grant(game).await?;
        timings.grant_ms = lap();
        let launch = grpc
            .create_session(authorised(
                pb::CreateSessionRequest {
                    game: game.to_owned(),
                    player_region: Some(types::Region {
                        code: options.region.clone(),
                    }),
                    constraints: Some(pb::LaunchConstraints {
                        mode: Some(types::VideoMode {
                            width_px: options.width,
                            height_px: options.height,
                            fps: options.fps,
                        }),
                        codecs: options.codecs.iter().map(|c| codec_of(*c) as i32).collect(),
                        max_latency_ms: options.max_latency_ms,
                        max_micro_credits_per_minute: 0,
                        node_id: options.node_id.clone().unwrap_or_default(),
                    }),
                    max_candidates: 0,
                    game_version: options.version.clone().unwrap_or_default(),
                },
                &grant,
            )?)
            .await
            .map_err(status)?
            .into_inner();
        timings.create_session_ms = lap();
        tell(LaunchPhase::Candidates {
            count: launch.candidates.len(),
        });
        let mut probes = tokio::task::JoinSet::new();
        for c in launch.candidates {
            let Some(id) = c.node_id.as_ref().map(|n| n.hex.clone()) else {
                continue;
            };
            if exclude.contains(&id) {
                continue;
            }
            probes.spawn(async move { (id, measure_rtt(&c).await) });
        }
        let mut latencies = Vec::new();
        let mut unreachable = Vec::new();
        while let Some(Ok((id, rtt))) = probes.join_next().await {
            match rtt {
                Some(rtt_ms) => latencies.push(pb::LatencySample {
                    node_id: Some(types::NodeId { hex: id }),
                    rtt_ms,
                }),
                None => unreachable.push(id),
            }
        }
        timings.probes_ms = lap();
        if latencies.is_empty() {
            return Err(Error::NoReachableNode(format!(
                "{} unreachable",
                unreachable.len()
            )));
        }
        let rtt_of = |id: &str| {
            latencies
                .iter()
                .find(|l| l.node_id.as_ref().is_some_and(|n| n.hex == id))
                .map_or(0, |l| l.rtt_ms)
        };
        // A key pair for this session only: it signs the delivery receipts that let the node
        // prove it streamed to this player.
        let player_key = pixelgrid_proto::receipt::PlayerKey::generate()
            .map_err(|e| Error::Orchestrator(format!("no randomness for a player key: {e}")))?;
        let chosen = grpc
            .choose_node(authorised(
                pb::ChooseNodeRequest {
                    launch_id: launch.launch_id,
                    latencies: latencies.clone(),
                    player_key: player_key.public_bytes().to_vec(),
                },
                &grant,
            )?)
            .await
            .map_err(status)?
            .into_inner();
        timings.choose_node_ms = lap();
        let session = chosen
            .session
            .ok_or_else(|| Error::Orchestrator("ChooseNode answered without a session".into()))?;
        let node_id = session.node_id.map(|n| n.hex).unwrap_or_default();
        tell(LaunchPhase::Chosen {
            node_id: node_id.clone(),
        });
        let codec = if session.codec == types::VideoCodec::Vp8 as i32 {
            Codec::Vp8
        } else {
            Codec::H264
        };
        let connection = Connection::open(
            &node_id,
            &session.session_id,
            &chosen.whep_url,
            &chosen.session_token,
            codec,
            &crate::whep::IceRoute {
                servers: chosen.ice_servers.clone(),
                relay_only: options.relay_only,
                tcp_only: options.tcp_only,
            },
            sinks,
            Some(player_key),
        )
        .await?;
        (timings.offer_ms, timings.answer_ms) = connection.whep_timings();
        tell(LaunchPhase::Connected {
            node_id: node_id.clone(),
        });
        Ok(Placed {
            rtt_ms: rtt_of(&node_id),
            timings,
            connection,
        })
    }

    /// Tells the orchestrator the session ended, with its session token as the credential.
    async fn end_session(&self, session_id: &str, token: &str, reason: &str) {
        let Ok(request) = authorised(
            pb::EndSessionRequest {
                session_id: session_id.to_owned(),
                reason: reason.to_owned(),
            },
            token,
        ) else {
            return;
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.grpc.clone().end_session(request),
        )
        .await;
    }
}

struct Supervisor {
    client: Client,
    game: String,
    options: LaunchOptions,
    sinks: Sinks,
    connection: Connection,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    input: Arc<Mutex<ChannelSlot>>,
    current: Arc<Mutex<(String, String)>>,
    stop: tokio::sync::oneshot::Receiver<()>,
}

/// How long a node may stay silent after its answer before the first packet (ICE and DTLS
/// connecting) before it is taken for lost.
const CONNECT_GRACE: Duration = Duration::from_secs(3);
/// The loss threshold for a node whose hello announced no keep-alives (it sends stats once a
/// second).
const LEGACY_NODE_LOST_AFTER: Duration = Duration::from_millis(1500);

/// Watches the stream; re-launches when the node is lost.
async fn supervise(mut s: Supervisor) {
    let mut slow_seconds = 0u32;
    let mut last_check = Instant::now();
    let mut last_refusal_check = Instant::now();
    let mut refusals = 0u32;
    loop {
        tokio::select! {
            // `end()`, or the Session dropped (the sender goes with it): leave either way.
            _ = &mut s.stop => {
                let session = s.connection.session_id.clone();
                let token = s.connection.token.clone();
                s.connection.close().await;
                s.client.end_session(&session, &token, "ended by the player").await;
                let _ = s.events.send(Event::Ended { reason: "ended by the player".into() });
                return;
            }
            // Often enough that noticing a lost node adds little to the threshold.
            _ = tokio::time::sleep(Duration::from_millis(25)) => {}
        }
        // The node ended the session itself (the game exited): no other node would do better.
        let ended = s
            .connection
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(reason) = ended {
            let _ = s.events.send(Event::Ended {
                reason: format!("the node ended the session: {reason}"),
            });
            return;
        }
        let heard_ms = s
            .connection
            .last_packet_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let silent_ms = (unix_ms() as u64).saturating_sub(heard_ms);
        let mut lost_after = s.options.node_lost_after;
        if heard_ms <= s.connection.answered_ms {
            // Nothing heard yet: ICE and DTLS may still be connecting (seconds through a relay)
            // — unless the node's process is gone, which its refused connections say at once.
            lost_after = lost_after.max(CONNECT_GRACE);
            if silent_ms >= s.options.node_lost_after.as_millis() as u64
                && last_refusal_check.elapsed() >= Duration::from_millis(250)
            {
                last_refusal_check = Instant::now();
                // Twice in a row: one refusal could be a listener being replaced.
                refusals = if s.connection.node_refuses().await {
                    refusals + 1
                } else {
                    0
                };
                if refusals >= 2 {
                    lost_after = Duration::ZERO;
                }
            }
        } else if !s
            .connection
            .keepalive
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            // An older node, without keep-alives: its stats come once a second.
            lost_after = lost_after.max(LEGACY_NODE_LOST_AFTER);
        }
        if silent_ms >= lost_after.as_millis() as u64 {
            let lost = s.connection.node_id.clone();
            let old_session = s.connection.session_id.clone();
            let old_token = s.connection.token.clone();
            let _ = s.events.send(Event::NodeLost {
                node_id: lost.clone(),
                reason: format!("nothing from the node for {silent_ms} ms"),
            });
            tracing::warn!(node = %lost, silent_ms, "node lost");
            let lost_at = Instant::now();
            let client = s.client.clone();
            tokio::spawn(async move {
                client
                    .end_session(&old_session, &old_token, "node lost")
                    .await
            });
            if !s.options.reconnect {
                let _ = s.events.send(Event::Ended {
                    reason: format!("node {lost} lost"),
                });
                return;
            }
            match relaunch(&s, &lost).await {
                Ok(placed) => {
                    let old = std::mem::replace(&mut s.connection, placed.connection);
                    tokio::spawn(old.abandon());
                    refusals = 0;
                    *s.input.lock().unwrap_or_else(|p| p.into_inner()) = s.connection.channel();
                    *s.current.lock().unwrap_or_else(|p| p.into_inner()) = (
                        s.connection.node_id.clone(),
                        s.connection.session_id.clone(),
                    );
                    let _ = s.events.send(Event::Reconnected {
                        node_id: s.connection.node_id.clone(),
                        session_id: s.connection.session_id.clone(),
                        after_ms: lost_at.elapsed().as_millis() as u64,
                    });
                }
                Err(e) => {
                    let _ = s.events.send(Event::Ended {
                        reason: format!("node {lost} lost and no other node took the session: {e}"),
                    });
                    return;
                }
            }
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            let fps = s
                .sinks
                .meter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .snapshot(unix_ms())
                .fps;
            if fps * 2.0 < f64::from(s.options.fps) {
                slow_seconds += 1;
                if slow_seconds == 2 {
                    let _ = s.events.send(Event::Degraded {
                        reason: format!("{fps:.0} fps of {} for 2 s", s.options.fps),
                    });
                }
            } else {
                slow_seconds = 0;
            }
        }
    }
}

/// Tries for up to 30 s to place the session on another node.
async fn relaunch(s: &Supervisor, lost: &str) -> Result<Placed> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match s
            .client
            .place(&s.game, &s.options, &[lost.to_owned()], s.sinks.clone())
            .await
        {
            Ok(p) => return Ok(p),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::info!(error = %e, "re-launch failed; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

impl Session {
    /// Where the launch's time went (the first placement).
    pub fn launch_timings(&self) -> LaunchTimings {
        self.launch_timings
    }

    /// The next decoded frame; `None` once the session has ended.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        self.frames.recv().await
    }

    /// A decoded frame if one is waiting, without waiting.
    pub fn try_next_frame(&mut self) -> Option<Frame> {
        self.frames.try_recv().ok()
    }

    /// The next 20 ms or so of decoded sound (with [`LaunchOptions::audio`], the default);
    /// `None` without sound.
    pub async fn next_audio(&mut self) -> Option<crate::audio::AudioChunk> {
        match self.audio.as_mut() {
            Some(rx) => rx.recv().await,
            None => None,
        }
    }

    /// The next decoded sound if one is waiting.
    pub fn try_next_audio(&mut self) -> Option<crate::audio::AudioChunk> {
        self.audio.as_mut().and_then(|rx| rx.try_recv().ok())
    }

    /// The next encoded access unit (with [`LaunchOptions::access_units`]).
    pub async fn next_access_unit(&mut self) -> Option<AccessUnit> {
        self.units.as_mut()?.recv().await
    }

    /// The next event, waiting for it.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// An event if one is waiting.
    pub fn try_event(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Sends input to whichever node serves the session now.
    pub fn input(&self) -> InputSender {
        self.input.clone()
    }

    /// Live statistics.
    pub fn stats(&self) -> Stats {
        self.meter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot(unix_ms())
    }

    /// The node serving the session now.
    pub fn node_id(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// The current session id (a new one after a reconnection).
    pub fn session_id(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Ends the session: leaves the node and tells the orchestrator.
    pub async fn end(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.supervisor).await;
    }
}
