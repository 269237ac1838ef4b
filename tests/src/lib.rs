//! PixelGrid's integration harness. Starts real components — an edge node in-process on a free
//! loopback port, headless Chromium inside a network namespace the test made itself — so that a
//! new end-to-end test or benchmark is a few lines. Every helper fails loudly, naming what to
//! install, when a component is missing; nothing is skipped.

#![allow(clippy::print_stdout, missing_debug_implementations)]

pub mod faults;
pub mod impair;
pub mod turn;
pub mod viewer;

use edge_node::game::Catalogue;
use edge_node::host::SessionHost;
use edge_node::stream::{DevSession, PeerSettings, StreamNode, StreamSettings};
use pixelgrid_proto::token::{SessionClaims, TokenSigner, format_rfc3339};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const NODE_ID: &str = "test-node";
const NETNS_ENV: &str = "PIXELGRID_TEST_IN_NETNS";

/// A node serving on a free loopback port, with its own runtime.
pub struct TestNode {
    pub addr: SocketAddr,
    pub node: Arc<StreamNode>,
    pub signer: TokenSigner,
    pub runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestNode {
    pub fn start() -> Self {
        Self::start_with(Duration::from_secs(600))
    }

    pub fn start_with(dev_token_ttl: Duration) -> Self {
        Self::start_hosting(Catalogue::default(), dev_token_ttl)
    }

    /// A node that drops viewers not connected `connect_deadline` after their answer.
    pub fn start_with_connect_deadline(connect_deadline: Duration) -> Self {
        Self::start_configured(
            Catalogue::default(),
            Duration::from_secs(600),
            connect_deadline,
        )
    }

    /// A node hosting `catalogue`'s games.
    pub fn start_hosting(catalogue: Catalogue, dev_token_ttl: Duration) -> Self {
        Self::start_configured(
            catalogue,
            dev_token_ttl,
            edge_node::stream::DEFAULT_CONNECT_DEADLINE,
        )
    }

    fn start_configured(
        catalogue: Catalogue,
        dev_token_ttl: Duration,
        connect_deadline: Duration,
    ) -> Self {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let host =
            Arc::new(SessionHost::start(catalogue, None).expect("Vulkan and GStreamer must work"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let signer = TokenSigner::from_seed(&[42; 32]);
        let settings = StreamSettings {
            node_id: NODE_ID.into(),
            peer: PeerSettings {
                udp_addrs: vec![SocketAddr::new(ip, 0)],
                tcp_addrs: vec![SocketAddr::new(ip, 0)],
                ice_servers: vec![],
                input_limits: Default::default(),
                congestion_control: true,
                connect_deadline,
            },
            dev_token_ttl,
            encoder_threads: 1,
            max_sessions: 64,
            identity: None,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (node, addr) = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
                .await
                .unwrap();
            let addr = listener.local_addr().unwrap();
            let node = StreamNode::new(host, settings, signer.verifier(), Some(signer.clone()));
            let served = Arc::clone(&node);
            tokio::spawn(async move {
                let _ = edge_node::stream::serve(listener, served, async {
                    let _ = stop_rx.await;
                })
                .await;
            });
            (node, addr)
        });
        Self {
            addr,
            node,
            signer,
            runtime,
            stop: Some(stop_tx),
        }
    }

    pub fn dev_session(&self, width: u32, height: u32, fps: u32) -> DevSession {
        let mode = edge_node::video::VideoMode::new(width, height, fps).unwrap();
        self.node.dev_session("arena", mode).unwrap()
    }

    /// A token signed by the trusted key, with the given fields and expiry offset.
    pub fn token(&self, sid: &str, nid: &str, expires_in_s: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        self.signer.sign(&SessionClaims {
            sid: sid.into(),
            nid: nid.into(),
            game: "arena".into(),
            width: 320,
            height: 240,
            fps: 30,
            iat: format_rfc3339((now - 120) as u64),
            exp: format_rfc3339((now + expires_in_s) as u64),
            aud: nid.into(),
            nbf: format_rfc3339((now - 120) as u64),
            pk: String::new(),
            ..Default::default()
        })
    }

    pub fn live_sessions(&self) -> usize {
        self.runtime.block_on(self.node.sessions()).len()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.runtime.block_on(self.node.close_all());
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Status, lower-cased headers, body.
pub type HttpReply = (u16, Vec<(String, String)>, String);

/// One blocking HTTP/1.1 request (for tests that fire requests from plain threads).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpReply {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(viewer::http(addr, method, path, headers, body))
        .expect("HTTP request to the node")
}

/// True when this process runs inside the namespace [`reexec_in_network_namespace`] made.
pub fn in_test_namespace() -> bool {
    std::env::var_os(NETNS_ENV).is_some()
}

/// Brings `lo` up inside the test namespace.
pub fn bring_up_loopback() {
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("`ip` (Debian iproute2) must be installed");
    assert!(up.success(), "cannot bring lo up in the test namespace");
}

/// Runs this executable again with `args` inside a new network namespace that has only `lo`,
/// so that nothing a browser does can reach beyond the machine. Needs root and util-linux.
pub fn reexec_in_network_namespace(args: &[std::ffi::OsString]) -> std::process::ExitStatus {
    let exe = std::env::current_exe().expect("own executable");
    Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(&exe)
        .args(args)
        .env(NETNS_ENV, "1")
        .status()
        .expect("`unshare` (util-linux) must be installed; browser tests need root for a network namespace")
}

/// Runs the calling test again inside its own network namespace. Returns true in that child
/// (run the test body), false in the parent (after asserting the child passed).
pub fn in_own_network_namespace(test: &str) -> bool {
    if in_test_namespace() {
        bring_up_loopback();
        return true;
    }
    let args: Vec<std::ffi::OsString> = [test, "--exact", "--nocapture", "--test-threads=1"]
        .iter()
        .map(Into::into)
        .collect();
    let status = reexec_in_network_namespace(&args);
    assert!(
        status.success(),
        "{test} failed inside its network namespace (see output above)"
    );
    false
}

pub fn chromium_binary() -> &'static str {
    let path = "/usr/lib/chromium/chromium";
    assert!(
        std::path::Path::new(path).exists(),
        "Chromium is missing: install Debian's `chromium` (deploy/install-deps.sh does)"
    );
    path
}

/// Opens `url` in headless Chromium and returns the page's `PIXELGRID_RESULT` JSON.
pub fn chromium_result(url: &str, timeout: Duration) -> serde_json::Value {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium_binary())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--autoplay-policy=no-user-gesture-required",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("PIXELGRID_RESULT ").nth(1) {
                let json = rest
                    .rsplit_once("\", source:")
                    .map(|(j, _)| j)
                    .unwrap_or(rest);
                let _ = tx.send(json.to_owned());
            }
        }
    });
    let result = rx.recv_timeout(timeout);
    let _ = child.kill();
    let _ = child.wait();
    let json =
        result.unwrap_or_else(|_| panic!("Chromium gave no result for {url} within {timeout:?}"));
    let value: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("bad result JSON ({e}): {json}"));
    assert!(value.get("error").is_none(), "the page failed: {value}");
    value
}

