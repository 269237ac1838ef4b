//! One WebRTC connection to one node: WHEP signalling, the received video track into the
//! [`Decoder`], and the `input` data channel (the node's `hello`, pings for RTT, input out).
//! A [`crate::Session`] holds one at a time and replaces it when its node is lost.

use crate::decoder::{Codec, Decoder, FrameFormat, Output};
use crate::stats::StatsMeter;
use crate::{AccessUnit, Error, Frame, Result};
use rtc::interceptor::Registry;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::shared::marshal::Marshal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
};

/// Unix time now, ms.
pub(crate) fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The node's clock origin from its `hello`: a frame with RTP timestamp `rtp` was captured at
/// `epoch_unix_ms + (rtp − rtp_epoch) / 90`.
#[derive(Debug, Clone, Copy)]
struct Origin {
    rtp_epoch: u32,
    epoch_unix_ms: f64,
}

impl Origin {
    fn capture_ms(self, rtp: u32) -> f64 {
        self.epoch_unix_ms + f64::from(rtp.wrapping_sub(self.rtp_epoch)) / 90.0
    }
}

/// What every connection of a session feeds.
#[derive(Clone)]
pub(crate) struct Sinks {
    pub frames: tokio::sync::mpsc::Sender<Frame>,
    pub units: Option<tokio::sync::mpsc::Sender<AccessUnit>>,
    pub meter: Arc<Mutex<StatsMeter>>,
    pub format: FrameFormat,
}

