//! An etcd (Debian's `etcd-server`) started as child processes on free loopback ports with temp
//! data dirs: for the bench, the local grid and tests. Killed when dropped.

use crate::{Error, Result};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A local etcd cluster of one or more members; see the module docs.
#[derive(Debug)]
pub struct LocalEtcd {
    members: Vec<Option<Child>>,
    /// Client URLs, one per member.
    pub endpoints: Vec<String>,
    _dirs: Vec<tempfile::TempDir>,
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Unavailable(format!("no free loopback port: {e}")))?;
    Ok(l.local_addr()
        .map_err(|e| Error::Unavailable(e.to_string()))?
        .port())
}

impl LocalEtcd {
    /// Starts `n` members and waits (up to 20 s) until each accepts connections.
    pub fn start(n: usize) -> Result<Self> {
        Self::start_with(n, &[])
    }

    /// [`LocalEtcd::start`] with more etcd flags for every member (e.g. auto-compaction).
    pub fn start_with(n: usize, extra: &[&str]) -> Result<Self> {
        let ports = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<Vec<_>>>()?;
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut me = Self {
            members: Vec::new(),
            endpoints: Vec::new(),
            _dirs: Vec::new(),
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let dir = tempfile::tempdir()
                .map_err(|e| Error::Unavailable(format!("no temp dir for etcd: {e}")))?;
            let endpoint = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = Command::new("etcd")
                .args(["--name", &format!("m{i}"), "--data-dir"])
                .arg(dir.path())
                .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
                .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "pixelgrid-local", "--log-level", "error"])
                .args(["--quota-backend-bytes", "4294967296"])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| Error::Unavailable(format!("cannot start etcd ({e}); install Debian's etcd-server (deploy/install-deps.sh does)")))?;
            me.members.push(Some(child));
            me._dirs.push(dir);
            me.endpoints.push(endpoint);
        }
        for (client, _) in &ports {
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", *client)).is_err() {
                if Instant::now() > deadline {
                    return Err(Error::Unavailable(format!(
                        "etcd on 127.0.0.1:{client} did not start within 20 s"
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(me)
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members.get_mut(i).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
