//! One viewer of a session: a `webrtc` peer connection with one video track and the player's
//! `input` data channel.
//!
//! The track is a `TrackLocalStaticRTP` fed by our own packetisation, so the RTP timestamp of
//! every frame is known — `rtp_epoch + capture_ms * 90` — and the player can turn it back into
//! the capture time announced in `hello` for glass-to-glass latency. PLI/FIR from the browser
//! reach the session as keyframe requests through a small interceptor; NACK retransmission and
//! RTCP reports come from webrtc-rs's default interceptors; transport-cc feedback drives a GCC
//! estimate that sets the encoder's bitrate and paces each frame (see [`super::congestion`]).

use super::congestion::{
    ESTIMATE_HEADROOM, EstimateTap, FramePacing, Ladder, MIN_KBPS, RetransmitLimiter,
    SharedEstimate,
};
use super::protocol::{GateOutcome, InputGate, InputLimits, NodeMessage, PlayerMessage};
use super::{StreamCounters, unix_ms};
use crate::session::{Session, SessionFrame};
use crate::video::Codec;
use crate::{Error, Result};
use bytes::Bytes;
use rtc::interceptor::{
    Attribute, CongestionControlBuilder, Gcc, Interceptor, Packet, Registry, Slot, StreamInfo,
    TaggedPacket, TwccSenderBuilder,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceServer;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sansio::Protocol;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionState,
};

/// Payload bytes per RTP packet, leaving room for headers, extensions and SRTP under 1200.
const RTP_PAYLOAD_MTU: usize = 1100;
const PLAYOUT_DELAY_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";
/// Frames queued for one viewer before newer ones are dropped for it.
pub(crate) const VIEWER_QUEUE: usize = 4;
/// Opus packets queued for one viewer (100 ms) before newer ones are dropped for it.
const AUDIO_QUEUE: usize = 5;

/// How the node's WebRTC side is set up.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    /// Addresses to gather host candidates on (explicit; `0.0.0.0` gathers no loopback).
    pub udp_addrs: Vec<SocketAddr>,
    /// Addresses to offer ICE-TCP (passive) candidates on, for players whose networks block
    /// UDP; empty for none.
    pub tcp_addrs: Vec<SocketAddr>,
    /// STUN/TURN servers, also advertised to players in WHEP `Link` headers.
    pub ice_servers: Vec<IceServer>,
    /// Limits for player input.
    pub input_limits: InputLimits,
    /// Follow each player's link (transport-cc feedback, GCC, the bitrate ladder, per-frame
    /// pacing); off sends the mode's fixed bitrate, as before.
    pub congestion_control: bool,
    /// A viewer not connected this long after its answer is dropped (an abandoned offer, or a
    /// player that never sent a usable candidate): its slot and tasks do not wait forever.
    pub connect_deadline: Duration,
}

/// [`PeerSettings::connect_deadline`] by default: long enough for TURN relays and slow
/// networks, short enough that an abandoned launch gives its slot back soon.
pub const DEFAULT_CONNECT_DEADLINE: Duration = Duration::from_secs(20);

/// A STUN or TURN server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:host:port` or `turn:host:port?transport=udp`.
    pub url: String,
    /// TURN username (empty for STUN).
    pub username: String,
    /// TURN credential (empty for STUN).
    pub credential: String,
}

/// Does the offer ask for sound we can send (an audio section with Opus)? A player that wants
/// none leaves the audio m-line out.
pub(crate) fn offer_wants_opus(sdp: &str) -> bool {
    let mut in_audio = false;
    for l in sdp.lines() {
        if l.starts_with("m=") {
            in_audio = l.starts_with("m=audio") && !l.starts_with("m=audio 0 ");
        } else if in_audio
            && l.starts_with("a=rtpmap:")
            && l.to_ascii_lowercase().contains("opus/48000")
        {
            return true;
        }
    }
    false
}