/// Reads a number from /proc/self/status (`Threads`, `VmRSS` in kB).
pub fn proc_status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .and_then(|r| r.trim_start_matches(':').split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Polls `f` until it is true or `timeout` passes; returns whether it became true.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A free TCP port on 127.0.0.1 (released for the caller to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free loopback UDP port.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A single-member etcd on free loopback ports (see [`orchestrator::store::LocalEtcd`]).
pub struct Etcd {
    _etcd: orchestrator::store::LocalEtcd,
    /// Client URL, `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Etcd {
    /// Starts etcd and waits until it accepts connections; fails loudly when it cannot.
    pub fn start() -> Self {
        let etcd = orchestrator::store::LocalEtcd::start(1).unwrap_or_else(|e| panic!("{e}"));
        Self {
            endpoint: etcd.endpoints[0].clone(),
            _etcd: etcd,
        }
    }
}

/// A second orchestrator replica, from [`TestGrid::start_replica`]; gone (as with `kill -9`)
/// when dropped.
pub struct Replica {
    /// Its gRPC address.
    pub orchestrator: SocketAddr,
    /// Its gRPC and gateway addresses (for [`TestGrid::start_replica_at`]).
    pub addrs: (SocketAddr, SocketAddr),
    /// True while it leads the sweeps.
    pub leading: Arc<std::sync::atomic::AtomicBool>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
    _stop: tokio::sync::watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// An indexer started by [`TestGrid::start_indexer`], on a runtime of its own (so a restart
/// takes all of it away at once, as the end of a process does).
#[derive(Debug)]
pub struct TestIndexer {
    /// The indexer itself (its tally and ledger).
    pub indexer: Arc<indexer::daemon::Indexer>,
    /// Its gRPC URL.
    pub url: String,
    config: indexer::daemon::DaemonConfig,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    _ledger: tempfile::TempDir,
}

impl TestIndexer {
    /// Serves `indexer` on `addr` (a free port when none), waiting for a lingering old socket.
    fn serve(
        indexer: &Arc<indexer::daemon::Indexer>,
        addr: Option<SocketAddr>,
    ) -> (tokio::runtime::Runtime, SocketAddr) {
        let runtime = control_runtime();
        let indexer = Arc::clone(indexer);
        let addr = runtime.block_on(async move {
            let listener = bind_again(addr).await;
            let addr = listener.local_addr().expect("its address");
            tokio::spawn(indexer::daemon::serve(
                listener,
                indexer,
                std::future::pending(),
            ));
            addr
        });
        (runtime, addr)
    }

    /// Gone at once, as with `kill -9`: its tasks and connections with it.
    pub fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Back after [`TestIndexer::kill`], on the same ledger and address: it rebuilds its tally
    /// from the ledger.
    pub fn restart(&mut self) {
        self.indexer = indexer::daemon::Indexer::open(self.config.clone())
            .expect("the indexer opens its ledger again");
        let (runtime, _) = Self::serve(&self.indexer, Some(self.addr));
        self.runtime = Some(runtime);
    }
}

impl Drop for TestIndexer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// An orchestrator and registered edge nodes, in-process on loopback, sharing one runtime.
pub struct TestGrid {
    /// The orchestrator's gRPC address.
    pub orchestrator: SocketAddr,
    /// The orchestrator's player page and JSON gateway.
    pub gateway: SocketAddr,
    /// The control plane itself.
    pub grid: Arc<orchestrator::grid::Grid>,
    /// The edge nodes, each with its HTTP address.
    pub nodes: Vec<(SocketAddr, Arc<StreamNode>)>,
    /// True while this grid's replica leads the sweeps.
    pub leading: Arc<std::sync::atomic::AtomicBool>,
    /// Nodes added from now on report to these indexers.
    pub reporting: Option<edge_node::reporter::ReporterConfig>,
    /// Per node (same order as `nodes`): its server, agent and reporter tasks.
    node_tasks: Vec<Vec<tokio::task::JoinHandle<()>>>,
    pub runtime: tokio::runtime::Runtime,
    /// The operator credential this orchestrator accepts.
    pub operator: String,
    /// The API key of [`TEST_STUDIO`], which has no limits.
    pub api_key: String,
    /// Token keys (hex) nodes added from now on pin (the grid's own by default).
    pub trusted_token_keys: Vec<String>,
    /// Whether nodes added from now on run congestion control (on by default).
    pub congestion_control: bool,
    /// Nodes added from now on serve HTTPS with this (a certificate for `localhost`), and
    /// register `https://localhost:PORT` addresses.
    pub node_tls: Option<tokio_rustls::TlsAcceptor>,
    /// The price nodes added from now on ask, micro-credits per minute.
    pub node_price: u64,
    /// How nodes added from now on reach the orchestrator (`http://…`), when not directly
    /// (through a [`faults::Partition`], say).
    pub orchestrator_for_nodes: Option<String>,
    /// Each node's clock error, ms, in the order they were added (0: the system clock): set
    /// one to make that node's clock jump.
    pub node_clock_skews: Vec<Arc<std::sync::atomic::AtomicI64>>,
    /// The control plane's server, gateway and leader tasks, and what stops them.
    control: Vec<tokio::task::JoinHandle<()>>,
    stop_control: tokio::sync::watch::Sender<bool>,
    control_runtime: Option<tokio::runtime::Runtime>,
}

fn control_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A test grid's control plane on `store`: short leases (so tests of node loss are quick), the
/// registry cache, `operator`'s credential, and the player page handing out grants of the test
/// studio (loopback only).
async fn control_plane(
    store: Arc<dyn orchestrator::store::Store>,
    operator: &str,
) -> orchestrator::grid::Grid {
    let config = orchestrator::grid::GridConfig {
        heartbeat_interval: Duration::from_millis(300),
        node_lease_ttl: Duration::from_secs(2),
        reservation_ttl: Duration::from_secs(3),
        ..orchestrator::grid::GridConfig::default()
    };
    let cache = orchestrator::cache::RegistryCache::start(Arc::clone(&store))
        .await
        .expect("registry cache");
    orchestrator::grid::Grid::new(
        store,
        TokenSigner::from_seed(&GRID_TOKEN_SEED),
        orchestrator::placement::Policy::default(),
        config,
    )
    .with_cache(cache)
    .with_operator(operator)
    .with_demo_studio(TEST_STUDIO)
}

/// Binds `addr` (a free loopback port when none). A restarted daemon takes its old port back;
/// the old socket may linger a moment, so this tries for 5 s.
async fn bind_again(addr: Option<SocketAddr>) -> tokio::net::TcpListener {
    let addr = addr.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
    for _ in 0..50 {
        if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot bind {addr}")
}

/// Serves `grid`'s gRPC API and gateway (on `at`'s addresses, or free ports) and runs its
/// leader loop until `stop` says true; returns the addresses and the tasks.
async fn serve_control_plane(
    at: Option<(SocketAddr, SocketAddr)>,
    grid: &Arc<orchestrator::grid::Grid>,
    leading: &Arc<std::sync::atomic::AtomicBool>,
    stop: &tokio::sync::watch::Sender<bool>,
) -> ((SocketAddr, SocketAddr), Vec<tokio::task::JoinHandle<()>>) {
    let listener = bind_again(at.map(|a| a.0)).await;
    let http = bind_again(at.map(|a| a.1)).await;
    let addrs = (listener.local_addr().unwrap(), http.local_addr().unwrap());
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let tasks = vec![
        tokio::spawn({
            let f = orchestrator::serve_gateway(http, Arc::clone(grid), stopped(stop.subscribe()));
            async move {
                let _ = f.await;
            }
        }),
        tokio::spawn({
            let f = orchestrator::serve(listener, Arc::clone(grid), stopped(stop.subscribe()));
            async move {
                let _ = f.await;
            }
        }),
        tokio::spawn(orchestrator::leader::run(
            Arc::clone(grid),
            "test".into(),
            Duration::from_secs(2),
            Duration::from_millis(200),
            Arc::clone(leading),
        )),
    ];
    (addrs, tasks)
}

/// Seed of every [`TestGrid`]'s token signing key.
pub const GRID_TOKEN_SEED: [u8; 32] = [9; 32];

/// The studio every [`TestGrid`] creates.
pub const TEST_STUDIO: &str = "test-studio";

/// `request` with `authorization: Bearer <credential>`.
pub fn bearer<T>(request: T, credential: &str) -> tonic::Request<T> {
    pixelgrid_proto::transport::with_bearer(request, credential).expect("a header value")
}

impl TestGrid {
    /// Starts an orchestrator on `store` (short leases, so tests of node loss are quick) and
    /// `nodes` edge nodes with `max_sessions` each.
    pub fn start(
        store: Arc<dyn orchestrator::store::Store>,
        nodes: usize,
        max_sessions: u32,
    ) -> Self {
        Self::start_configured(store, nodes, max_sessions, |grid| grid)
    }

    /// [`TestGrid::start`], with the control plane adjusted by `configure` before it serves
    /// (for example `|g| g.with_turn(…)`).
    pub fn start_configured(
        store: Arc<dyn orchestrator::store::Store>,
        nodes: usize,
        max_sessions: u32,
        configure: impl FnOnce(orchestrator::grid::Grid) -> orchestrator::grid::Grid,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let operator = orchestrator::auth::new_operator_credential(&[0x11; 32]);
        let grid = Arc::new(configure(runtime.block_on(control_plane(store, &operator))));
        let api_key = runtime
            .block_on(grid.create_studio(
                &orchestrator::auth::Caller::Operator,
                pixelgrid_proto::orchestrator::v1::CreateStudioRequest {
                    studio_id: TEST_STUDIO.into(),
                    name: "Test studio".into(),
                    ..Default::default()
                },
            ))
            .or_else(|e| {
                // A second grid on the same store (a replica) finds the studio there: a key of
                // its own then.
                if e.to_string().contains("already exists") {
                    runtime
                        .block_on(
                            grid.add_studio_key(&orchestrator::auth::Caller::Operator, TEST_STUDIO),
                        )
                        .map(
                            |k| pixelgrid_proto::orchestrator::v1::CreateStudioResponse {
                                studio: None,
                                api_key: k.api_key,
                            },
                        )
                } else {
                    Err(e)
                }
            })
            .expect("test studio")
            .api_key;
        let leading = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop, _) = tokio::sync::watch::channel(false);
        // The control plane runs on a runtime of its own, so a restart can take all of it away
        // at once (connections included), as the end of a process does.
        let control_runtime = control_runtime();
        let ((orchestrator, gateway), control) =
            control_runtime.block_on(serve_control_plane(None, &grid, &leading, &stop));
        let mut me = Self {
            orchestrator,
            gateway,
            grid,
            control,
            stop_control: stop,
            control_runtime: Some(control_runtime),
            nodes: Vec::new(),
            leading,
            reporting: None,
            node_tasks: Vec::new(),
            runtime,
            operator,
            api_key,
            trusted_token_keys: vec![TokenSigner::from_seed(&GRID_TOKEN_SEED).public_key_hex()],
            congestion_control: true,
            node_tls: None,
            node_price: 0,
            orchestrator_for_nodes: None,
            node_clock_skews: Vec::new(),
        };
        for i in 0..nodes {
            me.add_node(i as u8, max_sessions);
        }
        me
    }

    /// Stops the control plane (server, gateway, leader) and starts a new one on `store` at the
    /// same addresses, as an orchestrator process restarted on its state would be; the nodes
    /// keep running and find it again.
    pub fn restart_orchestrator(&mut self, store: Arc<dyn orchestrator::store::Store>) {
        self.restart_orchestrator_after(store, Duration::ZERO);
    }

    /// [`TestGrid::restart_orchestrator`], the orchestrator staying down for `down` first.
    pub fn restart_orchestrator_after(
        &mut self,
        store: Arc<dyn orchestrator::store::Store>,
        down: Duration,
    ) {
        // Gone at once, as with kill -9: every task of the old control plane, its connections
        // to the nodes included.
        self.stop_control.send_replace(true);
        for t in std::mem::take(&mut self.control) {
            t.abort();
        }
        if let Some(old) = self.control_runtime.take() {
            old.shutdown_background();
        }
        std::thread::sleep(down);
        let at = (self.orchestrator, self.gateway);
        let operator = self.operator.clone();
        let runtime = control_runtime();
        let (grid, leading, control, stop) = runtime.block_on(async move {
            let grid = Arc::new(control_plane(store, &operator).await);
            let leading = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (stop, _) = tokio::sync::watch::channel(false);
            let (_, control) = serve_control_plane(Some(at), &grid, &leading, &stop).await;
            (grid, leading, control, stop)
        });
        self.control_runtime = Some(runtime);
        self.grid = grid;
        self.leading = leading;
        self.control = control;
        self.stop_control = stop;
    }

    /// Starts a second orchestrator replica of this grid on `store` (its own runtime and free
    /// ports, its own leader campaign), as another process of the same deployment.
    pub fn start_replica(&self, store: Arc<dyn orchestrator::store::Store>) -> Replica {
        self.start_replica_at(store, None)
    }

    /// [`TestGrid::start_replica`] on `at`'s addresses (gRPC, gateway): a replica started again
    /// where it was.
    pub fn start_replica_at(
        &self,
        store: Arc<dyn orchestrator::store::Store>,
        at: Option<(SocketAddr, SocketAddr)>,
    ) -> Replica {
        let runtime = control_runtime();
        let operator = self.operator.clone();
        let leading = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop, _) = tokio::sync::watch::channel(false);
        let (addrs, tasks) = runtime.block_on(async {
            let grid = Arc::new(control_plane(store, &operator).await);
            serve_control_plane(at, &grid, &leading, &stop).await
        });
        Replica {
            orchestrator: addrs.0,
            addrs,
            leading,
            _tasks: tasks,
            _stop: stop,
            runtime: Some(runtime),
        }
    }

    /// Starts one more edge node (identity from `seed`) and registers it.
    pub fn add_node(&mut self, seed: u8, max_sessions: u32) -> SocketAddr {
        self.add_node_with_probe_delay(seed, max_sessions, None)
    }

    /// Like [`TestGrid::add_node`], but players reach the node's RTT probe only through a
    /// [`SlowLink`] adding `delay` each way (the kernel here has no `sch_netem`).
    pub fn add_node_with_probe_delay(
        &mut self,
        seed: u8,
        max_sessions: u32,
        delay: Option<Duration>,
    ) -> SocketAddr {
        let host =
            SessionHost::start(Catalogue::default(), None).expect("Vulkan and GStreamer must work");
        self.add_node_on(host, seed, max_sessions, delay)
    }

    /// Starts one more edge node that also hosts the packaged games installed in `games`,
    /// running their sessions' worlds under `sessions`.
    pub fn add_node_hosting(
        &mut self,
        seed: u8,
        max_sessions: u32,
        games: &edge_node::runtime::store::GameStore,
        sessions: &std::path::Path,
    ) -> SocketAddr {
        let host = SessionHost::start(Catalogue::default(), None)
            .expect("Vulkan and GStreamer must work")
            .with_packaged(
                games.list().expect("installed games"),
                edge_node::runtime::RuntimeConfig {
                    session_root: sessions.to_path_buf(),
                    hidden: vec![],
                },
            )
            .expect("session directory");
        self.add_node_on(host, seed, max_sessions, None)
    }

    fn add_node_on(
        &mut self,
        host: SessionHost,
        seed: u8,
        max_sessions: u32,
        delay: Option<Duration>,
    ) -> SocketAddr {
        let host = Arc::new(host);
        let orchestrator_url = self
            .orchestrator_for_nodes
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.orchestrator));
        let reporting = self.reporting.clone();
        let congestion_control = self.congestion_control;
        let trusted = self.trusted_token_keys.clone();
        let tls = self.node_tls.clone();
        let price = self.node_price;
        let clock_skew = Arc::new(std::sync::atomic::AtomicI64::new(0));
        self.node_clock_skews.push(Arc::clone(&clock_skew));
        let (addr, node, tasks) = self.runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let probe_address = match (delay, &tls) {
                (Some(d), _) => SlowLink::start(addr, d).await.to_string(),
                // By the name its certificate carries.
                (None, Some(_)) => format!("localhost:{}", addr.port()),
                (None, None) => addr.to_string(),
            };
            let whep_base_url = match &tls {
                Some(_) => format!("https://localhost:{}/whep", addr.port()),
                None => format!("http://{addr}/whep"),
            };
            let info = host.vulkan().info().clone();
            let skew = Arc::clone(&clock_skew);
            let config = edge_node::agent::AgentConfig {
                clock: edge_node::agent::WallClock::from_fn(move || {
                    pixelgrid_proto::clock::unix_ms()
                        .saturating_add_signed(skew.load(std::sync::atomic::Ordering::Relaxed))
                }),
                orchestrator: orchestrator_url,
                whep_base_url,
                probe_address,
                region: "local".into(),
                price,
                max_sessions,
                games: host.games(),
                gpu: pixelgrid_proto::types::v1::GpuInfo {
                    model: info.name,
                    cpu_fallback: info.cpu_fallback,
                    ..Default::default()
                },
                encoders: vec![],
            };
            let key = pixelgrid_proto::identity::NodeKey::from_seed(&[seed.wrapping_add(100); 32]);
            let agent = edge_node::agent::Agent::register(config, key.clone())
                .await
                .expect("registration");
            // Pinned, as a real node is at onboarding: the keys it was given.
            let keys: Vec<&str> = trusted.iter().map(String::as_str).collect();
            let verifier = pixelgrid_proto::token::TokenVerifier::from_hex_keys(&keys).unwrap();
            assert!(verifier.trusts(&agent.registration.token_public_key_hex));
            let settings = StreamSettings {
                node_id: agent.node_id(),
                peer: PeerSettings {
                    udp_addrs: vec![SocketAddr::new(addr.ip(), 0)],
                    tcp_addrs: vec![SocketAddr::new(addr.ip(), 0)],
                    ice_servers: vec![],
                    input_limits: Default::default(),
                    congestion_control,
                    connect_deadline: edge_node::stream::DEFAULT_CONNECT_DEADLINE,
                },
                dev_token_ttl: Duration::from_secs(60),
                encoder_threads: 1,
                max_sessions: max_sessions as usize,
                identity: Some(key.clone()),
            };
            let node = StreamNode::new(host, settings, verifier, None);
            let served = Arc::clone(&node);
            let mut tasks = vec![
                tokio::spawn(async move {
                    let _ = match tls {
                        Some(acceptor) => {
                            pixelgrid_proto::transport::serve_https(
                                listener,
                                acceptor,
                                edge_node::stream::router(served),
                                std::future::pending(),
                            )
                            .await
                        }
                        None => {
                            edge_node::stream::serve(listener, served, std::future::pending()).await
                        }
                    };
                }),
                tokio::spawn(agent.run(Arc::clone(&node), std::future::pending())),
            ];
            if let Some(config) = reporting {
                tasks.push(tokio::spawn(edge_node::reporter::run(
                    config,
                    key,
                    Arc::clone(&node),
                    std::future::pending(),
                )));
            }
            (addr, node, tasks)
        });
        self.nodes.push((addr, node));
        self.node_tasks.push(tasks);
        addr
    }

    /// Starts an in-process indexer under `rules` (short epochs, usually), reading this grid's
    /// registry, with its gRPC on loopback; nodes added from now on report to it every second.
    pub fn start_indexer(&mut self, rules: indexer::tally::TallyConfig) -> TestIndexer {
        let ledger = tempfile::tempdir().expect("a temp dir for the ledger");
        let config = indexer::daemon::DaemonConfig {
            rules,
            ledger: ledger.path().join("ledger.db"),
            orchestrator: Some(format!("http://{}", self.orchestrator)),
            probes_per_slot: 2,
            registry_refresh: Duration::from_millis(500),
            forget_after: Duration::from_secs(3_600),
            ledger_max_bytes: None,
        };
        let indexer =
            indexer::daemon::Indexer::open(config.clone()).expect("the indexer opens its ledger");
        let (runtime, addr) = TestIndexer::serve(&indexer, None);
        let url = format!("http://{addr}");
        self.reporting = Some(edge_node::reporter::ReporterConfig {
            indexers: vec![url.clone()],
            interval: Duration::from_millis(1_000),
            outbox_capacity: 100,
            outbox_dir: None,
        });
        TestIndexer {
            indexer,
            url,
            config,
            addr,
            runtime: Some(runtime),
            _ledger: ledger,
        }
    }

    /// The node dies as a crashed process would: its server, heartbeats and reports stop at
    /// once, nothing is deregistered, and its players' connections go dead.
    pub fn kill_node(&mut self, node_id: &str) {
        let i = self
            .nodes
            .iter()
            .position(|(_, n)| n.node_id() == node_id)
            .expect("a node of this grid");
        for t in &self.node_tasks[i] {
            t.abort();
        }
        let node = Arc::clone(&self.nodes[i].1);
        self.runtime.block_on(node.close_all());
    }

    /// A fresh launch grant of [`TEST_STUDIO`] (what a studio's backend hands its player).
    pub async fn grant(&self) -> String {
        self.grid
            .create_launch_grant(
                &orchestrator::auth::Caller::Studio(TEST_STUDIO.into()),
                pixelgrid_proto::orchestrator::v1::CreateLaunchGrantRequest {
                    player_id: "test-player".into(),
                    game: String::new(),
                    ttl_s: 0,
                },
            )
            .await
            .expect("a grant")
            .grant
    }

    /// An SDK client launching as a player of [`TEST_STUDIO`].
    pub async fn player(&self) -> pixelgrid_client::Client {
        pixelgrid_client::Client::connect(&format!("http://{}", self.orchestrator))
            .await
            .expect("connect to the orchestrator")
            .with_api_key(&self.api_key, "test-player")
    }

    /// A gRPC client of the orchestrator.
    pub async fn client(
        &self,
    ) -> pixelgrid_proto::orchestrator::v1::orchestrator_client::OrchestratorClient<
        tonic::transport::Channel,
    > {
        pixelgrid_proto::orchestrator::v1::orchestrator_client::OrchestratorClient::connect(
            format!("http://{}", self.orchestrator),
        )
        .await
        .expect("connect to the orchestrator")
    }
}

