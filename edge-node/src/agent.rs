//! The node agent: registers this node with the orchestrator (signed with the node's identity
//! key), keeps its registration alive with a heartbeat stream, reports which players connected,
//! ends the sessions the orchestrator ended, and drains when told to.

use crate::stream::StreamNode;
use crate::telemetry::{GpuTelemetry, TelemetrySource};
use crate::{Error, Result};
use pixelgrid_proto::identity::{NodeKey, SignedRequest};
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_proto::orchestrator::v1::orchestrator_client::OrchestratorClient;
use pixelgrid_proto::types::v1 as types;
use std::sync::Arc;
use std::time::Duration;

/// What the node tells the orchestrator about itself.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Orchestrator gRPC URL (`http://host:50051`).
    pub orchestrator: String,
    /// Where players POST offers: `{whep_base_url}/{session}`.
    pub whep_base_url: String,
    /// host:port of this node's `GET /probe`.
    pub probe_address: String,
    /// Region code.
    pub region: String,
    /// Micro-credits per session-minute.
    pub price: u64,
    /// Sessions this node holds.
    pub max_sessions: u32,
    /// Games hosted, with versions.
    pub games: Vec<crate::host::HostedGame>,
    /// The render device.
    pub gpu: types::GpuInfo,
    /// Encoders that work here.
    pub encoders: Vec<types::EncoderCapability>,
    /// The wall clock the node stamps its requests with (the system's; tests skew it).
    pub clock: WallClock,
}

/// A source of Unix milliseconds.
#[derive(Clone)]
pub struct WallClock(std::sync::Arc<dyn Fn() -> u64 + Send + Sync>);

impl WallClock {
    /// The system clock.
    pub fn system() -> Self {
        Self(std::sync::Arc::new(pixelgrid_proto::clock::unix_ms))
    }

    /// Any other source (a clock that jumps, in tests).
    pub fn from_fn(f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(f))
    }

    /// Now, Unix ms.
    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for WallClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WallClock({} ms)", self.now_ms())
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("{what}: {e}"))
}

/// CPU load over the last minute, percent of all cores (from /proc/loadavg).
fn cpu_load_percent() -> u32 {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|l| l.parse::<f64>().ok())
        })
        .map(|l| ((l / cores) * 100.0).clamp(0.0, 100.0) as u32)
        .unwrap_or(0)
}

/// The first GPU's NVML reading, or why there is none, in the contract's form.
fn gpu_telemetry(source: &TelemetrySource) -> types::GpuTelemetry {
    match source.sample() {
        GpuTelemetry::Available { gpus, .. } => match gpus.first() {
            Some(g) => types::GpuTelemetry {
                available: true,
                unavailable_reason: String::new(),
                gpu_utilization_percent: g.gpu_utilization_percent.unwrap_or(0),
                memory_used_bytes: g.memory_used_bytes.unwrap_or(0),
                memory_total_bytes: g.memory_total_bytes.unwrap_or(0),
                encoder_utilization_percent: g.encoder_utilization_percent.unwrap_or(0),
                encoder_sessions: g.encoder_sessions.unwrap_or(0),
                temperature_celsius: g.temperature_celsius.unwrap_or(0),
                power_milliwatts: g.power_milliwatts.unwrap_or(0),
            },
            None => types::GpuTelemetry {
                unavailable_reason: "NVML sees no GPU".into(),
                ..Default::default()
            },
        },
        GpuTelemetry::Unavailable { reason } => types::GpuTelemetry {
            unavailable_reason: reason,
            ..Default::default()
        },
    }
}

/// A registered node's agent.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    telemetry: TelemetrySource,
    key: NodeKey,
    client: OrchestratorClient<tonic::transport::Channel>,
    /// What the orchestrator answered at registration.
    pub registration: pb::RegisterNodeResponse,
    /// True while this node drains because the orchestrator asked it to (so an undrain may
    /// lift it).
    drained_by_orchestrator: std::sync::atomic::AtomicBool,
}

impl Agent {
    /// Connects and registers.
    pub async fn register(config: AgentConfig, key: NodeKey) -> Result<Self> {
        let client = pixelgrid_proto::transport::connect(&config.orchestrator)
            .await
            .map(OrchestratorClient::new)
            .map_err(|e| {
                unavailable(
                    &format!(
                        "orchestrator at {} refused the connection; is it running?",
                        config.orchestrator
                    ),
                    e,
                )
            })?;
        let mut agent = Self {
            config,
            telemetry: TelemetrySource::open(),
            key,
            client,
            registration: Default::default(),
            drained_by_orchestrator: Default::default(),
        };
        agent.registration = agent.send_registration().await?;
        Ok(agent)
    }

