//! A WHEP client on webrtc-rs, below the [`crate::Session`]: a receive-only peer connection
//! offering one codec, with the `input` data channel, signalled by `POST`ing the offer to a WHEP
//! URL with a bearer token. [`crate::Client`] builds its sessions on it; tests and load
//! benchmarks use it to open many plain connections to a node (any WHEP server works).

use crate::decoder::Codec;
use crate::{Error, Result};
use rtc::interceptor::Registry;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler};

/// Signalled by the event handler when ICE gathering completes (the offer then carries every
/// candidate: WHEP without trickle).
pub type Gathered = Arc<tokio::sync::Notify>;

/// A connected WHEP session resource.
pub struct WhepConnection {
    /// The peer connection.
    pub pc: Arc<dyn PeerConnection>,
    /// The `input` data channel (open once the connection is up).
    pub channel: Arc<dyn DataChannel>,
    /// The node's HTTP address.
    pub addr: SocketAddr,
    /// Where its WHEP requests go (TLS for an `https://` node).
    pub target: pixelgrid_proto::http::Target,
    /// The WHEP resource (`Location`), for `DELETE`.
    pub resource: String,
    /// The bearer token used.
    pub token: String,
    /// Setting up the peer connection and gathering candidates, ms.
    pub offer_ms: f64,
    /// The WHEP POST until the node's answer (the node starts the session meanwhile), ms.
    pub answer_ms: f64,
}

impl std::fmt::Debug for WhepConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhepConnection")
            .field("addr", &self.addr)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

/// Splits `http(s)://host[:port]/path` into where requests go and the path.
pub async fn split_url(url: &str) -> Result<(pixelgrid_proto::http::Target, String)> {
    pixelgrid_proto::http::Target::from_url(url)
        .await
        .map_err(|e| Error::InvalidArgument {
            field: "url",
            reason: e.to_string(),
        })
}

