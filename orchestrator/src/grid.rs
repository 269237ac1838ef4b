//! The control plane's operations over the store, in the orchestrator contract's own types:
//! node registration and heartbeats on leases, the two-step launch, the session lifecycle, and
//! the sweeps the leader runs. The gRPC service ([`crate::service`]) is a thin shell over this.

use crate::auth::Caller;
use crate::lifecycle::{self, SessionEvent, SessionState};
use crate::placement::{self, NodeView, Policy, Request};
use crate::slots::{self, NodeRecord, ROOT, SlotReservation};
use crate::store::{Compare, Op, Store};
use crate::{Error, Result};
use pixelgrid_proto::identity::SignedRequest;
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_proto::token::{SessionClaims, TokenSigner, TokenVerifier, format_rfc3339};
use pixelgrid_proto::types::v1 as types;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Timings of the grid.
#[derive(Debug, Clone)]
pub struct GridConfig {
    /// How often nodes heartbeat.
    pub heartbeat_interval: Duration,
    /// A node whose heartbeats stop disappears after this long.
    pub node_lease_ttl: Duration,
    /// Time a player has between CreateSession and ChooseNode.
    pub launch_ttl: Duration,
    /// Time a reserved slot waits for its player to connect.
    pub reservation_ttl: Duration,
    /// Longest a session may run (its token's expiry).
    pub session_max: Duration,
    /// Clock skew allowed on signed node requests.
    pub max_clock_skew: Duration,
    /// Longest lifetime a launch grant may ask for.
    pub grant_ttl_max: Duration,
    /// Launches (CreateSession) a studio may start at once…
    pub launch_burst: u32,
    /// …and per minute after that.
    pub launches_per_minute: u32,
    /// Reservations one studio may hold for players who have not connected yet (slots cannot
    /// be hoarded by launching and never playing); 0 means no limit.
    pub max_pending_per_studio: u32,
    /// How long an ended session's record stays readable (GetSession, ListSessions) before the
    /// store drops it; its usage record stays longer. Zero keeps records for ever.
    pub session_retention: Duration,
    /// How long usage records stay in the store (export them for billing before); zero keeps
    /// them for ever.
    pub usage_retention: Duration,
    /// Longest a node's stored status (`pixelgrid nodes`) goes unrefreshed while nothing in it
    /// changes; most heartbeats then write nothing but what the lease needs.
    pub status_every: Duration,
}

impl Default for GridConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            node_lease_ttl: Duration::from_secs(5),
            launch_ttl: Duration::from_secs(30),
            reservation_ttl: Duration::from_secs(30),
            session_max: Duration::from_secs(4 * 3600),
            max_clock_skew: Duration::from_secs(60),
            grant_ttl_max: Duration::from_secs(300),
            launch_burst: 200,
            launches_per_minute: 6000,
            max_pending_per_studio: 100,
            session_retention: Duration::from_secs(3600),
            usage_retention: Duration::from_secs(35 * 86_400),
            status_every: Duration::from_secs(5),
        }
    }
}

/// A launch between its two steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LaunchRecord {
    v: u32,
    game: String,
    #[serde(default)]
    version: Option<String>,
    region: String,
    width: u32,
    height: u32,
    fps: u32,
    codec: i32,
    max_latency_ms: u32,
    max_price: u64,
    candidates: Vec<String>,
    created_ms: u64,
    #[serde(default)]
    studio: String,
    #[serde(default)]
    player: String,
    #[serde(default)]
    grant_jti: String,
}

/// A session, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Record format version.
    pub v: u32,
    /// Session id.
    pub id: String,
    /// Game.
    pub game: String,
    /// Serving node.
    pub node: String,
    /// Slot held on it.
    pub slot: u32,
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// `types.v1.VideoCodec` value.
    pub codec: i32,
    /// Lifecycle state.
    pub state: SessionState,
    /// Created, Unix ms.
    pub created_ms: u64,
    /// Last change, Unix ms.
    pub updated_ms: u64,
    /// Why it ended.
    #[serde(default)]
    pub reason: String,
    /// The studio whose grant launched it.
    #[serde(default)]
    pub studio: String,
    /// The studio's id for its player.
    #[serde(default)]
    pub player: String,
    /// The studio seat it holds (when the studio has a concurrent-session limit).
    #[serde(default)]
    pub seat: Option<u32>,
    /// When the player connected, Unix ms; 0 until then.
    #[serde(default)]
    pub connected_ms: u64,
}

/// One ended session as metered, under `/pixelgrid/v1/usage/{studio}/{day}/…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Record format version.
    pub v: u32,
    /// The session.
    pub session: String,
    /// Its studio.
    pub studio: String,
    /// Its player.
    pub player: String,
    /// Its game.
    pub game: String,
    /// The node that served it.
    pub node: String,
    /// Mode.
    pub width: u32,
    /// Mode.
    pub height: u32,
    /// Mode.
    pub fps: u32,
    /// When the player connected (0 if never), Unix ms.
    pub started_ms: u64,
    /// When it ended, Unix ms.
    pub ended_ms: u64,
    /// Milliseconds played.
    pub played_ms: u64,
    /// How it ended.
    pub state: SessionState,
    /// Why.
    pub reason: String,
}

impl SessionRecord {
    /// What it has been played for at `now_ms`.
    pub fn played_ms(&self, now_ms: u64) -> u64 {
        if self.connected_ms == 0 {
            0
        } else {
            now_ms.saturating_sub(self.connected_ms)
        }
    }
}

/// Key of a studio.
pub fn studio_key(id: &str) -> String {
    format!("{ROOT}/studios/{id}")
}

/// Prefix of a studio's sessions that hold a slot (for the minutes of the day).
pub(crate) fn running_prefix(studio: &str) -> String {
    format!("{ROOT}/running/{studio}/")
}

fn running_key(studio: &str, session: &str) -> String {
    format!("{}{session}", running_prefix(studio))
}

/// Prefix of a studio's reservations still waiting for their player.
fn pending_prefix(studio: &str) -> String {
    format!("{ROOT}/pending/{studio}/")
}

/// An operator's drain, kept apart from the node's leased record so re-registering does not
/// lift it.
fn drained_key(node: &str) -> String {
    format!("{ROOT}/drained/{node}")
}

pub(crate) fn seat_prefix(studio: &str) -> String {
    format!("{ROOT}/seats/{studio}/")
}

pub(crate) fn usage_studio_prefix(studio: &str) -> String {
    format!("{ROOT}/usage/{studio}/")
}

pub(crate) fn usage_day_prefix(studio: &str, day: u64) -> String {
    format!("{}{day:06}/", usage_studio_prefix(studio))
}

fn grant_used_key(jti: &str) -> String {
    format!("{ROOT}/grants-used/{jti}")
}

/// What a node's latest heartbeat said, kept under the node's lease.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    /// When the heartbeat was received, Unix ms.
    pub last_heartbeat_ms: u64,
    /// CPU load, percent.
    pub cpu_load_percent: u32,
    /// Free slots the node itself reports.
    pub free_slots: u32,
    /// NVML reading as the node sent it (protobuf, base64), when it sent one.
    #[serde(default)]
    pub gpu_pb: Vec<u8>,
}

/// Key of a node's status.
pub fn status_key(node: &str) -> String {
    format!("{ROOT}/status/{node}")
}

pub(crate) fn session_key(id: &str) -> String {
    format!("{ROOT}/sessions/{id}")
}

fn launch_key(id: &str) -> String {
    format!("{ROOT}/launches/{id}")
}

/// Unix ms now.
pub use pixelgrid_proto::clock::unix_ms as now_ms;

pub(crate) fn random_id() -> String {
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    pixelgrid_proto::token::hex(&b)
}

/// A node request's `node_id` must be spelt canonically: one key, one node.
fn signer_canonical(id: Option<&str>) -> Result<()> {
    pixelgrid_proto::identity::canonical_node_id(id.unwrap_or_default())
        .map_err(|reason| invalid("node_id", reason))
}

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