/// Does the offer carry TCP candidates (a player that may be unable to use UDP)?
pub(crate) fn offer_has_tcp_candidates(sdp: &str) -> bool {
    sdp.lines().any(|l| {
        l.starts_with("a=candidate:")
            && l.split_whitespace()
                .nth(2)
                .is_some_and(|t| t.eq_ignore_ascii_case("tcp"))
    })
}

/// The Opus track's codec: stereo, in-band FEC, 10 ms minimum packet time.
fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: crate::audio::SAMPLE_RATE,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1;stereo=1;sprop-stereo=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// Does the browser's offer carry a codec we can send? H.264 first, VP8 else.
pub(crate) fn codec_for_offer(sdp: &str) -> Option<Codec> {
    let has = |name: &str| {
        sdp.lines()
            .any(|l| l.starts_with("a=rtpmap:") && l.to_ascii_uppercase().contains(name))
    };
    if has("H264/90000") {
        Some(Codec::H264)
    } else if has("VP8/90000") {
        Some(Codec::Vp8)
    } else {
        None
    }
}

fn feedback() -> Vec<RTCPFeedback> {
    [
        ("nack", ""),
        ("nack", "pli"),
        ("ccm", "fir"),
        ("goog-remb", ""),
        ("transport-cc", ""),
    ]
    .into_iter()
    .map(|(typ, parameter)| RTCPFeedback {
        typ: typ.into(),
        parameter: parameter.into(),
    })
    .collect()
}

/// The codec as the track announces it.
fn track_codec(codec: Codec) -> RTCRtpCodec {
    match codec {
        Codec::H264 => RTCRtpCodec {
            mime_type: MIME_TYPE_H264.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
                .to_owned(),
            rtcp_feedback: feedback(),
        },
        Codec::Vp8 => RTCRtpCodec {
            mime_type: MIME_TYPE_VP8.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: feedback(),
        },
    }
}

/// A media engine offering only `codec`, so the answer cannot pick a codec the session does not
/// send.
fn media_engine(codec: Codec) -> Result<MediaEngine> {
    let mut m = MediaEngine::default();
    let register = |m: &mut MediaEngine, rtp_codec: RTCRtpCodec, payload_type: u8| {
        m.register_codec(
            RTCRtpCodecParameters {
                rtp_codec,
                payload_type,
            },
            RtpCodecKind::Video,
        )
        .map_err(|e| Error::Webrtc(format!("registering a codec: {e}")))
    };
    match codec {
        Codec::H264 => {
            // Browsers offer several H.264 profiles; webrtc-rs answers "codec not found" unless
            // the offered profile-level-id is registered. The stream is constrained-baseline,
            // which decoders of every one of these profiles play.
            for (pt, profile) in [
                (108, "42e01f"),
                (102, "42001f"),
                (127, "4d001f"),
                (112, "64001f"),
            ] {
                let mut c = track_codec(Codec::H264);
                c.sdp_fmtp_line = format!(
                    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}"
                );
                register(&mut m, c, pt)?;
            }
        }
        Codec::Vp8 => register(&mut m, track_codec(Codec::Vp8), 96)?,
    }
    m.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus_codec(),
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )
    .map_err(|e| Error::Webrtc(format!("registering Opus: {e}")))?;
    m.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: PLAYOUT_DELAY_URI.into(),
        },
        RtpCodecKind::Video,
        None,
    )
    .map_err(|e| Error::Webrtc(format!("registering playout-delay: {e}")))?;
    Ok(m)
}

/// Passes PLI and FIR from the player up to the application (they stop in the interceptor chain
/// otherwise).
struct KeyframeRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> std::result::Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<_> = packets
                .iter()
                .filter(|p| {
                    p.as_any().is::<PictureLossIndication>() || p.as_any().is::<FullIntraRequest>()
                })
                .cloned()
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> std::result::Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

