//! One WebRTC connection to one node: WHEP signalling, the received video track into the
//! [`Decoder`], and the `input` data channel (the node's `hello`, pings for RTT, input out).
//! A [`crate::Session`] holds one at a time and replaces it when its node is lost.

use crate::decoder::{Codec, Decoder, FrameFormat, Output};
use crate::reorder::Reorder;
use crate::stats::StatsMeter;
use crate::whep::{Gathered, WhepConnection};
use crate::{AccessUnit, Frame, Result};
use rtc::shared::marshal::Marshal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnectionEventHandler, RTCIceGatheringState};

pub(crate) use pixelgrid_proto::clock::unix_ms_f64 as unix_ms;

/// Video packets held at most behind a gap (about a second of 720p60).
const REORDER_CAPACITY: usize = 512;

/// The node's clock origin from its `hello`: a frame with RTP timestamp `rtp` was captured at
/// `epoch_unix_ms + (rtp − rtp_epoch) / 90`.
#[derive(Debug, Clone, Copy)]
struct Origin {
    rtp_epoch: u32,
    epoch_unix_ms: f64,
    audio_rtp_epoch: Option<u32>,
}

impl Origin {
    fn capture_ms(self, rtp: u32) -> f64 {
        self.epoch_unix_ms + f64::from(rtp.wrapping_sub(self.rtp_epoch)) / 90.0
    }

    /// When a sound with this audio RTP timestamp was made, on the node's clock.
    fn audio_capture_ms(self, rtp: u32) -> Option<f64> {
        self.audio_rtp_epoch
            .map(|e| self.epoch_unix_ms + f64::from(rtp.wrapping_sub(e)) / 48.0)
    }
}

/// What every connection of a session feeds.
#[derive(Clone)]
pub(crate) struct Sinks {
    pub frames: tokio::sync::mpsc::Sender<Frame>,
    pub units: Option<tokio::sync::mpsc::Sender<AccessUnit>>,
    /// Decoded sound; `None` when the player asked for none.
    pub audio: Option<tokio::sync::mpsc::Sender<crate::audio::AudioChunk>>,
    pub meter: Arc<Mutex<StatsMeter>>,
    pub format: FrameFormat,
}