/// Launch-path calls one client address may make at once through the gateway…
pub const ADDRESS_BURST: u32 = 30;
/// …and per minute after that.
pub const ADDRESS_PER_MINUTE: u32 = 300;

/// Most sessions one node may hold, and so the most session ids one heartbeat may carry.
pub const MAX_NODE_SESSIONS: u32 = 1024;

/// `host:port` or `[v6]:port` with a real port: what a probe can be sent to.
fn is_host_and_port(address: &str) -> bool {
    // Players' clients build URLs from it: a host is DNS-name characters or a bracketed IPv6
    // literal, nothing that could carry a path, a query or a header.
    let name = |h: &str| {
        h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    let literal = |h: &str| {
        h.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    };
    address.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && (name(host) || literal(host))
            && port.parse::<u16>().is_ok_and(|p| p != 0)
    })
}

/// Bounds on what a node may register: every field is stored and served to others.
fn check_registration_sizes(
    req: &pb::RegisterNodeRequest,
    caps: &types::NodeCapabilities,
    capacity: u32,
) -> Result<()> {
    let too_long = |field: &'static str, v: &str, max: usize| {
        if v.len() > max {
            Err(invalid(field, format!("at most {max} characters")))
        } else {
            Ok(())
        }
    };
    too_long("whep_base_url", &req.whep_base_url, 256)?;
    if req
        .whep_base_url
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ')
    {
        return Err(invalid(
            "whep_base_url",
            "no spaces or control characters in a URL",
        ));
    }
    too_long("probe_address", &req.probe_address, 256)?;
    too_long(
        "region.code",
        req.region.as_ref().map_or("", |r| r.code.as_str()),
        32,
    )?;
    if capacity > MAX_NODE_SESSIONS {
        return Err(invalid(
            "capabilities.capacity",
            format!("at most {MAX_NODE_SESSIONS} sessions per node"),
        ));
    }
    if caps.games_installed.len() > 256 || caps.games.len() > 256 {
        return Err(invalid("capabilities.games", "at most 256 games"));
    }
    for g in &caps.games_installed {
        too_long("capabilities.games_installed", g, 64)?;
    }
    for g in &caps.games {
        too_long("capabilities.games.id", &g.id, 64)?;
        too_long("capabilities.games.version", &g.version, 32)?;
        if g.modes.len() > 32 || g.modes.iter().any(|m| m.len() > 20) {
            return Err(invalid(
                "capabilities.games.modes",
                "at most 32 modes of at most 20 characters",
            ));
        }
    }
    Ok(())
}

/// What the sweeps changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Pending sessions whose player never came.
    pub expired: usize,
    /// Sessions whose node was lost.
    pub failed: usize,
    /// Slot keys with no live session behind them.
    pub orphans: usize,
}

/// The control plane; see the module docs.
#[derive(Debug)]
pub struct Grid {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) signer: TokenSigner,
    pub(crate) policy: Policy,
    pub(crate) config: GridConfig,
    /// Per registered node: its registration's heartbeat state (sequence, last writes).
    heartbeat_seq: Mutex<HashMap<String, crate::beats::Beats>>,
    /// The monotonic clock heartbeat decisions read (ms since this).
    started: std::time::Instant,
    pub(crate) cache: Option<Arc<crate::cache::RegistryCache>>,
    /// Keys whose tokens and grants this grid accepts: the signer's, plus a previous one
    /// during a rotation.
    pub(crate) verifier: TokenVerifier,
    /// SHA-256 of the operator credential; `None` refuses every operator call.
    pub(crate) operator_sha256: Option<String>,
    /// The studio anonymous players of the demo page launch as (`--demo-studio`); `None` in
    /// production.
    pub(crate) demo_studio: Option<String>,
    /// TURN relays handed to players with per-session credentials.
    turn: Option<crate::turn::TurnConfig>,
    pub(crate) launch_budgets: Mutex<HashMap<String, crate::studios::RateBudget>>,
    /// Launch-path calls through the gateway, per client address.
    address_budgets: Mutex<HashMap<std::net::IpAddr, crate::studios::RateBudget>>,
    /// What the control plane has done, for `/metrics`.
    pub metrics: GridMetrics,
    /// Per retention period: the shared lease records ending now are put under, and when it
    /// was granted (see [`Grid::retention_lease`]).
    retention_leases: Mutex<HashMap<Duration, (crate::store::LeaseId, std::time::Instant)>>,
}

/// Counters and the placement-latency histogram behind the orchestrator's `/metrics`.
#[derive(Debug)]
pub struct GridMetrics {
    /// Placements that reserved a slot.
    pub placed: std::sync::atomic::AtomicU64,
    /// Placements refused (no capacity, bad request, unknown launch).
    pub refused: std::sync::atomic::AtomicU64,
    /// Registrations accepted.
    pub registrations: std::sync::atomic::AtomicU64,
    /// Heartbeats accepted.
    pub heartbeats: std::sync::atomic::AtomicU64,
    /// Operations that failed because the store (etcd) failed.
    pub store_errors: std::sync::atomic::AtomicU64,
    /// ChooseNode duration, seconds.
    pub placement_seconds: pixelgrid_proto::metrics::Histogram,
    /// Calls refused for a missing or invalid credential.
    pub unauthenticated: std::sync::atomic::AtomicU64,
    /// Calls refused because the caller may not do that.
    pub denied: std::sync::atomic::AtomicU64,
    /// Launches refused by a studio limit or rate.
    pub limited: std::sync::atomic::AtomicU64,
    /// Launch grants minted.
    pub grants: std::sync::atomic::AtomicU64,
}

impl Default for GridMetrics {
    fn default() -> Self {
        Self {
            placed: Default::default(),
            refused: Default::default(),
            registrations: Default::default(),
            heartbeats: Default::default(),
            store_errors: Default::default(),
            placement_seconds: pixelgrid_proto::metrics::Histogram::latency_seconds(),
            unauthenticated: Default::default(),
            denied: Default::default(),
            limited: Default::default(),
            grants: Default::default(),
        }
    }
}

impl GridMetrics {
    /// Counts `r` into `ok` when it succeeded, into store errors when the store failed.
    fn count<T>(&self, r: &Result<T>, ok: &std::sync::atomic::AtomicU64) {
        use std::sync::atomic::Ordering::Relaxed;
        match r {
            Ok(_) => ok.fetch_add(1, Relaxed),
            Err(Error::Unavailable(_) | Error::Store(_)) => self.store_errors.fetch_add(1, Relaxed),
            Err(e) => {
                self.count_refusal(e);
                0
            }
        };
    }

    /// Counts an authorisation or limit refusal.
    pub fn count_refusal(&self, e: &Error) {
        use std::sync::atomic::Ordering::Relaxed;
        match e {
            Error::Unauthenticated(_) => self.unauthenticated.fetch_add(1, Relaxed),
            Error::PermissionDenied(_) => self.denied.fetch_add(1, Relaxed),
            Error::LimitReached(_) => self.limited.fetch_add(1, Relaxed),
            _ => 0,
        };
    }
}

impl Grid {
    /// A control plane on `store`, signing session tokens with `signer`.
    pub fn new(
        store: Arc<dyn Store>,
        signer: TokenSigner,
        policy: Policy,
        config: GridConfig,
    ) -> Self {
        Self {
            store,
            policy,
            config,
            heartbeat_seq: Mutex::new(HashMap::new()),
            started: std::time::Instant::now(),
            cache: None,
            verifier: signer.verifier(),
            signer,
            operator_sha256: None,
            demo_studio: None,
            turn: None,
            launch_budgets: Mutex::new(HashMap::new()),
            address_budgets: Mutex::new(HashMap::new()),
            metrics: GridMetrics::default(),
            retention_leases: Mutex::new(HashMap::new()),
        }
    }