/// What a viewer shares with its session.
#[derive(Clone)]
pub(crate) struct ViewerContext {
    pub session: Arc<Session>,
    pub session_id: String,
    pub codec: Codec,
    pub encoder: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// The mode's full video bitrate, kbit/s: where the estimate starts.
    pub full_kbps: u32,
    pub rtp_epoch: u32,
    /// Set when the session has sound.
    pub audio_rtp_epoch: Option<u32>,
    pub epoch_unix_ms: f64,
    pub counters: Arc<StreamCounters>,
    /// Told (session id, viewer id) when the viewer's connection fails or closes.
    pub gone: mpsc::UnboundedSender<(String, String)>,
    /// Whether this viewer drives the game: one viewer per session does; others watch.
    pub controls: Arc<std::sync::atomic::AtomicBool>,
    /// The node's receipt counters.
    pub receipts: Arc<super::ReceiptCounters>,
    /// The node's count of peer connections not yet freed.
    pub peer_connections: Arc<std::sync::atomic::AtomicU64>,
}

/// Counts one peer connection while it exists: its event handler holds this, and goes only
/// with the connection itself.
struct Alive(Arc<std::sync::atomic::AtomicU64>);

impl Alive {
    fn new(count: &Arc<std::sync::atomic::AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(count))
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Handler {
    _alive: Alive,
    viewer_id: String,
    ctx: ViewerContext,
    gathered: mpsc::Sender<()>,
    connected: tokio::sync::watch::Sender<bool>,
    channel: Arc<Mutex<Option<Arc<dyn DataChannel>>>>,
    limits: InputLimits,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.try_send(());
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::info!(viewer = %self.viewer_id, %state, "viewer connection");
        match state {
            RTCPeerConnectionState::Connected => {
                self.ctx
                    .counters
                    .player_connected
                    .store(true, Ordering::Relaxed);
                self.ctx.session.request_keyframe();
                // Every sender (video, sound) waits for this, whenever it started waiting.
                self.connected.send_replace(true);
            }
            // Disconnected may recover on its own; Failed and Closed do not.
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                let _ = self
                    .ctx
                    .gone
                    .send((self.ctx.session_id.clone(), self.viewer_id.clone()));
            }
            _ => {}
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        if dc.label().await.ok().as_deref() != Some("input") {
            return;
        }
        *self.channel.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&dc));
        let ctx = self.ctx.clone();
        let limits = self.limits;
        tokio::spawn(run_input_channel(dc, ctx, limits));
    }
}

async fn send(dc: &Arc<dyn DataChannel>, msg: &NodeMessage) {
    if let Ok(text) = serde_json::to_string(msg) {
        let _ = dc.try_send_text(&text).await;
    }
}

