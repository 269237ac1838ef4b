//! An etcd (Debian's `etcd-server`) started as child processes on free loopback ports with temp
//! data dirs: for the bench, the local grid and tests. Killed when dropped.

use crate::{Error, Result};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A local etcd cluster of one or more members; see the module docs.
#[derive(Debug)]
pub struct LocalEtcd {
    members: Vec<Option<Child>>,
    /// How each member was started (to start it again on its data).
    commands: Vec<Vec<std::ffi::OsString>>,
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
            commands: Vec::new(),
            endpoints: Vec::new(),
            _dirs: Vec::new(),
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let dir = tempfile::tempdir()
                .map_err(|e| Error::Unavailable(format!("no temp dir for etcd: {e}")))?;
            let endpoint = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let mut args: Vec<std::ffi::OsString> = vec![
                "--name".into(),
                format!("m{i}").into(),
                "--data-dir".into(),
                dir.path().into(),
            ];
            args.extend(
                [
                    "--listen-client-urls",
                    &endpoint,
                    "--advertise-client-urls",
                    &endpoint,
                    "--listen-peer-urls",
                    &peer_url,
                    "--initial-advertise-peer-urls",
                    &peer_url,
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "pixelgrid-local",
                    "--log-level",
                    "error",
                    "--quota-backend-bytes",
                    "4294967296",
                ]
                .iter()
                .chain(extra)
                .map(std::ffi::OsString::from),
            );
            let child = spawn(&args)?;
            me.commands.push(args);
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

    /// Starts member `i` again on its data directory and ports, after [`LocalEtcd::kill`]
    /// (as a restarted etcd process rejoins its cluster).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.members.get(i).is_some_and(Option::is_none) {
            self.members[i] = Some(spawn(&self.commands[i])?);
        }
        Ok(())
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members.get_mut(i).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(args: &[std::ffi::OsString]) -> Result<Child> {
    Command::new("etcd")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            Error::Unavailable(format!(
                "cannot start etcd ({e}); install Debian's etcd-server (deploy/install-deps.sh does)"
            ))
        })
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