    /// A lease under which a record lives `keep` (up to 1.25 × `keep`): one lease serves every
    /// record ending in the same quarter of the period, so ending a session costs no lease of
    /// its own, and the store forgets old records without a sweep. Zero: no lease (kept).
    async fn retention_lease(&self, keep: Duration) -> Result<crate::store::LeaseId> {
        if keep.is_zero() {
            return Ok(0);
        }
        let window = keep / 4;
        let lock = || {
            self.retention_leases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        };
        if let Some((lease, granted)) = lock().get(&keep)
            && granted.elapsed() < window
        {
            return Ok(*lease);
        }
        let lease = self.store.grant_lease(keep + window).await?;
        lock().insert(keep, (lease, std::time::Instant::now()));
        Ok(lease)
    }

    /// The timings changed by `change` (tests and benchmarks that compress time).
    pub fn with_config(mut self, change: impl FnOnce(&mut GridConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// Accepts `credential` (`pgo_…`) as the operator's.
    pub fn with_operator(mut self, credential: &str) -> Self {
        self.operator_sha256 = Some(crate::studios::sha256_hex(credential.trim()));
        self
    }

    /// Also accepts tokens and grants signed by these (previous) keys, during a rotation.
    pub fn with_previous_keys(mut self, public_keys_hex: &[String]) -> Result<Self> {
        let mut keys = vec![self.signer.public_key_hex()];
        keys.extend(public_keys_hex.iter().cloned());
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.verifier = TokenVerifier::from_hex_keys(&refs)
            .map_err(|e| invalid("previous token key", e.to_string()))?;
        Ok(self)
    }

    /// Hands players `turn`'s relays with credentials for their session only.
    pub fn with_turn(mut self, turn: crate::turn::TurnConfig) -> Self {
        self.turn = Some(turn);
        self
    }

    /// Lets anonymous players of the demo page launch as `studio` (a local grid only).
    pub fn with_demo_studio(mut self, studio: &str) -> Self {
        self.demo_studio = Some(studio.to_owned());
        self
    }

    /// Holds one address to [`ADDRESS_BURST`] launch-path calls at once and
    /// [`ADDRESS_PER_MINUTE`] a minute through the gateway.
    pub fn check_address_rate(&self, ip: std::net::IpAddr) -> Result<()> {
        // One bucket per IPv4 address and per IPv6 /64 (what one subscriber gets).
        let ip = match ip.to_canonical() {
            std::net::IpAddr::V6(v6) => {
                let s = v6.segments();
                std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            v4 => v4,
        };
        let now = now_ms();
        let mut budgets = self
            .address_budgets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if budgets.len() > 100_000 {
            // Forget the idle ones rather than grow without bound.
            budgets.retain(|_, b| !b.is_full(now));
        }
        let ok = budgets
            .entry(ip)
            .or_insert_with(|| {
                crate::studios::RateBudget::new(ADDRESS_BURST, ADDRESS_PER_MINUTE, now)
            })
            .try_take(now);
        if ok {
            Ok(())
        } else {
            let e = Error::LimitReached(format!(
                "{ip} makes launch calls faster than {ADDRESS_PER_MINUTE} a minute; slow down"
            ));
            self.metrics.count_refusal(&e);
            Err(e)
        }
    }

    /// The studio of the demo page, when there is one.
    pub fn demo_studio(&self) -> Option<&str> {
        self.demo_studio.as_deref()
    }

    /// Places from a watch-maintained registry cache: one store transaction per placement.
    pub fn with_cache(mut self, cache: Arc<crate::cache::RegistryCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Every registered node with its slots in use: from the watch-fed cache when there is
    /// one (it may lag the store by a moment), else from the store.
    pub async fn registry(&self) -> Result<Vec<(NodeRecord, i64)>> {
        match &self.cache {
            Some(cache) => Ok(cache.records()),
            None => slots::node_records(self.store.as_ref()).await,
        }
    }

    /// The timings in force.
    pub fn config(&self) -> &GridConfig {
        &self.config
    }

    fn check_clock(&self, sent_ms: u64) -> Result<()> {
        let skew = now_ms().abs_diff(sent_ms);
        if skew > self.config.max_clock_skew.as_millis() as u64 {
            return Err(invalid(
                "sent_unix_ms",
                format!("{skew} ms away from the orchestrator's clock; check NTP"),
            ));
        }
        Ok(())
    }

    /// A node joins: the request must be signed by the key its id names.
    pub async fn register(&self, req: pb::RegisterNodeRequest) -> Result<pb::RegisterNodeResponse> {
        let r = self.register_inner(req).await;
        self.metrics.count(&r, &self.metrics.registrations);
        r
    }

    async fn register_inner(
        &self,
        req: pb::RegisterNodeRequest,
    ) -> Result<pb::RegisterNodeResponse> {
        signer_canonical(req.signer_id())?;
        if !req.verify_signature() {
            return Err(Error::Unauthenticated(
                "RegisterNode is not signed by the key its node_id names".into(),
            ));
        }
        let id = req
            .node_id
            .as_ref()
            .map(|n| n.hex.clone())
            .unwrap_or_default();
        self.check_clock(req.sent_unix_ms)?;
        let caps = req.capabilities.clone().unwrap_or_default();
        if caps.games_installed.is_empty() {
            return Err(invalid(
                "capabilities.games_installed",
                "a node must host at least one game",
            ));
        }
        let capacity = caps
            .capacity
            .iter()
            .map(|c| c.max_sessions)
            .max()
            .unwrap_or(0);
        if capacity == 0 {
            return Err(invalid(
                "capabilities.capacity",
                "a node must hold at least one session",
            ));
        }
        if !req.whep_base_url.starts_with("http://") && !req.whep_base_url.starts_with("https://") {
            return Err(invalid("whep_base_url", "must be an http(s) URL"));
        }
        if !is_host_and_port(&req.probe_address) {
            return Err(invalid(
                "probe_address",
                format!(
                    "{:?} is not host:port; players and indexers probe the node there",
                    req.probe_address
                ),
            ));
        }
        check_registration_sizes(&req, &caps, capacity)?;
        let drained = self.store.get(&drained_key(&id)).await?.is_some();
        let lease = self.store.grant_lease(self.config.node_lease_ttl).await?;
        let record = NodeRecord {
            v: 1,
            view: NodeView {
                id: id.clone(),
                ready: !drained,
                region: req.region.map(|r| r.code).unwrap_or_default(),
                offers: caps
                    .games
                    .iter()
                    .filter(|g| caps.games_installed.contains(&g.id))
                    .map(|g| {
                        (
                            g.id.clone(),
                            crate::placement::GameOffer {
                                version: g.version.clone(),
                                name: g.name.chars().take(80).collect(),
                                modes: g.modes.clone(),
                            },
                        )
                    })
                    .collect(),
                games: caps.games_installed,
                capacity,
                used: 0,
                price: req.price.map(|p| p.micro_credits_per_minute).unwrap_or(0),
            },
            whep_base_url: req.whep_base_url.trim_end_matches('/').to_owned(),
            probe_address: req.probe_address,
            lease,
        };
        self.store
            .put(
                &slots::node_key(&id),
                serde_json::to_vec(&record).expect("serialisable"),
                lease,
            )
            .await?;
        self.heartbeat_seq
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        tracing::info!(node = %id, capacity, "node registered");
        Ok(pb::RegisterNodeResponse {
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
            lease_ttl_ms: self.config.node_lease_ttl.as_millis() as u32,
            token_public_key_hex: self.signer.public_key_hex(),
        })
    }

    pub(crate) async fn node_record(&self, id: &str) -> Result<Option<(NodeRecord, i64)>> {
        Ok(self.store.get(&slots::node_key(id)).await?.and_then(|kv| {
            serde_json::from_slice::<NodeRecord>(&kv.value)
                .ok()
                .map(|r| (r, kv.mod_revision))
        }))
    }

    /// One heartbeat: renews the node's lease, marks connected sessions active, and says which
    /// sessions the node should end and whether it should drain.
    pub async fn heartbeat(&self, hb: pb::HeartbeatRequest) -> Result<pb::HeartbeatResponse> {
        let r = self.heartbeat_inner(hb).await;
        self.metrics.count(&r, &self.metrics.heartbeats);
        r
    }

    async fn heartbeat_inner(&self, hb: pb::HeartbeatRequest) -> Result<pb::HeartbeatResponse> {
        signer_canonical(hb.signer_id())?;
        if !hb.verify_signature() {
            return Err(Error::Unauthenticated(
                "heartbeat is not signed by the key its node_id names".into(),
            ));
        }
        let id = hb
            .node_id
            .as_ref()
            .map(|n| n.hex.clone())
            .unwrap_or_default();
        self.check_clock(hb.sent_unix_ms)?;
        for (field, ids) in [
            ("active_session_ids", &hb.active_session_ids),
            ("connected_session_ids", &hb.connected_session_ids),
        ] {
            if ids.len() > MAX_NODE_SESSIONS as usize || ids.iter().any(|s| s.len() > 64) {
                return Err(invalid(
                    field,
                    format!("at most {MAX_NODE_SESSIONS} session ids of at most 64 characters"),
                ));
            }
        }
        if hb.ended_sessions.len() > MAX_NODE_SESSIONS as usize {
            return Err(invalid(
                "ended_sessions",
                format!("at most {MAX_NODE_SESSIONS}"),
            ));
        }
        // The registration first: a key that never registered leaves nothing behind here. A
        // registration this replica has already read from the store is taken from the
        // watch-fed cache; a new one (or a refusal below) is read from the store.
        let known = self
            .heartbeat_seq
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map(crate::beats::Beats::lease);
        let cached = self
            .cache
            .as_ref()
            .and_then(|c| c.record(&id))
            .filter(|r| Some(r.lease) == known);
        let from_cache = cached.is_some();
        let lapsed = || {
            Error::NotFound(format!(
                "node {id} (its registration lapsed; register again)"
            ))
        };
        let mut record = match cached {
            Some(r) => r,
            None => self.node_record(&id).await?.ok_or_else(lapsed)?.0,
        };
        // Sequences count within one registration, named by its lease, which every replica
        // reads from the store: a node that restarts and registers again (from 1, perhaps
        // through another replica) starts afresh everywhere, while a replayed heartbeat of the
        // current registration is still refused.
        let now = self.started.elapsed().as_millis() as u64;
        let timing = crate::beats::Timing {
            lease_ttl_ms: self.config.node_lease_ttl.as_millis() as u64,
            status_every_ms: self.config.status_every.as_millis() as u64,
        };
        let take = |record: &NodeRecord| {
            self.heartbeat_seq
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(id.clone())
                .or_insert_with(|| crate::beats::Beats::new(record.lease))
                .take(record.lease, hb.sequence, hb.free_slots, now, timing)
        };
        let mut taken = take(&record);
        if taken.is_err() && from_cache {
            // The cache may not have seen a new registration yet: ask the store.
            record = self.node_record(&id).await?.ok_or_else(lapsed)?.0;
            taken = take(&record);
        }
        let writes = taken.map_err(|last| {
            invalid(
                "sequence",
                format!(
                    "{} is not after {last}; replayed or reordered heartbeat",
                    hb.sequence
                ),
            )
        })?;
        let mark = |f: &dyn Fn(&mut crate::beats::Beats)| {
            if let Some(b) = self
                .heartbeat_seq
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&id)
            {
                f(b);
            }
        };
        // A node runs at most its registered capacity; more ids than that is not a real report.
        let most = record.view.capacity as usize;
        if hb.active_session_ids.len() > most
            || hb.connected_session_ids.len() > most
            || hb.ended_sessions.len() > most
        {
            return Err(invalid(
                "active_session_ids",
                format!("more session ids than the node's capacity of {most}"),
            ));
        }

        if writes.renew {
            if !self.store.keep_alive(record.lease).await? {
                return Err(Error::NotFound(format!(
                    "node {id} (its registration lapsed; register again)"
                )));
            }
            mark(&|b| b.renewed(now));
        }
        let status = NodeStatus {
            last_heartbeat_ms: now_ms(),
            cpu_load_percent: hb.cpu_load_percent,
            free_slots: hb.free_slots,
            // Stored with every heartbeat: the free-text reason is kept short.
            gpu_pb: hb
                .gpu
                .clone()
                .map(|mut g| {
                    g.unavailable_reason = g.unavailable_reason.chars().take(300).collect();
                    prost::Message::encode_to_vec(&g)
                })
                .unwrap_or_default(),
        };
        if writes.status {
            self.store
                .put(
                    &status_key(&id),
                    serde_json::to_vec(&status).expect("serialisable"),
                    record.lease,
                )
                .await?;
            mark(&|b| b.stored(now, hb.free_slots));
        }
        for sid in &hb.connected_session_ids {
            self.transition(sid, Some(&id), SessionEvent::Connected, "")
                .await?;
        }
        // Sessions the node ended itself fail with its reason (before "the player left" below).
        for ended in &hb.ended_sessions {
            let reason: String = ended.reason.chars().take(300).collect();
            self.transition(
                &ended.session_id,
                Some(&id),
                SessionEvent::NodeLost,
                &format!("the node ended it: {reason}"),
            )
            .await?;
        }
        // Active sessions the node no longer runs have ended there (the player left). A node
        // holding no slot in the watch-fed cache has none: no need to read its slots (a slot
        // taken a moment ago and not yet seen is looked at by the next heartbeat).
        let holds_slots = match &self.cache {
            Some(cache) => cache
                .grid([&id])
                .first()
                .is_none_or(|(_, _, t)| !t.is_empty()),
            None => true,
        };
        let live = if holds_slots {
            self.live_sessions(Some(&id)).await?
        } else {
            Vec::new()
        };
        for s in live.into_iter().filter_map(|(_, s)| s) {
            if s.state == SessionState::Active && !hb.active_session_ids.contains(&s.id) {
                self.transition(&s.id, Some(&id), SessionEvent::End, "the player left")
                    .await?;
            }
        }
        let mut end = Vec::new();
        for sid in &hb.active_session_ids {
            match self.session(sid).await? {
                Some(s) if s.node == id && !s.state.is_final() => {}
                _ => end.push(sid.clone()),
            }
        }
        Ok(pb::HeartbeatResponse {
            drain: !record.view.ready,
            end_session_ids: end,
        })
    }

    /// A node's last reported status.
    pub async fn status(&self, node: &str) -> Result<Option<NodeStatus>> {
        Ok(self
            .store
            .get(&status_key(node))
            .await?
            .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    /// A session's record.
    pub async fn session(&self, id: &str) -> Result<Option<SessionRecord>> {
        Ok(self
            .store
            .get(&session_key(id))
            .await?
            .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    /// Applies a lifecycle event to a session (optimistically, retried on races); frees its slot
    /// when it reaches a final state. Returns the record after the event.
    pub async fn transition(
        &self,
        id: &str,
        node: Option<&str>,
        event: SessionEvent,
        reason: &str,
    ) -> Result<Option<SessionRecord>> {
        for _ in 0..8 {
            let Some(kv) = self.store.get(&session_key(id)).await? else {
                return Ok(None);
            };
            let Ok(mut rec) = serde_json::from_slice::<SessionRecord>(&kv.value) else {
                return Ok(None);
            };
            if node.is_some_and(|n| n != rec.node) {
                return Ok(None);
            }
            let Some(next) = lifecycle::next(rec.state, event) else {
                return Ok(Some(rec));
            };
            rec.state = next;
            rec.updated_ms = now_ms();
            if next == SessionState::Active && rec.connected_ms == 0 {
                rec.connected_ms = rec.updated_ms;
            }
            if next.is_final() {
                rec.reason = reason.to_owned();
            }
            // A final record lives out its retention; so does its usage record, longer.
            let (record_lease, usage_lease) = if next.is_final() {
                (
                    self.retention_lease(self.config.session_retention).await?,
                    self.retention_lease(self.config.usage_retention).await?,
                )
            } else {
                (0, 0)
            };
            let mut ops = vec![Op::Put {
                key: session_key(id),
                value: serde_json::to_vec(&rec).expect("serialisable"),
                lease: record_lease,
            }];
            if next.is_final() {
                ops.push(Op::Delete {
                    key: slots::slot_key(&rec.node, rec.slot),
                });
                if let Some(seat) = rec.seat {
                    ops.push(Op::Delete {
                        key: format!("{}{seat}", seat_prefix(&rec.studio)),
                    });
                }
                if !rec.studio.is_empty() {
                    ops.push(Op::Delete {
                        key: running_key(&rec.studio, &rec.id),
                    });
                    // Metering is written with the final state, so no ended session goes
                    // unbilled.
                    ops.push(usage_op(&rec, usage_lease));
                }
            }
            // No longer waiting for its player (connected, or over).
            if (next.is_final() || next == SessionState::Active) && !rec.studio.is_empty() {
                ops.push(Op::Delete {
                    key: format!("{}{}", pending_prefix(&rec.studio), rec.id),
                });
            }
            let written = match self
                .store
                .txn(
                    vec![Compare::ModRevision(session_key(id), kv.mod_revision)],
                    ops,
                )
                .await
            {
                Ok(w) => w,
                Err(e) if record_lease != 0 || usage_lease != 0 => {
                    // A shared lease the store no longer has (restored, or revoked by hand):
                    // take fresh ones next time round.
                    tracing::warn!(session = %id, error = %e, "ending a session failed; retrying with fresh retention leases");
                    self.retention_leases
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clear();
                    continue;
                }
                Err(e) => return Err(e),
            };
            if written.succeeded {
                tracing::info!(session = %id, state = ?next, %reason, "session state");
                return Ok(Some(rec));
            }
        }
        Err(Error::Unavailable(format!(
            "session {id} kept changing under us; try again"
        )))
    }

    /// Launch step one: candidates for the player to measure.
    pub async fn create_session(
        &self,
        caller: &Caller,
        req: pb::CreateSessionRequest,
    ) -> Result<pb::CreateSessionResponse> {
        let r = self.create_session_inner(caller, req).await;
        if let Err(e) = &r {
            self.metrics.count_refusal(e);
        }
        r
    }

    async fn create_session_inner(
        &self,
        caller: &Caller,
        req: pb::CreateSessionRequest,
    ) -> Result<pb::CreateSessionResponse> {
        let grant = caller.require_grant("CreateSession")?.clone();
        if req.game.is_empty() || req.game.len() > 64 {
            return Err(invalid("game", "must name a game (1–64 characters)"));
        }
        if !grant.game.is_empty() && grant.game != req.game {
            return Err(Error::PermissionDenied(format!(
                "this launch grant is for game {:?} only",
                grant.game
            )));
        }
        if req
            .player_region
            .as_ref()
            .is_some_and(|r| r.code.len() > 32)
        {
            return Err(invalid("player_region.code", "at most 32 characters"));
        }
        // A spent grant is refused before it costs the studio any of its launch budget.
        if self.store.get(&grant_used_key(&grant.jti)).await?.is_some() {
            return Err(Error::Unauthenticated(
                "this launch grant was already used; ask the studio's backend for a new one".into(),
            ));
        }
        let studio = self.studio_of_grant(&grant).await?;
        let c = req.constraints.clone().unwrap_or_default();
        let mode = c.mode.unwrap_or(types::VideoMode {
            width_px: 1280,
            height_px: 720,
            fps: 60,
        });
        for (field, v, max) in [
            ("constraints.mode.width_px", mode.width_px, 4096),
            ("constraints.mode.height_px", mode.height_px, 4096),
        ] {
            if !(16..=max).contains(&v) || v % 2 != 0 {
                return Err(invalid(
                    field,
                    format!("{v} px; use an even size in 16..={max}"),
                ));
            }
        }
        if !(1..=240).contains(&mode.fps) {
            return Err(invalid(
                "constraints.mode.fps",
                format!("{}; use 1..=240", mode.fps),
            ));
        }
        if req.max_candidates > 20 {
            return Err(invalid("max_candidates", "at most 20"));
        }
        if req.game_version.len() > 32 {
            return Err(invalid("game_version", "at most 32 characters"));
        }
        if c.codecs.len() > 8 {
            return Err(invalid("constraints.codecs", "at most 8"));
        }
        self.check_studio_may_launch(&studio, &req.game, &mode)
            .await?;
        // Checked again at ChooseNode; here it costs the player no grant.
        self.check_pending(&studio.id).await?;
        let version = (!req.game_version.is_empty()).then(|| req.game_version.clone());
        // The studio's price ceiling; its player may only lower it.
        let max_price = match (c.max_micro_credits_per_minute, studio.limits.max_price) {
            (0, cap) | (cap, 0) => cap,
            (player, studio) => player.min(studio),
        };
        let mode_text = format!("{}x{}@{}", mode.width_px, mode.height_px, mode.fps);
        let region = req.player_region.map(|r| r.code).unwrap_or_default();
        let preq = Request {
            game: req.game.clone(),
            version: version.clone(),
            mode: Some(mode_text.clone()),
            region: region.clone(),
            max_price: (max_price > 0).then_some(max_price),
            only_node: (!c.node_id.is_empty()).then(|| c.node_id.clone()),
            ..Request::default()
        };
        let mut policy = self.policy.clone();
        if req.max_candidates > 0 {
            policy.max_candidates = req.max_candidates as usize;
        }
        // From the watch-fed cache; the store only when the cache offers nothing (a node that
        // registered a moment ago may not have reached it yet), and then for the precise refusal.
        let (mut picked, mut found) = match &self.cache {
            Some(cache) => cache.candidates(&preq, &policy),
            None => Default::default(),
        };
        if picked.ranked.is_empty() {
            let records = slots::node_records(self.store.as_ref()).await?;
            let views: Vec<NodeView> = records.iter().map(|(r, _)| r.view.clone()).collect();
            picked = placement::candidates(&views, &preq, &policy);
            found = picked
                .ranked
                .iter()
                .filter_map(|id| records.iter().find(|(r, _)| &r.view.id == id))
                .map(|(r, _)| {
                    (
                        r.view.id.clone(),
                        r.probe_address.clone(),
                        r.view.region.clone(),
                        r.probe_url(),
                    )
                })
                .collect();
            self.refuse_launch(&picked, &views, &req.game, version.as_deref())?;
        }

        let launch_id = random_id();
        let launch = LaunchRecord {
            v: 1,
            game: req.game,
            version,
            region,
            width: mode.width_px,
            height: mode.height_px,
            fps: mode.fps,
            codec: c
                .codecs
                .first()
                .copied()
                .unwrap_or(types::VideoCodec::H264 as i32),
            max_latency_ms: c.max_latency_ms,
            max_price,
            candidates: picked.ranked.clone(),
            created_ms: now_ms(),
            studio: studio.id.clone(),
            player: grant.player.clone(),
            grant_jti: grant.jti.clone(),
        };
        // The grant is spent in the same transaction that records the launch; its marker lives
        // as long as the grant could still verify, so a replay finds it.
        let grant_left_ms = pixelgrid_proto::token::parse_rfc3339(&grant.exp)
            .map_or(0, |exp| (exp * 1000).saturating_sub(launch.created_ms));
        // Outlives the grant by the clock skew a replica may have.
        let ttl = self
            .config
            .launch_ttl
            .max(Duration::from_millis(grant_left_ms + 1000) + self.config.max_clock_skew);
        let lease = self.store.grant_lease(ttl).await?;
        let spent = self
            .store
            .txn(
                vec![Compare::ModRevision(grant_used_key(&grant.jti), 0)],
                vec![
                    Op::Put {
                        key: launch_key(&launch_id),
                        value: serde_json::to_vec(&launch).expect("serialisable"),
                        lease,
                    },
                    Op::Put {
                        key: grant_used_key(&grant.jti),
                        value: launch_id.clone().into_bytes(),
                        lease,
                    },
                ],
            )
            .await?;
        if !spent.succeeded {
            let _ = self.store.revoke(lease).await;
            return Err(Error::Unauthenticated(
                "this launch grant was already used; ask the studio's backend for a new one".into(),
            ));
        }
        let candidates = found
            .into_iter()
            .map(|(id, probe_address, region, probe_url)| pb::Candidate {
                node_id: Some(types::NodeId { hex: id }),
                probe_address,
                region: Some(types::Region { code: region }),
                probe_url,
            })
            .collect();
        Ok(pb::CreateSessionResponse {
            launch_id,
            candidates,
            choose_before_unix_ms: launch.created_ms + self.config.launch_ttl.as_millis() as u64,
        })
    }

    /// Refuses a launch of `studio` while it holds its allowance of reservations whose players
    /// have not connected.
    async fn check_pending(&self, studio: &str) -> Result<()> {
        if studio.is_empty() || self.config.max_pending_per_studio == 0 {
            return Ok(());
        }
        let waiting = self.store.range(&pending_prefix(studio)).await?.len();
        if waiting >= self.config.max_pending_per_studio as usize {
            return Err(Error::LimitReached(format!(
                "studio {studio} has {waiting} launches waiting for their players to connect (at most {}); they free up as players connect or after {} s",
                self.config.max_pending_per_studio,
                self.config.reservation_ttl.as_secs()
            )));
        }
        Ok(())
    }

    /// Why no node can take a launch, when none can: the game is not offered by any ready node
    /// (NOT_FOUND, naming what is), or no capacity (naming the constraint).
    fn refuse_launch(
        &self,
        picked: &placement::Placement,
        views: &[NodeView],
        game: &str,
        version: Option<&str>,
    ) -> Result<()> {
        if picked.ranked.is_empty() {
            // A game nobody can run is not a capacity problem: say what the grid does offer.
            let ready_with_game = views
                .iter()
                .filter(|n| n.ready && n.has_game(game, version))
                .count();
            if ready_with_game == 0 {
                let offered: Vec<String> = games_listing(views)
                    .into_iter()
                    .filter(|g| g.ready_nodes > 0)
                    .map(|g| format!("{} {}", g.id, g.version))
                    .collect();
                return Err(Error::GameUnavailable(format!(
                    "no ready node has game {:?}{}; the grid offers: {}",
                    game.chars().take(64).collect::<String>(),
                    version
                        .map(|v| format!(" version {v:?}"))
                        .unwrap_or_default(),
                    if offered.is_empty() {
                        "nothing yet".into()
                    } else {
                        offered.join(", ")
                    }
                )));
            }
            return Err(Error::NoCapacity(picked.summary()));
        }
        Ok(())
    }

    /// The grid's catalogue from the registry: each (game, version) with its modes and how many
    /// ready nodes have it.
    pub async fn list_games(&self) -> Result<pb::ListGamesResponse> {
        let records = self.registry().await?;
        let views: Vec<NodeView> = records.into_iter().map(|(r, _)| r.view).collect();
        Ok(pb::ListGamesResponse {
            games: games_listing(&views),
        })
    }

    /// Launch step two: place with the measured round trips, reserve a slot atomically, sign the
    /// session token.
    pub async fn choose_node(
        &self,
        caller: &Caller,
        req: pb::ChooseNodeRequest,
    ) -> Result<pb::ChooseNodeResponse> {
        let started = std::time::Instant::now();
        let r = self.choose_node_inner(caller, req).await;
        self.metrics
            .placement_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.count(&r, &self.metrics.placed);
        if matches!(
            r,
            Err(Error::NoCapacity(_) | Error::InvalidArgument { .. } | Error::NotFound(_))
        ) {
            self.metrics
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    /// The orchestrator's metrics in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.metrics;
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed) as f64;
        pixelgrid_proto::metrics::Exposition::new()
            .gauge(
                "pixelgrid_orchestrator_nodes",
                "Registered nodes in this replica's registry cache.",
                &[(
                    vec![],
                    self.cache.as_ref().map_or(0, |c| c.node_count()) as f64,
                )],
            )
            .counter(
                "pixelgrid_orchestrator_placements_total",
                "ChooseNode calls, by outcome.",
                &[
                    (vec![("outcome", "placed".into())], n(&m.placed)),
                    (vec![("outcome", "refused".into())], n(&m.refused)),
                ],
            )
            .histogram(
                "pixelgrid_orchestrator_placement_seconds",
                "ChooseNode latency: placement, atomic reservation, token.",
                &m.placement_seconds,
            )
            .counter(
                "pixelgrid_orchestrator_registrations_total",
                "Node registrations accepted.",
                &[(vec![], n(&m.registrations))],
            )
            .counter(
                "pixelgrid_orchestrator_heartbeats_total",
                "Node heartbeats accepted.",
                &[(vec![], n(&m.heartbeats))],
            )
            .counter(
                "pixelgrid_orchestrator_refusals_total",
                "Calls refused: no or an invalid credential, not the caller's, over a studio's limit or rate.",
                &[
                    (vec![("reason", "unauthenticated".into())], n(&m.unauthenticated)),
                    (vec![("reason", "permission_denied".into())], n(&m.denied)),
                    (vec![("reason", "limit".into())], n(&m.limited)),
                ],
            )
            .counter(
                "pixelgrid_orchestrator_grants_total",
                "Launch grants minted.",
                &[(vec![], n(&m.grants))],
            )
            .counter(
                "pixelgrid_orchestrator_store_errors_total",
                "Operations that failed because the store (etcd) failed.",
                &[(vec![], n(&m.store_errors))],
            )
            .finish()
    }

    /// Ready when the store answers within a second.
    pub async fn ready(&self) -> std::result::Result<(), String> {
        match tokio::time::timeout(
            std::time::Duration::from_secs(1),
            self.store.get("/pixelgrid/v1/readyz"),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("the store refuses: {e}")),
            Err(_) => Err("the store does not answer within 1 s".into()),
        }
    }

    async fn choose_node_inner(
        &self,
        caller: &Caller,
        req: pb::ChooseNodeRequest,
    ) -> Result<pb::ChooseNodeResponse> {
        let grant = caller.require_grant("ChooseNode")?;
        if req.launch_id.len() > 64 || req.latencies.len() > 64 {
            return Err(invalid(
                "launch_id/latencies",
                "a launch id of at most 64 characters and at most 64 samples",
            ));
        }
        let kv = self
            .store
            .get(&launch_key(&req.launch_id))
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "launch {} (it expired or was used; call CreateSession again)",
                    req.launch_id
                ))
            })?;
        let launch: LaunchRecord =
            serde_json::from_slice(&kv.value).map_err(|e| Error::Store(e.to_string()))?;
        if launch.grant_jti != grant.jti {
            return Err(Error::PermissionDenied(format!(
                "launch {} was started with another launch grant",
                req.launch_id
            )));
        }
        if now_ms().saturating_sub(launch.created_ms) > self.config.launch_ttl.as_millis() as u64 {
            return Err(Error::NotFound(format!(
                "launch {} (it expired; call CreateSession again)",
                req.launch_id
            )));
        }
        let seats = self.seat_pool(&launch.studio).await?;
        self.check_pending(&launch.studio).await?;
        let mut rtt = std::collections::BTreeMap::new();
        for s in &req.latencies {
            let id = s
                .node_id
                .as_ref()
                .map(|n| n.hex.clone())
                .unwrap_or_default();
            if launch.candidates.contains(&id) {
                rtt.insert(id, s.rtt_ms);
            }
        }
        if rtt.is_empty() {
            return Err(invalid(
                "latencies",
                "no round trip measured to any candidate",
            ));
        }
        let player_key = pixelgrid_proto::receipt::player_key_hex(&req.player_key)
            .map_err(|reason| invalid("player_key", reason))?;
        let preq = Request {
            game: launch.game.clone(),
            version: launch.version.clone(),
            mode: Some(format!("{}x{}@{}", launch.width, launch.height, launch.fps)),
            region: launch.region.clone(),
            rtt_ms: rtt,
            max_latency_ms: (launch.max_latency_ms > 0).then_some(launch.max_latency_ms),
            max_price: (launch.max_price > 0).then_some(launch.max_price),
            waited_ms: now_ms().saturating_sub(launch.created_ms),
            // The candidates were already limited to the targeted node, if any.
            only_node: None,
        };
        let session_id = random_id();
        let now = now_ms();
        let record_for = |r: &SlotReservation| SessionRecord {
            v: 1,
            id: session_id.clone(),
            game: launch.game.clone(),
            node: r.node.clone(),
            slot: r.slot,
            width: launch.width,
            height: launch.height,
            fps: launch.fps,
            codec: launch.codec,
            state: SessionState::Pending,
            created_ms: now,
            updated_ms: now,
            reason: String::new(),
            studio: launch.studio.clone(),
            player: launch.player.clone(),
            seat: r.seat,
            connected_ms: 0,
        };
        let (reservation, placement) = slots::reserve_with(
            self.store.as_ref(),
            self.cache.as_deref(),
            &session_id,
            &preq,
            &self.policy,
            slots::Conditions {
                seats: seats.as_ref(),
                // The launch must still be there: two concurrent ChooseNode calls with one
                // grant place one session, not two.
                guard: Some(&Compare::ModRevision(
                    launch_key(&req.launch_id),
                    kv.mod_revision,
                )),
            },
            |r| {
                let mut ops = vec![
                    Op::Put {
                        key: session_key(&session_id),
                        value: serde_json::to_vec(&record_for(r)).expect("serialisable"),
                        lease: 0,
                    },
                    Op::Delete {
                        key: launch_key(&req.launch_id),
                    },
                ];
                if !launch.studio.is_empty() {
                    for key in [
                        running_key(&launch.studio, &session_id),
                        format!("{}{session_id}", pending_prefix(&launch.studio)),
                    ] {
                        ops.push(Op::Put {
                            key,
                            value: Vec::new(),
                            lease: 0,
                        });
                    }
                }
                ops
            },
        )
        .await?;
        let record = record_for(&reservation);
        let Some((node, _)) = self.node_record(&reservation.node).await? else {
            // Placed on a node that left at that moment: give the slot, seat and session back.
            self.transition(&session_id, None, SessionEvent::NodeLost, "node lost")
                .await?;
            return Err(Error::Unavailable(
                "the chosen node left the grid at that moment; launch again".into(),
            ));
        };
        let now_s = now / 1000;
        let token = self.signer.sign(&SessionClaims {
            sid: session_id.clone(),
            nid: reservation.node.clone(),
            game: launch.game.clone(),
            width: launch.width,
            height: launch.height,
            fps: launch.fps,
            iat: format_rfc3339(now_s),
            exp: format_rfc3339(now_s + self.config.session_max.as_secs()),
            aud: reservation.node.clone(),
            nbf: format_rfc3339(now_s),
            pk: player_key,
            // What the studio pays per attested minute: the price the node asked when placed.
            price: if launch.studio.is_empty() {
                0
            } else {
                reservation.price
            },
            studio: launch.studio.clone(),
        });
        tracing::info!(session = %session_id, node = %reservation.node, slot = reservation.slot, "session placed");
        Ok(pb::ChooseNodeResponse {
            session: Some(to_proto(&record)),
            session_token: token,
            whep_url: format!("{}/{session_id}", node.whep_base_url),
            rejected: placement
                .rejected
                .iter()
                .map(|(id, why)| format!("{id}: {why}"))
                .collect(),
            ice_servers: self
                .turn
                .iter()
                .map(|t| t.ice_server(&session_id, now_s))
                .collect(),
        })
    }

    /// Ends a session now and frees its slot, when `caller` may.
    pub async fn end_session(
        &self,
        caller: &Caller,
        id: &str,
        reason: &str,
    ) -> Result<SessionRecord> {
        self.session_for(caller, id, "EndSession").await?;
        let reason: String = if reason.is_empty() {
            format!("ended by {}", caller.describe())
        } else {
            reason.chars().take(200).collect()
        };
        let reason = reason.as_str();
        self.transition(id, None, SessionEvent::End, reason)
            .await?
            .ok_or_else(|| Error::NotFound(format!("session {id}")))
    }

    /// A node leaves: its registration (record, status) goes at once and its running sessions
    /// fail, freeing their slots.
    pub async fn deregister(
        &self,
        req: pb::DeregisterNodeRequest,
    ) -> Result<pb::DeregisterNodeResponse> {
        signer_canonical(req.signer_id())?;
        if !req.verify_signature() {
            return Err(Error::Unauthenticated(
                "DeregisterNode is not signed by the key its node_id names".into(),
            ));
        }
        self.check_clock(req.sent_unix_ms)?;
        let id = req.node_id.map(|n| n.hex).unwrap_or_default();
        let (record, _) = self
            .node_record(&id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("node {id}")))?;
        self.store.revoke(record.lease).await?;
        let mut failed = 0;
        for s in self
            .live_sessions(Some(&id))
            .await?
            .into_iter()
            .filter_map(|(_, s)| s)
            .filter(|s| !s.state.is_final())
        {
            if self
                .transition(&s.id, None, SessionEvent::NodeLost, "node left the grid")
                .await?
                .is_some()
            {
                failed += 1;
            }
        }
        tracing::info!(node = %id, sessions_failed = failed, "node deregistered");
        Ok(pb::DeregisterNodeResponse {
            sessions_failed: failed,
        })
    }

    /// Stops placing sessions on a node (its heartbeat answer tells it to drain), or with
    /// `ready`, takes it back.
    pub async fn set_ready(&self, id: &str, ready: bool) -> Result<NodeRecord> {
        for _ in 0..8 {
            let (mut record, revision) = self
                .node_record(id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("node {id}")))?;
            record.view.ready = ready;
            let put = Op::Put {
                key: slots::node_key(id),
                value: serde_json::to_vec(&record).expect("serialisable"),
                lease: record.lease,
            };
            let mark = if ready {
                Op::Delete {
                    key: drained_key(id),
                }
            } else {
                Op::Put {
                    key: drained_key(id),
                    value: Vec::new(),
                    lease: 0,
                }
            };
            if self
                .store
                .txn(
                    vec![Compare::ModRevision(slots::node_key(id), revision)],
                    vec![put, mark],
                )
                .await?
                .succeeded
            {
                tracing::info!(node = %id, ready, "node placement state");
                return Ok(record);
            }
        }
        Err(Error::Unavailable(format!(
            "node {id} kept changing under us; try again"
        )))
    }