/// Reads the player's messages through the gate, answers pings, sends stats once a second and
/// releases held keys when the player goes silent or the channel closes.
async fn run_input_channel(dc: Arc<dyn DataChannel>, ctx: ViewerContext, limits: InputLimits) {
    let started = Instant::now();
    let mut gate = InputGate::new(limits);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut alive = tokio::time::interval(super::protocol::KEEPALIVE_EVERY);
    alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut open = false;
    let now_ms = || started.elapsed().as_millis() as u64;
    loop {
        tokio::select! {
            event = dc.poll() => match event {
                Some(DataChannelEvent::OnOpen) => {
                    open = true;
                    send(&dc, &hello(&ctx)).await;
                }
                Some(DataChannelEvent::OnMessage(msg)) => match gate.admit(now_ms(), &msg.data) {
                    Ok(GateOutcome { message, events_dropped }) => {
                        ctx.counters.input_dropped.fetch_add(u64::from(events_dropped), Ordering::Relaxed);
                        match message {
                            Some(PlayerMessage::Input(events)) if !ctx.controls.load(Ordering::Relaxed) => {
                                // A watching viewer's input goes nowhere.
                                ctx.counters.input_dropped.fetch_add(events.len() as u64, Ordering::Relaxed);
                            }
                            Some(PlayerMessage::Input(events)) => {
                                for e in events {
                                    if ctx.session.send_input(e.event).is_ok() {
                                        ctx.counters.input_accepted.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            }
                            Some(PlayerMessage::Ping { t }) => send(&dc, &NodeMessage::Pong { t, node_unix_ms: unix_ms() }).await,
                            Some(PlayerMessage::Keyframe) => ctx.session.request_keyframe(),
                            Some(PlayerMessage::Challenge(nonce)) => ctx.session.set_challenge(nonce),
                            Some(PlayerMessage::Receipt { receipt, signature }) => {
                                let stats = ctx.session.stats();
                                let kept = ctx.counters.receipts.lock().unwrap_or_else(|p| p.into_inner()).offer(
                                    receipt,
                                    signature,
                                    stats.frames_encoded,
                                    (stats.elapsed_s * 1000.0) as u64,
                                );
                                match kept {
                                    Ok(()) => ctx.receipts.kept.fetch_add(1, Ordering::Relaxed),
                                    Err(reason) => {
                                        tracing::debug!(session = %ctx.session_id, %reason, "receipt refused");
                                        ctx.receipts.refused.fetch_add(1, Ordering::Relaxed)
                                    }
                                };
                            }
                            None => {}
                        }
                    }
                    Err(reason) => {
                        ctx.counters.input_dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(session = %ctx.session_id, %reason, "player message dropped");
                    }
                },
                Some(DataChannelEvent::OnClose) | None => {
                    if ctx.controls.load(Ordering::Relaxed) {
                        ctx.session.release_all_input();
                    }
                    return;
                }
                Some(_) => {}
            },
            _ = alive.tick(), if open => send(&dc, &NodeMessage::Alive {}).await,
            _ = tick.tick() => {
                if gate.silence_elapsed(now_ms()) && ctx.controls.load(Ordering::Relaxed) {
                    ctx.session.release_all_input();
                }
                let s = ctx.session.stats();
                send(&dc, &NodeMessage::Stats {
                    frames_encoded: s.frames_encoded,
                    dropped_late: s.dropped_late,
                    dropped_encoder_busy: s.dropped_encoder_busy,
                    dropped_send: ctx.counters.frames_dropped_send.load(Ordering::Relaxed),
                    input_accepted: ctx.counters.input_accepted.load(Ordering::Relaxed),
                    input_dropped: ctx.counters.input_dropped.load(Ordering::Relaxed),
                    estimate_kbps: ctx.counters.estimate_bps.load(Ordering::Relaxed) / 1000,
                    target_kbps: ctx.counters.target_kbps.load(Ordering::Relaxed),
                    fps: ctx.counters.fps_now.load(Ordering::Relaxed),
                }).await;
            }
        }
    }
}

fn hello(ctx: &ViewerContext) -> NodeMessage {
    NodeMessage::Hello {
        v: super::protocol::PROTOCOL_VERSION,
        session: ctx.session_id.clone(),
        codec: ctx.codec.to_string(),
        encoder: ctx.encoder.clone(),
        width: ctx.width,
        height: ctx.height,
        fps: ctx.fps,
        rtp_epoch: ctx.rtp_epoch,
        epoch_unix_ms: ctx.epoch_unix_ms,
        audio_rtp_epoch: ctx.audio_rtp_epoch,
        keepalive_ms: super::protocol::KEEPALIVE_EVERY.as_millis() as u32,
    }
}

/// RTP timestamp (48 kHz) of a sound made `pts` after session time 0.
pub(crate) fn audio_rtp_timestamp(epoch: u32, pts: Duration) -> u32 {
    epoch.wrapping_add((pts.as_micros() * 48 / 1000) as u32)
}

/// RTP timestamp (90 kHz) of a frame captured `pts` after session time 0.
pub(crate) fn rtp_timestamp(epoch: u32, pts: Duration) -> u32 {
    epoch.wrapping_add((pts.as_micros() * 9 / 100) as u32)
}

/// A connected (or connecting) viewer.
pub(crate) struct Viewer {
    pub pc: Arc<dyn PeerConnection>,
    pub frames: mpsc::Sender<Arc<SessionFrame>>,
    /// The viewer's Opus packets, when it takes the session's sound.
    pub audio: Option<mpsc::Sender<Arc<crate::audio::AudioPacket>>>,
    /// The player's `input` channel, once open.
    pub channel: Arc<Mutex<Option<Arc<dyn DataChannel>>>>,
    /// Whether this viewer drives the game (see [`ViewerContext::controls`]).
    pub controls: Arc<std::sync::atomic::AtomicBool>,
    /// ICE candidates the player trickled so far (bounded).
    pub trickled: Arc<std::sync::atomic::AtomicU32>,
}

impl Viewer {
    /// Closes the viewer's connection and lets go of its data channel: the connection's event
    /// handler holds the channel, which holds the connection, so without this the pair (and
    /// every packet its retransmission buffers kept) would outlive the viewer.
    pub async fn close(&self) {
        let _ = self.pc.close().await;
        self.channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Tells the player the session is over and why, if its channel is open.
    pub async fn say_ended(&self, reason: &str) {
        let dc = self
            .channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(dc) = dc {
            send(
                &dc,
                &NodeMessage::Ended {
                    reason: reason.to_owned(),
                },
            )
            .await;
        }
    }
}

/// Answers `offer` for a new viewer of `ctx.session`; returns the answer SDP (with candidates).
pub(crate) async fn open(
    viewer_id: String,
    offer: String,
    ctx: ViewerContext,
    settings: &PeerSettings,
) -> Result<(String, Viewer)> {
    let bad_sdp = |e: webrtc::error::Error| Error::invalid("sdp", e.to_string());
    tracing::debug!(%offer, "WHEP offer");
    let controls = Arc::clone(&ctx.controls);
    let audio_epoch = ctx.audio_rtp_epoch.filter(|_| offer_wants_opus(&offer));
    let wants_tcp = offer_has_tcp_candidates(&offer);
    let offer =
        RTCSessionDescription::offer(offer).map_err(|e| Error::invalid("sdp", e.to_string()))?;
    let mut engine = media_engine(ctx.codec)?;
    let estimate = SharedEstimate::default();
    ctx.counters.watch_viewer(&viewer_id, Arc::clone(&estimate));
    // Start where the mode's full bitrate needs to be, so a good link is used from the first
    // frame; the estimate comes down within one feedback interval on a worse one.
    let initial_bps = Ladder::new(ctx.full_kbps, ctx.fps).full_estimate_bps();
    let registry = register_default_interceptors(Registry::new(), &mut engine)
        .map_err(|e| Error::Webrtc(format!("interceptors: {e}")))?;
    let registry = if settings.congestion_control {
        registry
            .with(
                Slot::CongestionControl,
                CongestionControlBuilder::new(Gcc::new(
                    initial_bps,
                    f64::from(MIN_KBPS) * 1000.0,
                    initial_bps * ESTIMATE_HEADROOM,
                ))
                .build(),
            )
            .with(Slot::TwccSender, TwccSenderBuilder::new().build())
            // Application-ward of the estimator (1_000) on the read leg. Pacing is per frame, in
            // the send loop (see `congestion`).
            .with(
                Slot::from(2_500usize),
                EstimateTap::new(Arc::clone(&estimate)),
            )
    } else {
        registry
    };
    let registry = registry
        // Between the NACK responder (4_000) and the TWCC numbering (2_000) on the write leg;
        // without congestion control the budget follows the mode's full rate.
        .with(
            Slot::from(3_000usize),
            RetransmitLimiter::new(
                Arc::clone(&estimate),
                initial_bps as u64,
                Arc::clone(&ctx.counters.retransmits_dropped),
            ),
        )
        .with(
            Slot::from(14_000),
            KeyframeRequests {
                read: VecDeque::new(),
                write: VecDeque::new(),
            },
        );
    let ice_servers = settings
        .ice_servers
        .iter()
        .map(|s| RTCIceServer {
            urls: vec![s.url.clone()],
            username: s.username.clone(),
            credential: s.credential.clone(),
        })
        .collect();
    // mDNS off: on a real machine it would multicast, in a lo-only namespace it fails outright.
    let setting_engine = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        // Checks every 25 ms while connecting (1.4 s of attempts per pair, as by default): a
        // player waits for the first answered pair, not for a 200 ms timer.
        .with_ice_connection_attempts(Some(Duration::from_millis(25)), Some(56))
        .build();
    let (gathered_tx, mut gathered) = mpsc::channel(1);
    let (connected, connected_rx) = tokio::sync::watch::channel(false);
    {
        let mut connected = connected_rx.clone();
        let deadline = settings.connect_deadline;
        let (gone, session, viewer) = (ctx.gone.clone(), ctx.session_id.clone(), viewer_id.clone());
        tokio::spawn(async move {
            // Ends early when the viewer connects or is removed (the sender goes with it).
            if tokio::time::timeout(deadline, connected.wait_for(|up| *up))
                .await
                .is_err()
            {
                tracing::info!(%session, %viewer, ?deadline, "the viewer never connected; dropping it");
                let _ = gone.send((session, viewer));
            }
        });
    }
    let channel: Arc<Mutex<Option<Arc<dyn DataChannel>>>> = Arc::default();
    let handler = Arc::new(Handler {
        _alive: Alive::new(&ctx.peer_connections),
        viewer_id: viewer_id.clone(),
        ctx: ctx.clone(),
        gathered: gathered_tx,
        connected,
        channel: Arc::clone(&channel),
        limits: settings.input_limits,
    });
    let pc = PeerConnectionBuilder::new()
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_ice_servers(ice_servers)
                .build(),
        )
        .with_media_engine(engine)
        .with_setting_engine(setting_engine)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(settings.udp_addrs.clone())
        // A TCP listener only for a player whose offer carries TCP candidates: one listener per
        // viewer for everyone would be a socket any stranger can pile connections onto.
        .with_tcp_addrs(if wants_tcp {
            settings.tcp_addrs.clone()
        } else {
            vec![]
        })
        .build()
        .await
        .map_err(|e| Error::Webrtc(format!("peer connection: {e}")))?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);

    let ssrc: u32 = rand_u32();
    let codec = track_codec(ctx.codec);
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        format!("pixelgrid-{}", ctx.session_id),
        "video".to_owned(),
        "game".to_owned(),
        RtpCodecKind::Video,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: codec.clone(),
            ..Default::default()
        }],
    )));
    let sender = pc
        .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
        .await
        .map_err(bad_sdp)?;
    let audio_ssrc = rand_u32();
    let audio_track = match audio_epoch {
        Some(_) => {
            let t = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                format!("pixelgrid-{}", ctx.session_id),
                "audio".to_owned(),
                "game-audio".to_owned(),
                RtpCodecKind::Audio,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(audio_ssrc),
                        ..Default::default()
                    },
                    codec: opus_codec(),
                    ..Default::default()
                }],
            )));
            let s = pc
                .add_track(Arc::clone(&t) as Arc<dyn TrackLocal>)
                .await
                .map_err(bad_sdp)?;
            Some((t, s))
        }
        None => None,
    };
    pc.set_remote_description(offer).await.map_err(bad_sdp)?;
    let answer = pc.create_answer(None).await.map_err(bad_sdp)?;
    pc.set_local_description(answer).await.map_err(bad_sdp)?;
    // Host candidates only: gathering completes at once, so the answer carries them all.
    let _ = tokio::time::timeout(Duration::from_secs(2), gathered.recv()).await;
    let answer = pc
        .local_description()
        .await
        .ok_or_else(|| Error::Webrtc("no local description after answering".into()))?;
    tracing::debug!(answer = %answer.sdp, "WHEP answer");
    let negotiated = sender
        .get_parameters()
        .await
        .map_err(bad_sdp)?
        .rtp_parameters;
    let payload_type = negotiated
        .codecs
        .first()
        .map(|c| c.payload_type)
        .ok_or_else(|| Error::invalid("sdp", "the offer has no video codec this node can send"))?;
    // Set by hand with the sender's negotiated id: webrtc-rs 0.21's track context can map the
    // URI to another id, and the sender then refuses every packet.
    let playout_delay_id = negotiated
        .header_extensions
        .iter()
        .find(|e| e.uri == PLAYOUT_DELAY_URI)
        .map(|e| e.id as u8);

    let mut audio_tx = None;
    if let (Some((audio_track, audio_sender)), Some(epoch)) = (audio_track, audio_epoch) {
        let audio_pt = audio_sender
            .get_parameters()
            .await
            .map_err(bad_sdp)?
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.payload_type);
        if let Some(payload_type) = audio_pt {
            let (tx, rx) = mpsc::channel(AUDIO_QUEUE);
            tokio::spawn(send_audio(AudioLoop {
                track: audio_track,
                packets: rx,
                ssrc: audio_ssrc,
                payload_type,
                epoch,
                connected: connected_rx.clone(),
            }));
            audio_tx = Some(tx);
        }
    }
    let (frames_tx, frames_rx) = mpsc::channel(VIEWER_QUEUE);
    tokio::spawn(forward_keyframe_requests(
        Arc::clone(&track),
        Arc::clone(&ctx.session),
    ));
    tokio::spawn(send_frames(SendLoop {
        track,
        frames: frames_rx,
        codec,
        ssrc,
        payload_type,
        playout_delay_id,
        channel: Arc::clone(&channel),
        connected: connected_rx,
        estimate,
        unconstrained_bps: initial_bps as u64,
        ctx,
    }));
    Ok((
        answer.sdp,
        Viewer {
            pc,
            frames: frames_tx,
            audio: audio_tx,
            channel,
            controls,
            trickled: Arc::default(),
        },
    ))
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_ne_bytes(b)
}