/// A live connection to a node.
pub(crate) struct Connection {
    pub node_id: String,
    pub session_id: String,
    pc: Arc<dyn PeerConnection>,
    channel: Arc<Mutex<Option<Arc<dyn DataChannel>>>>,
    addr: SocketAddr,
    resource: String,
    token: String,
    /// Unix ms of the latest RTP packet.
    pub last_packet_ms: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
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
    gathered: tokio::sync::mpsc::Sender<()>,
    sinks: Sinks,
    codec: Codec,
    origin: Arc<Mutex<Option<Origin>>>,
    last_packet_ms: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.try_send(());
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let sinks = self.sinks.clone();
        let origin = Arc::clone(&self.origin);
        let last_packet = Arc::clone(&self.last_packet_ms);
        let codec = self.codec;
        tokio::spawn(async move {
            let mut decoder: Option<Decoder> = None;
            while let Some(ev) = track.poll().await {
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
                sinks
                    .meter
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .on_packet(now, seq, ts, bytes.len());
                if decoder.is_none() {
                    match start_decoder(&sinks, codec, packet.header.payload_type, &origin) {
                        Ok(d) => decoder = Some(d),
                        Err(e) => {
                            tracing::error!(error = %e, "no decoder; frames cannot be shown");
                            return;
                        }
                    }
                }
                if let Some(d) = decoder.as_mut() {
                    d.push(bytes.to_vec(), ts);
                }
            }
        });
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
                    sinks
                        .meter
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .on_frame(now, capture.map(|c| now - c));
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

/// Splits `http://host:port/path` into a socket address and the path.
pub(crate) async fn split_url(url: &str) -> Result<(SocketAddr, String)> {
    let bad = |why: &str| Error::InvalidArgument {
        field: "url",
        reason: format!("{url:?}: {why}"),
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// URLs are supported"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = tokio::net::lookup_host(host)
        .await
        .map_err(|e| bad(&e.to_string()))?
        .next()
        .ok_or_else(|| bad("the host does not resolve"))?;
    Ok((addr, format!("/{path}")))
}

/// The local address that routes to `peer` (no packet is sent), for our ICE host candidate.
pub(crate) fn local_ip_towards(peer: SocketAddr) -> std::net::IpAddr {
    let any: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    std::net::UdpSocket::bind(any)
        .and_then(|s| {
            s.connect(peer)?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(peer.ip())
}

impl Connection {
    /// Connects to the session at `whep_url` with `token`, offering `codec` only.
    pub async fn open(
        node_id: &str,
        session_id: &str,
        whep_url: &str,
        token: &str,
        codec: Codec,
        sinks: Sinks,
    ) -> Result<Self> {
        let (addr, path) = split_url(whep_url).await?;
        let fail = |e: webrtc::error::Error| Error::Connection {
            node: addr.to_string(),
            reason: e.to_string(),
        };
        let mut engine = MediaEngine::default();
        let (mime, fmtp, pt) = match codec {
            Codec::H264 => (
                MIME_TYPE_H264,
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
                102,
            ),
            Codec::Vp8 => (MIME_TYPE_VP8, "", 96),
        };
        engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: RTCRtpCodec {
                        mime_type: mime.into(),
                        clock_rate: 90_000,
                        channels: 0,
                        sdp_fmtp_line: fmtp.into(),
                        rtcp_feedback: vec![],
                    },
                    payload_type: pt,
                },
                RtpCodecKind::Video,
            )
            .map_err(fail)?;
        let registry = register_default_interceptors(Registry::new(), &mut engine).map_err(fail)?;
        let (tx, mut gathered) = tokio::sync::mpsc::channel(1);
        let origin: Arc<Mutex<Option<Origin>>> = Arc::default();
        let last_packet_ms = Arc::new(AtomicU64::new(unix_ms() as u64));
        let local = SocketAddr::new(local_ip_towards(addr), 0);
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(engine)
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
                    .build(),
            )
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Handler {
                gathered: tx,
                sinks: sinks.clone(),
                codec,
                origin: Arc::clone(&origin),
                last_packet_ms: Arc::clone(&last_packet_ms),
            }))
            .with_udp_addrs(vec![local.to_string()])
            .build()
            .await
            .map_err(fail)?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        pc.add_transceiver_from_kind(
            RtpCodecKind::Video,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                streams: vec![],
                send_encodings: vec![],
            }),
        )
        .await
        .map_err(fail)?;
        let dc = pc.create_data_channel("input", None).await.map_err(fail)?;
        let offer = pc.create_offer(None).await.map_err(fail)?;
        pc.set_local_description(offer).await.map_err(fail)?;
        let _ = tokio::time::timeout(Duration::from_secs(2), gathered.recv()).await;
        let sdp = pc
            .local_description()
            .await
            .ok_or_else(|| Error::Connection {
                node: addr.to_string(),
                reason: "no local description".into(),
            })?
            .sdp;
        let auth = format!("Bearer {token}");
        let answer = pixelgrid_proto::http::request(
            addr,
            "POST",
            &path,
            &[
                ("Content-Type", "application/sdp"),
                ("Authorization", &auth),
            ],
            sdp.as_bytes(),
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| Error::Connection {
            node: addr.to_string(),
            reason: format!("WHEP POST: {e}"),
        })?;
        if answer.status != 201 {
            return Err(Error::Connection {
                node: addr.to_string(),
                reason: format!(
                    "WHEP POST answered {}: {}",
                    answer.status,
                    answer.body.trim()
                ),
            });
        }
        let resource = answer
            .headers
            .iter()
            .find(|(k, _)| k == "location")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| Error::Connection {
                node: addr.to_string(),
                reason: "WHEP answer without Location".into(),
            })?;
        let description = RTCSessionDescription::answer(answer.body).map_err(fail)?;
        pc.set_remote_description(description).await.map_err(fail)?;
        let channel: Arc<Mutex<Option<Arc<dyn DataChannel>>>> = Arc::default();
        let tasks = vec![tokio::spawn(run_channel(
            dc,
            Arc::clone(&channel),
            origin,
            Arc::clone(&sinks.meter),
        ))];
        Ok(Self {
            node_id: node_id.to_owned(),
            session_id: session_id.to_owned(),
            pc,
            channel,
            addr,
            resource,
            token: token.to_owned(),
            last_packet_ms,
            tasks,
        })
    }

    /// The input channel, once open.
    pub fn channel(&self) -> Arc<Mutex<Option<Arc<dyn DataChannel>>>> {
        Arc::clone(&self.channel)
    }

    /// Leaves: DELETEs the WHEP resource (briefly; the node may be gone) and closes.
    pub async fn close(self) {
        let auth = format!("Bearer {}", self.token);
        let _ = pixelgrid_proto::http::request(
            self.addr,
            "DELETE",
            &self.resource,
            &[("Authorization", &auth)],
            b"",
            Duration::from_millis(500),
        )
        .await;
        self.abandon().await;
    }

    /// Drops the connection without telling the node (it is gone).
    pub async fn abandon(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.pc.close()).await;
    }
}

/// Reads the node's messages (`hello` fixes the capture-time origin, `pong` gives the RTT) and
/// pings once a second.
async fn run_channel(
    dc: Arc<dyn DataChannel>,
    open: Arc<Mutex<Option<Arc<dyn DataChannel>>>>,
    origin: Arc<Mutex<Option<Origin>>>,
    meter: Arc<Mutex<StatsMeter>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut is_open = false;
    loop {
        tokio::select! {
            event = dc.poll() => match event {
                Some(DataChannelEvent::OnOpen) => {
                    is_open = true;
                    *open.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&dc));
                }
                Some(DataChannelEvent::OnMessage(msg)) => {
                    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&msg.data) else { continue };
                    match v.get("type").and_then(|t| t.as_str()) {
                        Some("hello") => {
                            let rtp_epoch = v.get("rtp_epoch").and_then(|x| x.as_u64()).unwrap_or(0) as u32;
                            let epoch_unix_ms = v.get("epoch_unix_ms").and_then(|x| x.as_f64()).unwrap_or(0.0);
                            *origin.lock().unwrap_or_else(|p| p.into_inner()) = Some(Origin { rtp_epoch, epoch_unix_ms });
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
                let ping = serde_json::json!({"type": "ping", "v": 1, "t": unix_ms()}).to_string();
                let _ = dc.try_send_text(&ping).await;
            }
        }
    }
}