    /// A session's record, when `caller` may see it (`what` names the call in refusals).
    pub async fn session_for(
        &self,
        caller: &Caller,
        id: &str,
        what: &str,
    ) -> Result<SessionRecord> {
        if matches!(caller, Caller::Anonymous) {
            // Say nothing about whether the session exists.
            return Err(Error::Unauthenticated(format!(
                "{what} needs the session token, the studio's API key or the operator credential; send it as `authorization: Bearer …`"
            )));
        }
        if id.is_empty() || id.len() > 64 {
            return Err(invalid("session_id", "1–64 characters"));
        }
        let rec = self
            .session(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("session {id}")))?;
        caller
            .may_touch(&rec, what)
            .inspect_err(|e| self.metrics.count_refusal(e))?;
        Ok(rec)
    }

    /// The session records `caller` may list (optionally one node's, one state's).
    pub async fn sessions_for(
        &self,
        caller: &Caller,
        node: &str,
        state: Option<SessionState>,
    ) -> Result<Vec<SessionRecord>> {
        let scope = caller
            .studio_scope("ListSessions")
            .inspect_err(|e| self.metrics.count_refusal(e))?;
        let mut all = self.sessions(node, state).await?;
        if let Some(studio) = scope {
            all.retain(|s| s.studio == studio);
        }
        Ok(all)
    }

    /// Every session record (optionally one node's, one state's).
    pub async fn sessions(
        &self,
        node: &str,
        state: Option<SessionState>,
    ) -> Result<Vec<SessionRecord>> {
        Ok(self
            .store
            .range(&format!("{ROOT}/sessions/"))
            .await?
            .iter()
            .filter_map(|kv| serde_json::from_slice::<SessionRecord>(&kv.value).ok())
            .filter(|s| node.is_empty() || s.node == node)
            .filter(|s| state.is_none_or(|st| s.state == st))
            .collect())
    }

    /// Every session holding a slot (on one node, or all), with its slot key. Only non-final
    /// sessions hold slots, so this is bounded by capacity, not by history; `None` marks a slot
    /// whose session record is missing.
    async fn live_sessions(
        &self,
        node: Option<&str>,
    ) -> Result<Vec<(crate::store::KeyValue, Option<SessionRecord>)>> {
        let prefix = node.map_or_else(|| format!("{ROOT}/slots/"), slots::slot_prefix);
        let mut out = Vec::new();
        for kv in self.store.range(&prefix).await? {
            let record = self.session(&String::from_utf8_lossy(&kv.value)).await?;
            out.push((kv, record));
        }
        Ok(out)
    }

    /// Nodes this replica keeps heartbeat state for.
    pub fn heartbeat_states(&self) -> usize {
        self.heartbeat_seq
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The leader's periodic work: expire reservations nobody used, fail sessions of lost nodes,
    /// free slots with no live session behind them.
    pub async fn sweep(&self, now_ms: u64) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        // Registered nodes: from the watch-fed cache when there is one (it can only lag, which
        // delays a failure by a moment), else from the store.
        let nodes: std::collections::HashSet<String> = match &self.cache {
            Some(cache) => cache
                .grid(std::iter::empty())
                .into_iter()
                .map(|(v, _, _)| v.id)
                .collect(),
            None => slots::node_records(self.store.as_ref())
                .await?
                .into_iter()
                .map(|(r, _)| r.view.id)
                .collect(),
        };
        for (slot, s) in self.live_sessions(None).await? {
            let Some(s) = s.filter(|s| !s.state.is_final()) else {
                // A slot with no live session behind it (its record ended or is gone).
                let freed = self
                    .store
                    .txn(
                        vec![Compare::ModRevision(slot.key.clone(), slot.mod_revision)],
                        vec![Op::Delete { key: slot.key }],
                    )
                    .await?;
                if freed.succeeded {
                    report.orphans += 1;
                }
                continue;
            };
            if !nodes.contains(&s.node) {
                if self
                    .transition(&s.id, None, SessionEvent::NodeLost, "node lost")
                    .await?
                    .is_some()
                {
                    report.failed += 1;
                }
                continue;
            }
            let tick = SessionEvent::Tick {
                now_ms,
                created_ms: s.created_ms,
                reservation_ttl_ms: self.config.reservation_ttl.as_millis() as u64,
            };
            if lifecycle::next(s.state, tick).is_some()
                && self
                    .transition(&s.id, None, tick, "the player never connected")
                    .await?
                    .is_some()
            {
                report.expired += 1;
            }
        }
        Ok(report)
    }
}

