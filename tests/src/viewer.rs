//! A counting WHEP viewer: connects through the SDK's WHEP client, counts the RTP it receives,
//! decodes nothing — cheap enough to open many at once in load tests and benchmarks.

use pixelgrid_client::whep::{Gathered, WhepConnection};
use pixelgrid_client::{Codec, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnectionEventHandler, RTCIceGatheringState};

/// A connected viewer.
pub struct Viewer {
    /// The WHEP connection.
    pub whep: WhepConnection,
    /// RTP packets received so far.
    pub packets: Arc<AtomicU64>,
    /// MIME type of the negotiated codec, once the track arrived.
    pub codec: Arc<std::sync::Mutex<Option<String>>>,
}

struct Counter {
    gathered: Gathered,
    packets: Arc<AtomicU64>,
    codec: Arc<std::sync::Mutex<Option<String>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Counter {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
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

/// Connects to `whep_path` on `addr` with `token`, offering only `mime` (H.264 or VP8).
pub async fn connect(addr: SocketAddr, whep_path: &str, token: &str, mime: &str) -> Result<Viewer> {
    let codec = if mime.eq_ignore_ascii_case("video/VP8") {
        Codec::Vp8
    } else {
        Codec::H264
    };
    let gathered = Gathered::default();
    let packets = Arc::new(AtomicU64::new(0));
    let negotiated = Arc::new(std::sync::Mutex::new(None));
    let handler = Arc::new(Counter {
        gathered: Arc::clone(&gathered),
        packets: Arc::clone(&packets),
        codec: Arc::clone(&negotiated),
    });
    let url = format!("http://{addr}{whep_path}");
    let whep = pixelgrid_client::whep::connect(
        &url,
        token,
        codec,
        false,
        &Default::default(),
        handler,
        gathered,
    )
    .await?;
    Ok(Viewer {
        whep,
        packets,
        codec: negotiated,
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
    pub async fn leave(self, _addr: SocketAddr) -> Result<u16> {
        self.whep
            .leave(Duration::from_secs(10))
            .await
            .ok_or_else(|| pixelgrid_client::Error::Connection {
                node: self.whep.addr.to_string(),
                reason: "no answer to DELETE".into(),
            })
    }
}

/// One HTTP/1.1 request over a fresh connection: (status, lower-cased headers, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<(String, String)>, String)> {
    let r =
        pixelgrid_proto::http::request(addr, method, path, headers, body, Duration::from_secs(30))
            .await?;
    Ok((r.status, r.headers, r.body))
}
