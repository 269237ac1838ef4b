//! A WHEP viewer built on webrtc-rs: connects to a node, counts the RTP it receives, leaves.
//! Used by the benchmarks and tests to open many real connections cheaply; the Rust client SDK
//! builds its player on the same calls.

use crate::{Error, Result};
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
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
};

/// A connected viewer.
#[allow(missing_debug_implementations)]
pub struct Viewer {
    /// The connection.
    pub pc: Arc<dyn PeerConnection>,
    /// WHEP resource path (for DELETE).
    pub resource: String,
    /// The session token used.
    pub token: String,
    /// RTP packets received so far.
    pub packets: Arc<AtomicU64>,
    /// MIME type of the negotiated codec, once the track arrived.
    pub codec: Arc<std::sync::Mutex<Option<String>>>,
}

struct Handler {
    gathered: tokio::sync::mpsc::Sender<()>,
    packets: Arc<AtomicU64>,
    codec: Arc<std::sync::Mutex<Option<String>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.try_send(());
        }
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let packets = Arc::clone(&self.packets);
        let codec = Arc::clone(&self.codec);
        tokio::spawn(async move {
            if let Some(ssrc) = track.ssrcs().await.first().copied() {
                *codec.lock().unwrap() = track.codec(ssrc).await.map(|c| c.mime_type);
            }
            while let Some(ev) = track.poll().await {
                match ev {
                    TrackRemoteEvent::OnRtpPacket(_) => {
                        packets.fetch_add(1, Ordering::Relaxed);
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }
}

/// Connects to `whep_path` on `addr` with `token`, offering only `mime` (H.264 or VP8), with host
/// candidates on 127.0.0.1.
pub async fn connect(addr: SocketAddr, whep_path: &str, token: &str, mime: &str) -> Result<Viewer> {
    let fail = |e: webrtc::error::Error| Error::Webrtc(e.to_string());
    let mut engine = MediaEngine::default();
    let fmtp = if mime == MIME_TYPE_H264 {
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
    } else {
        ""
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
                payload_type: if mime == MIME_TYPE_VP8 { 96 } else { 102 },
            },
            RtpCodecKind::Video,
        )
        .map_err(|e| Error::Webrtc(e.to_string()))?;
    let registry = register_default_interceptors(Registry::new(), &mut engine)
        .map_err(|e| Error::Webrtc(e.to_string()))?;
    let (tx, mut gathered) = tokio::sync::mpsc::channel(1);
    let packets = Arc::new(AtomicU64::new(0));
    let codec = Arc::new(std::sync::Mutex::new(None));
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
            packets: Arc::clone(&packets),
            codec: Arc::clone(&codec),
        }))
        .with_udp_addrs(vec!["127.0.0.1:0"])
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
    let _dc = pc.create_data_channel("input", None).await.map_err(fail)?;
    let offer = pc.create_offer(None).await.map_err(fail)?;
    pc.set_local_description(offer).await.map_err(fail)?;
    let _ = tokio::time::timeout(Duration::from_secs(2), gathered.recv()).await;
    let sdp = pc
        .local_description()
        .await
        .ok_or_else(|| Error::Webrtc("no local description".into()))?
        .sdp;
    let auth = format!("Bearer {token}");
    let (status, headers, answer) = http(
        addr,
        "POST",
        whep_path,
        &[
            ("Content-Type", "application/sdp"),
            ("Authorization", &auth),
        ],
        sdp.as_bytes(),
    )
    .await?;
    if status != 201 {
        return Err(Error::Webrtc(format!(
            "WHEP POST answered {status}: {}",
            answer.trim()
        )));
    }
    let resource = headers
        .iter()
        .find(|(k, _)| k == "location")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| Error::Webrtc("WHEP answer without Location".into()))?;
    let answer = RTCSessionDescription::answer(answer).map_err(|e| Error::Webrtc(e.to_string()))?;
    pc.set_remote_description(answer).await.map_err(fail)?;
    Ok(Viewer {
        pc,
        resource,
        token: token.to_owned(),
        packets,
        codec,
    })
}

impl Viewer {
    /// Waits until `n` RTP packets arrived; false on timeout.
    pub async fn wait_for_packets(&self, n: u64, timeout: Duration) -> bool {
        let end = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < end {
            if self.packets.load(Ordering::Relaxed) >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// DELETEs the WHEP resource and closes the connection; returns the DELETE's status.
    pub async fn leave(self, addr: SocketAddr) -> Result<u16> {
        let auth = format!("Bearer {}", self.token);
        let (status, _, _) = http(
            addr,
            "DELETE",
            &self.resource,
            &[("Authorization", &auth)],
            b"",
        )
        .await?;
        let _ = self.pc.close().await;
        Ok(status)
    }
}

/// One HTTP/1.1 request over a fresh connection: (status, lower-cased headers, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<(String, String)>, String)> {
    let r =
        pixelgrid_proto::http::request(addr, method, path, headers, body, Duration::from_secs(30))
            .await
            .map_err(|e| Error::Webrtc(format!("HTTP to {addr}: {e}")))?;
    Ok((r.status, r.headers, r.body))
}