fn usage_op(rec: &SessionRecord, lease: crate::store::LeaseId) -> Op {
    let usage = UsageRecord {
        v: 1,
        session: rec.id.clone(),
        studio: rec.studio.clone(),
        player: rec.player.clone(),
        game: rec.game.clone(),
        node: rec.node.clone(),
        width: rec.width,
        height: rec.height,
        fps: rec.fps,
        started_ms: rec.connected_ms,
        ended_ms: rec.updated_ms,
        played_ms: rec.played_ms(rec.updated_ms),
        state: rec.state,
        reason: rec.reason.clone(),
    };
    Op::Put {
        key: format!(
            "{}{:013}-{}",
            usage_day_prefix(&rec.studio, rec.updated_ms / 86_400_000),
            rec.updated_ms,
            rec.id
        ),
        value: serde_json::to_vec(&usage).expect("serialisable"),
        lease,
    }
}

/// A usage record in the contract's form.
pub fn usage_to_proto(u: &UsageRecord) -> pb::UsageRecord {
    pb::UsageRecord {
        session_id: u.session.clone(),
        studio_id: u.studio.clone(),
        player_id: u.player.clone(),
        game: u.game.clone(),
        node_id: Some(types::NodeId {
            hex: u.node.clone(),
        }),
        mode: Some(types::VideoMode {
            width_px: u.width,
            height_px: u.height,
            fps: u.fps,
        }),
        started_unix_ms: u.started_ms,
        ended_unix_ms: u.ended_ms,
        played_ms: u.played_ms,
        final_state: state_to_proto(u.state) as i32,
        end_reason: u.reason.clone(),
    }
}