    async fn send_registration(&mut self) -> Result<pb::RegisterNodeResponse> {
        let c = &self.config;
        let req = pb::RegisterNodeRequest {
            node_id: Some(types::NodeId {
                hex: self.key.node_id(),
            }),
            capabilities: Some(types::NodeCapabilities {
                gpu: Some(c.gpu.clone()),
                encoders: c.encoders.clone(),
                games_installed: c.games.iter().map(|g| g.id.clone()).collect(),
                games: c
                    .games
                    .iter()
                    .map(|g| types::GameVersion {
                        id: g.id.clone(),
                        version: g.version.clone(),
                        name: g.name.clone(),
                        modes: g.modes.clone(),
                    })
                    .collect(),
                capacity: vec![types::SessionCapacity {
                    mode: Some(types::VideoMode {
                        width_px: 1280,
                        height_px: 720,
                        fps: 60,
                    }),
                    max_sessions: c.max_sessions,
                }],
            }),
            region: Some(types::Region {
                code: c.region.clone(),
            }),
            whep_base_url: c.whep_base_url.clone(),
            probe_address: c.probe_address.clone(),
            price: Some(types::Price {
                micro_credits_per_minute: c.price,
            }),
            sent_unix_ms: self.config.clock.now_ms(),
            signature: None,
        }
        .sign_with(&self.key);
        let reply = self
            .client
            .register_node(req)
            .await
            .map_err(|s| unavailable("registration refused", s.message()))?;
        tracing::info!(node = %self.key.node_id(), "registered with the orchestrator");
        Ok(reply.into_inner())
    }

    /// This node's id.
    pub fn node_id(&self) -> String {
        self.key.node_id()
    }

    /// Heartbeats until `stop` resolves, re-registering when the registration lapsed.
    pub async fn run(mut self, node: Arc<StreamNode>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut sequence = 0u64;
        loop {
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::HeartbeatRequest>(4);
            let replies = match self
                .client
                .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            {
                Ok(r) => r.into_inner(),
                Err(e) => {
                    tracing::warn!(error = %e.message(), "heartbeat stream refused; retrying");
                    tokio::select! { _ = &mut stop => return, _ = tokio::time::sleep(Duration::from_secs(1)) => continue }
                }
            };
            let interval =
                Duration::from_millis(u64::from(self.registration.heartbeat_interval_ms.max(100)));
            let outcome = self
                .beat(&node, tx, replies, interval, &mut sequence, &mut stop)
                .await;
            match outcome {
                Beat::Stopped => {
                    self.deregister().await;
                    return;
                }
                Beat::Lapsed => {
                    tracing::warn!("registration lapsed; registering again");
                    if let Ok(r) = self.send_registration().await {
                        self.registration = r;
                    }
                }
                Beat::Broken => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// Leaves the grid at once rather than waiting for the lease to lapse.
    async fn deregister(&mut self) {
        let req = pb::DeregisterNodeRequest {
            node_id: Some(types::NodeId {
                hex: self.key.node_id(),
            }),
            sent_unix_ms: self.config.clock.now_ms(),
            signature: None,
        }
        .sign_with(&self.key);
        match self.client.deregister_node(req).await {
            Ok(_) => tracing::info!("deregistered from the orchestrator"),
            Err(e) => {
                tracing::warn!(error = %e.message(), "could not deregister; the registration will lapse by itself")
            }
        }
    }

    async fn beat(
        &mut self,
        node: &Arc<StreamNode>,
        tx: tokio::sync::mpsc::Sender<pb::HeartbeatRequest>,
        mut replies: tonic::Streaming<pb::HeartbeatResponse>,
        interval: Duration,
        sequence: &mut u64,
        stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Beat {
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = &mut *stop => return Beat::Stopped,
                _ = tick.tick() => {
                    *sequence += 1;
                    let hb = pb::HeartbeatRequest {
                        node_id: Some(types::NodeId { hex: self.key.node_id() }),
                        sequence: *sequence,
                        sent_unix_ms: self.config.clock.now_ms(),
                        state: if node.is_draining() { pb::NodeState::Draining } else { pb::NodeState::Ready } as i32,
                        active_session_ids: node.session_ids().await,
                        connected_session_ids: node.take_newly_connected().await,
                        free_slots: node.free_slots().await as u32,
                        cpu_load_percent: cpu_load_percent(),
                        gpu: Some(gpu_telemetry(&self.telemetry)),
                        signature: None,
                        ended_sessions: node
                            .take_ended()
                            .into_iter()
                            .map(|(session_id, reason)| pb::EndedSession { session_id, reason })
                            .collect(),
                    }
                    .sign_with(&self.key);
                    if tx.send(hb).await.is_err() {
                        return Beat::Broken;
                    }
                }
                reply = replies.message() => match reply {
                    Ok(Some(r)) => {
                        if r.drain && !node.is_draining() {
                            tracing::info!("orchestrator asked this node to drain");
                            node.set_draining(true);
                            self.drained_by_orchestrator.store(true, std::sync::atomic::Ordering::Relaxed);
                        } else if !r.drain
                            && node.is_draining()
                            && self.drained_by_orchestrator.swap(false, std::sync::atomic::Ordering::Relaxed)
                        {
                            // Undrained by an operator (a drain of the node's own, on SIGTERM,
                            // is never lifted from outside).
                            tracing::info!("orchestrator took this node back");
                            node.set_draining(false);
                        }
                        for sid in r.end_session_ids {
                            node.end_session(&sid, "ended by the orchestrator").await;
                        }
                    }
                    Ok(None) => return Beat::Broken,
                    Err(s) if s.code() == tonic::Code::NotFound => return Beat::Lapsed,
                    Err(s) => {
                        tracing::warn!(error = %s.message(), "heartbeat failed");
                        return Beat::Broken;
                    }
                },
            }
        }
    }
}

enum Beat {
    Stopped,
    Lapsed,
    Broken,
}

/// Where players and indexers reach this node, from `--public-url` (or the listen address):
/// (the WHEP base URL, the probe's `host:port`). A URL without a port gets its scheme's; a host
/// name must resolve now, and an unspecified address (0.0.0.0) is refused, so a node never
/// registers an address its probes cannot reach.
pub fn public_endpoints(
    public_url: Option<&str>,
    listen: std::net::SocketAddr,
) -> std::result::Result<(String, String), String> {
    let public = match public_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None if listen.ip().is_unspecified() => {
            return Err(format!(
                "listening on {listen}, which nobody can reach by that address: give --public-url (http://HOST:PORT players reach this node at)"
            ));
        }
        None => format!("http://{listen}"),
    };
    let (scheme, rest) = public
        .split_once("://")
        .ok_or_else(|| format!("--public-url {public:?} is not a URL (http://HOST:PORT)"))?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        other => {
            return Err(format!(
                "--public-url {public:?}: scheme {other:?}, not http or https"
            ));
        }
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("--public-url {public:?} names no host"));
    }
    // host:port, [v6]:port, or either without a port.
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            let port: u16 = p
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("--public-url {public:?}: {p:?} is not a port"))?;
            (h.to_owned(), port)
        }
        _ => (authority.to_owned(), default_port),
    };
    let probe = format!("{host}:{port}");
    use std::net::ToSocketAddrs as _;
    let resolved: Vec<std::net::SocketAddr> = probe
        .to_socket_addrs()
        .map_err(|e| format!("--public-url host {host} does not resolve: {e}"))?
        .collect();
    if resolved.is_empty() || resolved.iter().any(|a| a.ip().is_unspecified()) {
        return Err(format!(
            "--public-url host {host} resolves to no address players can reach"
        ));
    }
    Ok((format!("{scheme}://{host}:{port}/whep"), probe))
}

