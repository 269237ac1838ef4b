//! A real TURN server (Debian's `coturn`) on loopback for tests: TURN REST credentials under a
//! shared secret (what the orchestrator's `--turn-secret-file` holds), UDP only, loopback peers
//! allowed (the nodes under test live on 127.0.0.1).

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `turnserver`; dropping it kills it.
pub struct Coturn {
    /// Where TURN clients send (UDP).
    pub addr: SocketAddr,
    /// The `static-auth-secret` it checks credentials with.
    pub secret: Vec<u8>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Does a STUN Binding request to `addr` get an answer within `wait`?
fn answers_stun(addr: SocketAddr, wait: Duration) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(wait));
    // Binding request: type 0x0001, length 0, magic cookie, 12-byte transaction id.
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    req.extend_from_slice(b"pixelgrid-tx");
    if sock.send_to(&req, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(sock.recv(&mut buf), Ok(n) if n >= 20 && buf[0] == 0x01 && buf[1] == 0x01)
}

impl Coturn {
    /// Starts coturn on a free loopback port; panics, naming the package, when it cannot.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = crate::free_udp_port();
        // Relay ports from a range of its own, so two servers in one test run do not collide.
        let relay_low = 40_000 + (port % 200) * 100;
        let secret = b"pixelgrid-test-turn-secret".to_vec();
        let child = Command::new("turnserver")
            .args(["-n", "-v", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .arg(format!("--min-port={relay_low}"))
            .arg(format!("--max-port={}", relay_low + 99))
            .args(["--use-auth-secret", "--realm=pixelgrid"])
            .arg(format!(
                "--static-auth-secret={}",
                String::from_utf8_lossy(&secret)
            ))
            .args(["--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-cli"])
            .args(["--no-tcp-relay", "--log-file=stdout"])
            .arg(format!("--pidfile={}", dir.path().join("turn.pid").display()))
            .arg(format!("--userdb={}", dir.path().join("turn.db").display()))
            .stdout(std::fs::File::create(dir.path().join("turn.log")).expect("a log file"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start turnserver ({e}); install Debian's coturn (deploy/install-deps.sh)")
            });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut me = Self {
            addr,
            secret,
            child,
            _dir: dir,
        };
        let started = Instant::now();
        while !answers_stun(addr, Duration::from_millis(200)) {
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!("turnserver exited at start ({status})");
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "turnserver did not answer on {addr} within 10 s"
            );
        }
        me
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("turn.log")).unwrap_or_default()
    }

    /// What the orchestrator needs to hand out credentials for players reaching this server at
    /// `url_addr` (this server, or a relay in front of it).
    pub fn turn_config(&self, url_addr: SocketAddr) -> orchestrator::turn::TurnConfig {
        orchestrator::turn::TurnConfig {
            urls: vec![format!("turn:{url_addr}?transport=udp")],
            secret: self.secret.clone(),
            ttl_s: 600,
        }
    }
}