async fn forward_keyframe_requests(track: Arc<TrackLocalStaticRTP>, session: Arc<Session>) {
    while let Some(event) = track.poll().await {
        if let TrackLocalEvent::OnRtcpPacket(_) = event {
            tracing::debug!(session = %session.id(), "keyframe requested by player");
            session.request_keyframe();
        }
    }
}

struct SendLoop {
    track: Arc<TrackLocalStaticRTP>,
    frames: mpsc::Receiver<Arc<SessionFrame>>,
    codec: RTCRtpCodec,
    ssrc: u32,
    payload_type: u8,
    playout_delay_id: Option<u8>,
    channel: Arc<Mutex<Option<Arc<dyn DataChannel>>>>,
    connected: tokio::sync::watch::Receiver<bool>,
    /// This viewer's link estimate, which paces each frame.
    estimate: SharedEstimate,
    /// At or above this estimate the link carries the mode's full rate: no pacing.
    unconstrained_bps: u64,
    ctx: ViewerContext,
}

struct AudioLoop {
    track: Arc<TrackLocalStaticRTP>,
    packets: mpsc::Receiver<Arc<crate::audio::AudioPacket>>,
    ssrc: u32,
    payload_type: u8,
    epoch: u32,
    connected: tokio::sync::watch::Receiver<bool>,
}