fn state_to_proto(s: SessionState) -> pb::SessionState {
    match s {
        SessionState::Pending => pb::SessionState::Pending,
        SessionState::Active => pb::SessionState::Active,
        SessionState::Ended => pb::SessionState::Ended,
        SessionState::Failed => pb::SessionState::Failed,
        SessionState::Expired => pb::SessionState::Expired,
    }
}

/// A session record in the contract's form.
pub fn to_proto(s: &SessionRecord) -> pb::Session {
    let state = state_to_proto(s.state);
    pb::Session {
        session_id: s.id.clone(),
        game: s.game.clone(),
        node_id: Some(types::NodeId {
            hex: s.node.clone(),
        }),
        mode: Some(types::VideoMode {
            width_px: s.width,
            height_px: s.height,
            fps: s.fps,
        }),
        codec: s.codec,
        state: state as i32,
        created_unix_ms: s.created_ms,
        updated_unix_ms: s.updated_ms,
        end_reason: s.reason.clone(),
        studio_id: s.studio.clone(),
        player_id: s.player.clone(),
    }
}

/// Folds nodes' games into one listing per (id, version); see [`Grid::list_games`].
pub fn games_listing(views: &[NodeView]) -> Vec<pb::GameListing> {
    let mut out: std::collections::BTreeMap<(String, String), pb::GameListing> = Default::default();
    for n in views {
        for id in &n.games {
            let offer = n.offers.get(id).cloned().unwrap_or_default();
            let entry = out
                .entry((id.clone(), offer.version.clone()))
                .or_insert_with(|| pb::GameListing {
                    id: id.clone(),
                    version: offer.version.clone(),
                    name: if offer.name.is_empty() {
                        id.clone()
                    } else {
                        offer.name.clone()
                    },
                    modes: offer.modes.clone(),
                    ..Default::default()
                });
            if n.ready {
                entry.ready_nodes += 1;
                entry.free_slots += n.capacity.saturating_sub(n.used);
            }
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod probe_address_tests {
    #[test]
    fn a_probe_address_needs_a_host_and_a_port() {
        for ok in ["127.0.0.1:8080", "node-7.example.net:443", "[::1]:8081"] {
            assert!(super::is_host_and_port(ok), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "node.example.net",
            ":8080",
            "host:0",
            "host:99999",
            "::1:80",
            "",
            // A path, a query or a header smuggled into the URLs players' clients build.
            "127.0.0.1/x:80",
            "host?a=b:80",
            "[::ffff:192.168.1.1]/x\r\nEvil: 1\r\n]:80",
            "[not-an-ip]:80",
            "host name:80",
        ] {
            assert!(!super::is_host_and_port(bad), "{bad}");
        }
    }
}