/// An n-member etcd cluster on loopback.
pub type EtcdCluster = orchestrator::store::LocalEtcd;

/// A signed registration for a node that exists only in the test: hosts `arena`, holds
/// `max_sessions`, and has no real WHEP endpoint (port 9, discard).
pub fn signed_registration(
    key: &pixelgrid_proto::identity::NodeKey,
    max_sessions: u32,
) -> pixelgrid_proto::orchestrator::v1::RegisterNodeRequest {
    use pixelgrid_proto::identity::SignedRequest;
    use pixelgrid_proto::types::v1 as types;
    pixelgrid_proto::orchestrator::v1::RegisterNodeRequest {
        node_id: Some(types::NodeId { hex: key.node_id() }),
        capabilities: Some(types::NodeCapabilities {
            games_installed: vec!["arena".into()],
            capacity: vec![types::SessionCapacity {
                mode: None,
                max_sessions,
            }],
            ..Default::default()
        }),
        region: Some(types::Region {
            code: "local".into(),
        }),
        whep_base_url: "http://127.0.0.1:9/whep".into(),
        probe_address: "127.0.0.1:9".into(),
        sent_unix_ms: orchestrator::grid::now_ms(),
        ..Default::default()
    }
    .sign_with(key)
}

/// A TCP forwarder that delays every chunk by a fixed time each way: a slow link in user space,
/// for the RTT probes (this machine's kernel is built without `sch_netem`, so `tc netem` is not
/// available).
pub struct SlowLink;