#[cfg(test)]
mod endpoint_tests {
    use super::public_endpoints;

    #[test]
    fn a_public_url_becomes_a_whep_base_and_a_reachable_probe_address() {
        let listen = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            public_endpoints(None, listen).unwrap(),
            ("http://127.0.0.1:8080/whep".into(), "127.0.0.1:8080".into())
        );
        assert_eq!(
            public_endpoints(Some("http://127.0.0.1:9000/"), listen).unwrap(),
            ("http://127.0.0.1:9000/whep".into(), "127.0.0.1:9000".into())
        );
        // No port: the scheme's, not the listen address's.
        assert_eq!(
            public_endpoints(Some("http://localhost"), listen)
                .unwrap()
                .1,
            "localhost:80"
        );
        assert_eq!(
            public_endpoints(Some("https://[::1]"), listen).unwrap().1,
            "[::1]:443"
        );
        assert_eq!(
            public_endpoints(Some("http://[::1]:8081"), listen)
                .unwrap()
                .1,
            "[::1]:8081"
        );
    }

    #[test]
    fn an_address_nobody_can_reach_is_refused_with_the_reason() {
        let anywhere = "0.0.0.0:8080".parse().unwrap();
        let listen = "127.0.0.1:8080".parse().unwrap();
        for (url, at, says) in [
            (None, anywhere, "give --public-url"),
            (Some("127.0.0.1:8080"), listen, "not a URL"),
            (Some("ftp://127.0.0.1:8080"), listen, "not http or https"),
            (Some("http://127.0.0.1:99999"), listen, "is not a port"),
            (Some("http:///whep"), listen, "names no host"),
            (Some("http://node.invalid:8080"), listen, "does not resolve"),
            (
                Some("http://0.0.0.0:8080"),
                listen,
                "no address players can reach",
            ),
        ] {
            let e = public_endpoints(url, at).unwrap_err();
            assert!(e.contains(says), "{url:?}: {e}");
        }
    }
}