/// The local address that routes to `peer` (no packet is sent), for our ICE host candidate.
fn local_ip_towards(peer: SocketAddr) -> std::net::IpAddr {
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

/// A player's interceptors: webrtc-rs's defaults (NACK, transport-cc feedback, RTCP reports)
/// with a NACK generator that asks for a lost packet at most [`NACKS_PER_PACKET`] times. The
/// default asks every 100 ms for as long as the packet is in its log: on a link that is dropping
/// packets for lack of capacity, that storm of retransmissions fills the link further.
fn player_interceptors(engine: &mut MediaEngine) -> webrtc::error::Result<Registry> {
    use rtc::interceptor::{NackGeneratorBuilder, Slot};
    use rtc::peer_connection::configuration::interceptor_registry::{
        configure_rtcp_reports, configure_twcc_receiver_only,
    };
    for parameter in ["", "pli"] {
        engine.register_feedback(
            rtc::rtp_transceiver::rtp_sender::RTCPFeedback {
                typ: "nack".into(),
                parameter: parameter.into(),
            },
            RtpCodecKind::Video,
        );
    }
    let registry = Registry::new().with(
        Slot::NackGenerator,
        NackGeneratorBuilder::new()
            .with_max_nacks_per_packet(NACKS_PER_PACKET)
            // Every 20 ms rather than 100: the packet is waited for in the reorder buffer, and
            // at 60 fps a frame is 17 ms.
            .with_interval(Duration::from_millis(20))
            .build(),
    );
    let registry = configure_twcc_receiver_only(registry, engine)?;
    Ok(configure_rtcp_reports(registry))
}

/// How often ICE checks a candidate pair while connecting.
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(25);

/// How many times a player asks for one lost packet.
pub const NACKS_PER_PACKET: u16 = 3;

/// How a connection reaches its node.
#[derive(Debug, Clone, Default)]
pub struct IceRoute {
    /// The session's STUN/TURN servers (with their credentials), from ChooseNode.
    pub servers: Vec<pixelgrid_proto::orchestrator::v1::IceServer>,
    /// Use TURN relays only.
    pub relay_only: bool,
    /// Use ICE-TCP only (no UDP socket at all).
    pub tcp_only: bool,
}

/// Offers `codec` to the WHEP endpoint at `whep_url` with `token`, relaying through
/// `route`'s servers (the session's TURN credentials) when needed, or always when relay-only;
/// `handler` receives the
/// connection's events and must notify `gathered` when ICE gathering completes.
pub async fn connect(
    whep_url: &str,
    token: &str,
    codec: Codec,
    audio: bool,
    route: &IceRoute,
    handler: Arc<dyn PeerConnectionEventHandler>,
    gathered: Gathered,
) -> Result<WhepConnection> {
    let started = std::time::Instant::now();
    let (target, path) = split_url(whep_url).await?;
    let addr = target.addr;
    let (ice_servers, relay_only) = (&route.servers, route.relay_only);
    if relay_only
        && ice_servers
            .iter()
            .all(|s| s.urls.iter().all(|u| !u.starts_with("turn")))
    {
        return Err(Error::Connection {
            node: addr.to_string(),
            reason: "relay-only play needs a TURN server, and the orchestrator handed out none \
                     (start it with --turn-url and --turn-secret-file)"
                .into(),
        });
    }
    use rtc::peer_connection::configuration::RTCIceTransportPolicy;
    let policy = if relay_only {
        RTCIceTransportPolicy::Relay
    } else {
        RTCIceTransportPolicy::All
    };
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
    if audio {
        engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: RTCRtpCodec {
                        mime_type: "audio/opus".into(),
                        clock_rate: 48_000,
                        channels: 2,
                        sdp_fmtp_line: "minptime=10;useinbandfec=1;stereo=1".into(),
                        rtcp_feedback: vec![],
                    },
                    payload_type: 111,
                },
                RtpCodecKind::Audio,
            )
            .map_err(fail)?;
    }
    let registry = player_interceptors(&mut engine).map_err(fail)?;
    let local = SocketAddr::new(local_ip_towards(addr), 0);
    let pc = PeerConnectionBuilder::new()
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_ice_servers(
                    ice_servers
                        .iter()
                        .map(|s| rtc::peer_connection::configuration::RTCIceServer {
                            urls: s.urls.clone(),
                            username: s.username.clone(),
                            credential: s.credential.clone(),
                        })
                        .collect(),
                )
                .with_ice_transport_policy(policy)
                .build(),
        )
        .with_media_engine(engine)
        .with_setting_engine(
            SettingEngineBuilder::new()
                .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
                // ICE holds a relayed pair back 2 s hoping a direct one succeeds; a relay-only
                // player has nothing better to wait for.
                .with_relay_acceptance_min_wait(relay_only.then_some(Duration::ZERO))
                // Connectivity checks every 25 ms instead of 200: the first answered check is
                // nominated on the next one, and that wait was most of a launch (1.4 s of
                // attempts per pair either way).
                .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(56))
                .build(),
        )
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(if route.tcp_only {
            vec![]
        } else {
            vec![local.to_string()]
        })
        .with_tcp_addrs(if route.tcp_only {
            vec![local.to_string()]
        } else {
            vec![]
        })
        .build()
        .await
        .map_err(fail)?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    // A player that wants no sound leaves the audio m-line out of its offer.
    let kinds: &[RtpCodecKind] = if audio {
        &[RtpCodecKind::Video, RtpCodecKind::Audio]
    } else {
        &[RtpCodecKind::Video]
    };
    for kind in kinds {
        pc.add_transceiver_from_kind(
            *kind,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                streams: vec![],
                send_encodings: vec![],
            }),
        )
        .await
        .map_err(fail)?;
    }
    let channel = pc.create_data_channel("input", None).await.map_err(fail)?;
    let offer = pc.create_offer(None).await.map_err(fail)?;
    pc.set_local_description(offer).await.map_err(fail)?;
    let _ = tokio::time::timeout(Duration::from_secs(2), gathered.notified()).await;
    let refused = |reason: String| Error::Connection {
        node: addr.to_string(),
        reason,
    };
    let sdp = pc
        .local_description()
        .await
        .ok_or_else(|| refused("no local description".into()))?
        .sdp;
    let offer_ms = started.elapsed().as_secs_f64() * 1e3;
    let posted = std::time::Instant::now();
    let auth = format!("Bearer {token}");
    let answer = pixelgrid_proto::http::request_to(
        &target,
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
    .map_err(|e| refused(format!("WHEP POST: {e}")))?;
    let answer_ms = posted.elapsed().as_secs_f64() * 1e3;
    if answer.status != 201 {
        return Err(refused(format!(
            "WHEP POST answered {}: {}",
            answer.status,
            answer.body.trim()
        )));
    }
    let resource = answer
        .headers
        .iter()
        .find(|(k, _)| k == "location")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| refused("WHEP answer without Location".into()))?;
    let passive_tcp: Vec<String> = answer
        .body
        .lines()
        .filter(|l| {
            l.starts_with("a=candidate:") && l.contains(" tcp ") && l.contains("tcptype passive")
        })
        .map(|l| l.trim_start_matches("a=").trim_end().to_owned())
        .collect();
    let description = RTCSessionDescription::answer(answer.body).map_err(fail)?;
    pc.set_remote_description(description).await.map_err(fail)?;
    if route.tcp_only {
        // webrtc-rs 0.21 opens the TCP connection to a passive candidate only when it is added
        // on its own, not when it arrives inside the answer: hand the answer's ones over again.
        for candidate in passive_tcp {
            let _ = pc
                .add_ice_candidate(rtc::peer_connection::transport::RTCIceCandidateInit {
                    candidate,
                    sdp_mline_index: Some(0),
                    ..Default::default()
                })
                .await;
        }
    }
    Ok(WhepConnection {
        pc,
        channel,
        addr,
        target,
        resource,
        token: token.to_owned(),
        offer_ms,
        answer_ms,
    })
}

impl WhepConnection {
    /// `DELETE`s the resource (waiting at most `timeout`; the node may be gone) and closes the
    /// connection. Returns the DELETE's status, if it answered.
    pub async fn leave(&self, timeout: Duration) -> Option<u16> {
        let auth = format!("Bearer {}", self.token);
        let status = pixelgrid_proto::http::request_to(
            &self.target,
            "DELETE",
            &self.resource,
            &[("Authorization", &auth)],
            b"",
            timeout,
        )
        .await
        .ok()
        .map(|r| r.status);
        self.close().await;
        status
    }

    /// Closes the connection without telling the node.
    pub async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.pc.close()).await;
    }
}