impl SlowLink {
    /// Forwards a free loopback port to `target`, adding `delay` each way; returns the port's
    /// address. Runs until the runtime stops.
    pub async fn start(target: SocketAddr, delay: Duration) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::join!(Self::pipe(ri, wo, delay), Self::pipe(ro, wi, delay));
                });
            }
        });
        addr
    }

    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        delay: Duration,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => {
                    tokio::time::sleep(delay).await;
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Centre of the arena's gold player square in an RGBA frame (decoded video: colours within
/// `tolerance`), or `None` when it is not visible.
pub fn player_centroid(rgba: &[u8], width: usize, tolerance: i32) -> Option<(f64, f64)> {
    let target = edge_node::game::Arena::PLAYER_COLOR.map(|c| (c * 255.0).round() as i32);
    let (mut sx, mut sy, mut n) = (0.0, 0.0, 0u64);
    for (i, px) in rgba.chunks_exact(4).enumerate() {
        if (0..3).all(|c| (i32::from(px[c]) - target[c]).abs() <= tolerance) {
            sx += (i % width) as f64;
            sy += (i / width) as f64;
            n += 1;
        }
    }
    (n > 50).then(|| (sx / n as f64, sy / n as f64))
}

/// Mean absolute difference of two RGBA pictures `width` wide over the rectangle
/// `(x0, y0, x1, y1)`, per colour value (0 = the same, 255 = opposite).
pub fn region_diff(a: &[u8], b: &[u8], width: usize, rect: (usize, usize, usize, usize)) -> f64 {
    let (x0, y0, x1, y1) = rect;
    let mut sum = 0u64;
    let mut n = 0u64;
    for y in y0..y1 {
        for x in x0..x1 {
            let i = (y * width + x) * 4;
            for c in 0..3 {
                sum += u64::from(a[i + c].abs_diff(b[i + c]));
                n += 1;
            }
        }
    }
    sum as f64 / n.max(1) as f64
}

/// Where SuperTux 0.6.3 draws the first two rows of its title menu at 1280x720: only input
/// moves what is there (the level behind the menu animates by itself).
pub const SUPERTUX_MENU_720P: (usize, usize, usize, usize) = (560, 308, 720, 358);

/// Sends SIGTERM, as systemd, Docker and Kubernetes do to stop a daemon.
pub fn sigterm(child: &std::process::Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill(1)");
    assert!(sent.success(), "cannot signal process {}", child.id());
}

/// Waits up to `within` for `child` to exit; its status, or `None` while it still runs.
pub fn wait_for_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait(2)") {
            return Some(status);
        }
        if start.elapsed() >= within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