/// A live connection to a node.
pub(crate) struct Connection {
    pub node_id: String,
    pub session_id: String,
    /// The session token: the node's WHEP bearer, and the player's credential for ending the
    /// session at the orchestrator.
    pub token: String,
    whep: WhepConnection,
    channel: Arc<Mutex<Option<Arc<dyn DataChannel>>>>,
    /// Unix ms of the latest RTP packet.
    pub last_packet_ms: Arc<AtomicU64>,
    /// Unix ms of the node's answer: `last_packet_ms` no later than this means nothing heard yet.
    pub answered_ms: u64,
    /// Whether the node's hello announced `alive` keep-alives (older nodes send none).
    pub keepalive: Arc<std::sync::atomic::AtomicBool>,
    /// Set when the node says the session is over (the game exited): why.
    pub ended: Arc<Mutex<Option<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Connection {
    /// (offer, answer) times of its WHEP exchange, ms.
    pub fn whep_timings(&self) -> (f64, f64) {
        (self.whep.offer_ms, self.whep.answer_ms)
    }

    /// True when every address of the node's WHEP endpoint refuses a connection now: its
    /// process is gone (a machine that is gone answers nothing, which proves nothing within the
    /// timeout).
    pub async fn node_refuses(&self) -> bool {
        for addr in self.whep.target.addrs() {
            let refused = matches!(
                tokio::time::timeout(
                    std::time::Duration::from_millis(200),
                    tokio::net::TcpStream::connect(addr),
                )
                .await,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
            );
            if !refused {
                return false;
            }
        }
        !self.whep.target.addrs().is_empty()
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("node_id", &self.node_id)
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

struct Handler {
    gathered: Gathered,
    sinks: Sinks,
    codec: Codec,
    origin: Arc<Mutex<Option<Origin>>>,
    last_packet_ms: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if track.kind().await == rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Audio {
            if let Some(out) = self.sinks.audio.clone() {
                tokio::spawn(play_audio(
                    track,
                    out,
                    Arc::clone(&self.sinks.meter),
                    Arc::clone(&self.origin),
                ));
            }
            return;
        }
        let sinks = self.sinks.clone();
        let origin = Arc::clone(&self.origin);
        let last_packet = Arc::clone(&self.last_packet_ms);
        let codec = self.codec;
        tokio::spawn(async move {
            let mut decoder: Option<Decoder> = None;
            // Packets wait here for a lost one's retransmission before the depacketiser sees
            // them (see `reorder`).
            let mut reorder = Reorder::<(Vec<u8>, u32)>::new(REORDER_CAPACITY);
            // Its own monotonic clock: a wall-clock step must not flush or stall held packets.
            let t0 = std::time::Instant::now();
            let mono_ms = move || t0.elapsed().as_secs_f64() * 1e3;
            loop {
                let wake = reorder.deadline().map(|d| (d - mono_ms()).max(0.0));
                let ev = match wake {
                    Some(ms) => {
                        match tokio::time::timeout(Duration::from_secs_f64(ms / 1e3), track.poll())
                            .await
                        {
                            Ok(ev) => ev,
                            Err(_) => {
                                for (bytes, ts) in reorder.poll(mono_ms()) {
                                    if let Some(d) = decoder.as_mut() {
                                        d.push(bytes, ts);
                                    }
                                }
                                continue;
                            }
                        }
                    }
                    None => track.poll().await,
                };
                let Some(ev) = ev else { break };
                let packet = match ev {
                    TrackRemoteEvent::OnRtpPacket(p) => p,
                    TrackRemoteEvent::OnEnded => break,
                    _ => continue,
                };
                let now = unix_ms();
                last_packet.store(now as u64, Ordering::Relaxed);
                let (seq, ts) = (packet.header.sequence_number, packet.header.timestamp);
                let Ok(bytes) = packet.marshal() else {
                    continue;
                };
                {
                    let mut meter = sinks.meter.lock().unwrap_or_else(|p| p.into_inner());
                    meter.on_packet(now, seq, ts, bytes.len());
                    if let Some(rtt) = meter.rtt_ms() {
                        reorder.set_rtt(rtt);
                    }
                }
                if decoder.is_none() {
                    match start_decoder(&sinks, codec, packet.header.payload_type, &origin) {
                        Ok(d) => decoder = Some(d),
                        Err(e) => {
                            tracing::error!(error = %e, "no decoder; frames cannot be shown");
                            return;
                        }
                    }
                }
                for (bytes, ts) in reorder.push(mono_ms(), seq, (bytes.to_vec(), ts)) {
                    if let Some(d) = decoder.as_mut() {
                        d.push(bytes, ts);
                    }
                }
            }
        });
    }
}

/// Decodes the audio track's packets and hands out the sound with its capture time.
async fn play_audio(
    track: Arc<dyn TrackRemote>,
    out: tokio::sync::mpsc::Sender<crate::audio::AudioChunk>,
    meter: Arc<Mutex<StatsMeter>>,
    origin: Arc<Mutex<Option<Origin>>>,
) {
    let decoded_meter = Arc::clone(&meter);
    let decoder = crate::audio::AudioDecoder::start(move |pcm, rtp| {
        let now = unix_ms();
        let origin = *origin.lock().unwrap_or_else(|p| p.into_inner());
        let capture = origin.and_then(|o| o.audio_capture_ms(rtp));
        decoded_meter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .on_audio_decoded(capture.map(|c| now - c));
        // A player that does not keep up loses sound, never latency.
        let _ = out.try_send(crate::audio::AudioChunk {
            level: crate::audio::level(&pcm),
            pcm,
            rtp_timestamp: rtp,
            capture_unix_ms: capture,
            decoded_unix_ms: now,
        });
    });
    let decoder = match decoder {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "no audio decoder; the sound cannot be played");
            return;
        }
    };
    while let Some(ev) = track.poll().await {
        match ev {
            TrackRemoteEvent::OnRtpPacket(p) => {
                meter
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .on_audio_packet(p.header.sequence_number);
                decoder.push(p.payload.to_vec(), p.header.timestamp);
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}

fn start_decoder(
    sinks: &Sinks,
    codec: Codec,
    payload_type: u8,
    origin: &Arc<Mutex<Option<Origin>>>,
) -> Result<Decoder> {
    let sinks = sinks.clone();
    let origin = Arc::clone(origin);
    Decoder::start(
        codec,
        payload_type,
        sinks.format,
        sinks.units.is_some(),
        move |out| {
            let now = unix_ms();
            let origin = *origin.lock().unwrap_or_else(|p| p.into_inner());
            match out {
                Output::Frame {
                    width,
                    height,
                    data,
                    rtp_timestamp,
                } => {
                    let capture = origin.map(|o| o.capture_ms(rtp_timestamp));
                    {
                        let mut meter = sinks.meter.lock().unwrap_or_else(|p| p.into_inner());
                        meter.on_frame(now, capture.map(|c| now - c));
                        meter.on_frame_size(width, height);
                    }
                    // A player that does not keep up loses frames, never latency.
                    let _ = sinks.frames.try_send(Frame {
                        width,
                        height,
                        format: sinks.format,
                        data,
                        rtp_timestamp,
                        capture_unix_ms: capture,
                        decoded_unix_ms: now,
                    });
                }
                Output::AccessUnit {
                    data,
                    rtp_timestamp,
                    keyframe,
                } => {
                    if let Some(units) = &sinks.units {
                        let _ = units.try_send(AccessUnit {
                            data,
                            keyframe,
                            rtp_timestamp,
                            capture_unix_ms: origin.map(|o| o.capture_ms(rtp_timestamp)),
                        });
                    }
                }
            }
        },
    )
}

impl Connection {
    /// Connects to the session at `whep_url` with `token`, offering `codec` only; signs
    /// delivery receipts with `player_key` (the key registered with the launch) once a second.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        node_id: &str,
        session_id: &str,
        whep_url: &str,
        token: &str,
        codec: Codec,
        route: &crate::whep::IceRoute,
        sinks: Sinks,
        player_key: Option<pixelgrid_proto::receipt::PlayerKey>,
    ) -> Result<Self> {
        let gathered = Gathered::default();
        let origin: Arc<Mutex<Option<Origin>>> = Arc::default();
        let last_packet_ms = Arc::new(AtomicU64::new(unix_ms() as u64));
        let handler = Arc::new(Handler {
            gathered: Arc::clone(&gathered),
            sinks: sinks.clone(),
            codec,
            origin: Arc::clone(&origin),
            last_packet_ms: Arc::clone(&last_packet_ms),
        });
        let whep = crate::whep::connect(
            whep_url,
            token,
            codec,
            sinks.audio.is_some(),
            route,
            handler,
            gathered,
        )
        .await?;
        // The node's silence counts from its answer: the offer waited while a packaged game
        // started (seconds for some), and that wait is not a lost node.
        let answered_ms = unix_ms() as u64;
        last_packet_ms.fetch_max(answered_ms, Ordering::Relaxed);
        let keepalive = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let channel: Arc<Mutex<Option<Arc<dyn DataChannel>>>> = Arc::default();
        let ended: Arc<Mutex<Option<String>>> = Arc::default();
        let tasks = vec![tokio::spawn(run_channel(
            Arc::clone(&whep.channel),
            Arc::clone(&channel),
            origin,
            Arc::clone(&sinks.meter),
            Arc::clone(&ended),
            (Arc::clone(&last_packet_ms), Arc::clone(&keepalive)),
            player_key.map(|k| (k, session_id.to_owned())),
        ))];
        Ok(Self {
            node_id: node_id.to_owned(),
            session_id: session_id.to_owned(),
            token: token.to_owned(),
            whep,
            channel,
            last_packet_ms,
            answered_ms,
            keepalive,
            ended,
            tasks,
        })
    }

    /// The input channel, once open.
    pub fn channel(&self) -> Arc<Mutex<Option<Arc<dyn DataChannel>>>> {
        Arc::clone(&self.channel)
    }

    /// Leaves: DELETEs the WHEP resource (briefly; the node may be gone) and closes.
    pub async fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.whep.leave(Duration::from_millis(500)).await;
    }

    /// Drops the connection without telling the node (it is gone).
    pub async fn abandon(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.whep.close().await;
    }
}

/// The `receipt` message a player sends (see `pixelgrid_proto::receipt`).
pub fn receipt_message(r: &pixelgrid_proto::receipt::Receipt, signature: &[u8]) -> String {
    serde_json::json!({
        "type": "receipt", "v": 1, "seq": r.sequence, "frames": r.frames,
        "played_ms": r.played_ms, "width": r.width, "height": r.height, "fps": r.fps,
        "at": r.at_unix_ms, "sig": pixelgrid_proto::token::hex(signature),
    })
    .to_string()
}

/// Reads the node's messages (`hello` fixes the capture-time origin, `pong` gives the RTT,
/// `ended` says the node ended the session and why), pings once a second and, with a player
/// key, signs a delivery receipt once a second.
async fn run_channel(
    dc: Arc<dyn DataChannel>,
    open: Arc<Mutex<Option<Arc<dyn DataChannel>>>>,
    origin: Arc<Mutex<Option<Origin>>>,
    meter: Arc<Mutex<StatsMeter>>,
    ended: Arc<Mutex<Option<String>>>,
    // When the node was last heard, and whether its hello announced keep-alives.
    (heard, keepalive): (Arc<AtomicU64>, Arc<std::sync::atomic::AtomicBool>),
    receipts: Option<(pixelgrid_proto::receipt::PlayerKey, String)>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut is_open = false;
    let mut receipt_sequence = 0;
    loop {
        tokio::select! {
            event = dc.poll() => match event {
                Some(DataChannelEvent::OnOpen) => {
                    is_open = true;
                    *open.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&dc));
                }
                Some(DataChannelEvent::OnMessage(msg)) => {
                    // A node that still talks is alive, even while its game keeps the pictures
                    // back (a game loading its data can starve them for seconds).
                    heard.store(unix_ms() as u64, Ordering::Relaxed);
                    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&msg.data) else { continue };
                    match v.get("type").and_then(|t| t.as_str()) {
                        Some("hello") => {
                            let rtp_epoch = v.get("rtp_epoch").and_then(|x| x.as_u64()).unwrap_or(0) as u32;
                            let epoch_unix_ms = v.get("epoch_unix_ms").and_then(|x| x.as_f64()).unwrap_or(0.0);
                            let audio_rtp_epoch = v.get("audio_rtp_epoch").and_then(|x| x.as_u64()).map(|x| x as u32);
                            *origin.lock().unwrap_or_else(|p| p.into_inner()) = Some(Origin { rtp_epoch, epoch_unix_ms, audio_rtp_epoch });
                            keepalive.store(v.get("keepalive_ms").is_some_and(|k| k.as_u64().is_some_and(|k| k > 0)), Ordering::Relaxed);
                        }
                        Some("ended") => {
                            let reason = v.get("reason").and_then(|x| x.as_str()).unwrap_or("ended by the node");
                            *ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.chars().take(500).collect());
                        }
                        Some("stats") => {
                            let field = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
                            meter.lock().unwrap_or_else(|p| p.into_inner()).on_node_link(field("estimate_kbps"), field("target_kbps"), field("fps"));
                        }
                        Some("pong") => {
                            if let Some(t) = v.get("t").and_then(|x| x.as_f64()) {
                                meter.lock().unwrap_or_else(|p| p.into_inner()).on_rtt(unix_ms() - t);
                            }
                        }
                        _ => {}
                    }
                }
                Some(DataChannelEvent::OnClose) | None => {
                    *open.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    return;
                }
                Some(_) => {}
            },
            _ = tick.tick(), if is_open => {
                let now = unix_ms();
                let ping = serde_json::json!({"type": "ping", "v": 1, "t": now}).to_string();
                let _ = dc.try_send_text(&ping).await;
                let receipt = meter.lock().unwrap_or_else(|p| p.into_inner()).receipt(now);
                if let (Some((key, session)), Some(mut r)) = (&receipts, receipt) {
                    receipt_sequence += 1;
                    r.sequence = receipt_sequence;
                    r.at_unix_ms = now as u64;
                    let _ = dc.try_send_text(&receipt_message(&r, &key.sign(session, &r))).await;
                }
            }
        }
    }
}