/// One Opus packet per RTP packet (RFC 7587), stamped on the session clock at 48 kHz.
async fn send_audio(mut s: AudioLoop) {
    if s.connected.wait_for(|up| *up).await.is_err() {
        return;
    }
    let mut sequence = rand_u32() as u16;
    let mut first = true;
    while let Some(p) = s.packets.recv().await {
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                // The marker starts a talkspurt: the first packet of the stream.
                marker: std::mem::take(&mut first),
                payload_type: s.payload_type,
                sequence_number: sequence,
                timestamp: audio_rtp_timestamp(s.epoch, p.pts),
                ssrc: s.ssrc,
                ..Default::default()
            },
            payload: Bytes::from(p.data.clone()),
        };
        sequence = sequence.wrapping_add(1);
        if let Err(e) = s.track.write_rtp(packet).await {
            tracing::debug!(error = %e, "audio RTP write failed; viewer gone");
            return;
        }
    }
}

async fn send_frames(mut s: SendLoop) {
    let Ok(mut payloader) = s.codec.payloader() else {
        tracing::error!("no RTP payloader for {}", s.codec.mime_type);
        return;
    };
    // Nothing is sent before the connection is up; then the stream starts at a keyframe.
    if s.connected.wait_for(|up| *up).await.is_err() {
        return;
    }
    let mut started = false;
    let mut sequence = rand_u32() as u16;
    // playout-delay min 0, max 0 (12 bits each, 10 ms units): render each frame at once.
    let playout_delay = Bytes::from_static(&[0, 0, 0]);
    while let Some(frame) = s.frames.recv().await {
        if !started && !frame.encoded.keyframe {
            continue;
        }
        started = true;
        let timestamp = rtp_timestamp(s.ctx.rtp_epoch, frame.encoded.pts);
        let payloads =
            match payloader.payload(RTP_PAYLOAD_MTU, &Bytes::from(frame.encoded.data.clone())) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot packetise a frame");
                    continue;
                }
            };
        let last = payloads.len().saturating_sub(1);
        let bytes: usize = payloads.iter().map(|p| p.len()).sum();
        s.ctx.counters.frames_sent.fetch_add(1, Ordering::Relaxed);
        s.ctx
            .counters
            .bytes_sent
            .fetch_add(bytes as u64, Ordering::Relaxed);
        let fps = s.ctx.counters.fps_now.load(Ordering::Relaxed).max(1);
        let pacing = FramePacing::for_frame(
            bytes,
            payloads.len(),
            s.estimate.load(Ordering::Relaxed),
            s.unconstrained_bps,
            Duration::from_secs(1) / fps as u32,
        );
        let paced_from = tokio::time::Instant::now();
        for (i, payload) in payloads.into_iter().enumerate() {
            if i > 0 && i % pacing.burst == 0 && !pacing.gap.is_zero() {
                // Deadlines from the frame's start, so timer slack does not add up.
                let burst = (i / pacing.burst) as u32;
                tokio::time::sleep_until(paced_from + pacing.gap * burst).await;
            }
            let mut packet = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    marker: i == last,
                    payload_type: s.payload_type,
                    sequence_number: sequence,
                    timestamp,
                    ssrc: s.ssrc,
                    ..Default::default()
                },
                payload,
            };
            sequence = sequence.wrapping_add(1);
            if let Some(id) = s.playout_delay_id {
                let _ = packet.header.set_extension(id, playout_delay.clone());
            }
            if let Err(e) = s.track.write_rtp(packet).await {
                tracing::debug!(error = %e, "RTP write failed; viewer gone");
                return;
            }
        }
        let dc = s.channel.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(dc) = dc {
            let t = frame.timings;
            let msg = NodeMessage::Frame {
                n: frame.number,
                rtp: timestamp,
                capture_unix_ms: s.ctx.epoch_unix_ms + frame.encoded.pts.as_secs_f64() * 1e3,
                render_ms: t.render_ms,
                readback_ms: t.readback_ms,
                convert_ms: t.convert_ms,
                encode_ms: t.encode_ms,
            };
            send(&dc, &msg).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_timestamps_run_at_90_khz_from_the_epoch_and_wrap() {
        assert_eq!(rtp_timestamp(1000, Duration::ZERO), 1000);
        assert_eq!(rtp_timestamp(1000, Duration::from_millis(1)), 1090);
        assert_eq!(
            rtp_timestamp(u32::MAX, Duration::from_micros(1000 / 90 + 1)),
            0
        );
    }

    #[test]
    fn audio_is_sent_only_when_the_offer_has_an_opus_section() {
        let with = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        let without = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\n";
        let rejected = "v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert!(offer_wants_opus(with));
        assert!(!offer_wants_opus(without));
        assert!(!offer_wants_opus(rejected));
        assert_eq!(audio_rtp_timestamp(7, Duration::from_millis(20)), 7 + 960);
    }

    #[test]
    fn codec_follows_the_offer() {
        let h264 = "v=0\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\n";
        let vp8 = "v=0\r\na=rtpmap:96 VP8/90000\r\n";
        assert_eq!(codec_for_offer(h264), Some(Codec::H264));
        assert_eq!(codec_for_offer(vp8), Some(Codec::Vp8));
        assert_eq!(
            codec_for_offer("v=0\r\na=rtpmap:111 opus/48000/2\r\n"),
            None
        );
    }
}
