//! An impaired network path for tests and benchmarks, in user space (this kernel has no
//! `sch_netem`): a UDP relay on loopback that media crosses, with a rate cap, a bounded queue,
//! delay, jitter, random or bursty loss and reordering, each changeable mid-run.
//!
//! [`link`] decides each packet's fate on a clock it is given (and is unit-tested on a virtual
//! one); [`UdpRelay`] is the thin shell that moves real datagrams through two such links, one per
//! direction, shared by every client like one home router's uplink and downlink.
//!
//! A client sends to [`UdpRelay::addr`]; the relay forwards from a socket of that client's own
//! to `upstream` and sends what comes back to the client. Placed in front of a TURN server, or
//! advertised in place of a node's ICE candidate, it carries a whole WebRTC session.

pub mod link;

pub use link::{Fate, Link, LinkConfig, LinkStats, Loss, Schedule};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Toward the client, or toward `upstream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// upstream → client (what a player downloads).
    Down,
    /// client → upstream.
    Up,
}

struct Links {
    started: Instant,
    down: Link<(SocketAddr, Vec<u8>)>,
    up: Link<(SocketAddr, Vec<u8>)>,
}

impl Links {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn next_delivery(&self) -> Option<Duration> {
        match (self.down.next_delivery(), self.up.next_delivery()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A running relay; dropping it stops it.
pub struct UdpRelay {
    /// Where clients send.
    pub addr: SocketAddr,
    links: Arc<Mutex<Links>>,
    task: tokio::task::JoinHandle<()>,
    schedule: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(t) = self
            .schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
    }
}

impl UdpRelay {
    /// Starts a relay on a free loopback port forwarding to `upstream`, with `down` toward
    /// clients and `up` toward `upstream`.
    pub async fn start(
        upstream: SocketAddr,
        down: LinkConfig,
        up: LinkConfig,
        seed: u64,
    ) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let links = Arc::new(Mutex::new(Links {
            started: Instant::now(),
            down: Link::new(down, seed),
            up: Link::new(up, seed.wrapping_add(1)),
        }));
        let task = tokio::spawn(relay(front, upstream, Arc::clone(&links)));
        Ok(Self {
            addr,
            links,
            task,
            schedule: Mutex::new(None),
        })
    }

    /// Changes one direction from now on.
    pub fn set(&self, direction: Direction, config: LinkConfig) {
        let mut l = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let now = l.now();
        match direction {
            Direction::Down => l.down.set_config(now, config),
            Direction::Up => l.up.set_config(now, config),
        }
    }

    /// Plays `schedule` on `direction`, its times counted from now (replacing any schedule
    /// playing).
    pub fn play(self: &Arc<Self>, direction: Direction, schedule: Schedule) {
        let me = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let from = Instant::now();
            let mut t = Duration::ZERO;
            loop {
                match me.upgrade() {
                    Some(relay) => relay.set(direction, schedule.at(t)),
                    None => return,
                }
                let Some(next) = schedule.next_change(t) else {
                    return;
                };
                tokio::time::sleep_until((from + next).into()).await;
                t = next;
            }
        });
        if let Some(old) = self
            .schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task)
        {
            old.abort();
        }
    }

    /// Counters of (down, up).
    pub fn stats(&self) -> (LinkStats, LinkStats) {
        let l = self.links.lock().unwrap_or_else(|p| p.into_inner());
        (l.down.stats(), l.up.stats())
    }
}

/// Datagrams larger than this are not media; the relay drops them.
const MAX_DATAGRAM: usize = 2048;

async fn relay(front: Arc<UdpSocket>, upstream: SocketAddr, links: Arc<Mutex<Links>>) {
    // Each client gets its own socket toward upstream, so replies can be told apart; a reader
    // per socket hands what comes back to this loop.
    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let (back_tx, mut back) = mpsc::channel::<(SocketAddr, Vec<u8>)>(1024);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let due = links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_delivery();
        let wake = async {
            match due {
                Some(at) => {
                    let started = links.lock().unwrap_or_else(|p| p.into_inner()).started;
                    tokio::time::sleep_until((started + at).into()).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            got = front.recv_from(&mut buf) => {
                let Ok((n, client)) = got else { continue };
                if let std::collections::hash_map::Entry::Vacant(slot) = clients.entry(client) {
                    let Ok(sock) = UdpSocket::bind("127.0.0.1:0").await else { continue };
                    if sock.connect(upstream).await.is_err() {
                        continue;
                    }
                    let sock = Arc::new(sock);
                    tokio::spawn(read_upstream(Arc::clone(&sock), client, back_tx.clone()));
                    slot.insert(sock);
                }
                let mut l = links.lock().unwrap_or_else(|p| p.into_inner());
                let now = l.now();
                l.up.offer(now, n, (client, buf[..n].to_vec()));
            }
            Some((client, data)) = back.recv() => {
                let mut l = links.lock().unwrap_or_else(|p| p.into_inner());
                let now = l.now();
                l.down.offer(now, data.len(), (client, data));
            }
            () = wake => {}
        }
        // Send whatever is due, outside the lock.
        let (downs, ups) = {
            let mut l = links.lock().unwrap_or_else(|p| p.into_inner());
            let now = l.now();
            let mut downs = Vec::new();
            while let Some(p) = l.down.poll(now) {
                downs.push(p);
            }
            let mut ups = Vec::new();
            while let Some(p) = l.up.poll(now) {
                ups.push(p);
            }
            (downs, ups)
        };
        for (client, data) in downs {
            let _ = front.send_to(&data, client).await;
        }
        for (client, data) in ups {
            if let Some(sock) = clients.get(&client) {
                let _ = sock.send(&data).await;
            }
        }
    }
}

async fn read_upstream(
    sock: Arc<UdpSocket>,
    client: SocketAddr,
    back: mpsc::Sender<(SocketAddr, Vec<u8>)>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while let Ok(n) = sock.recv(&mut buf).await {
        if back.send((client, buf[..n].to_vec())).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_relay_carries_datagrams_both_ways_and_applies_its_delay() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut b = [0u8; 2048];
            while let Ok((n, from)) = echo.recv_from(&mut b).await {
                let _ = echo.send_to(&b[..n], from).await;
            }
        });
        let down = LinkConfig {
            delay: Duration::from_millis(40),
            ..LinkConfig::default()
        };
        let relay = UdpRelay::start(echo_addr, down, LinkConfig::default(), 1)
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut rtts = Vec::new();
        for i in 0..10u8 {
            let t = Instant::now();
            client.send_to(&[i; 100], relay.addr).await.unwrap();
            let mut b = [0u8; 2048];
            let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut b))
                .await
                .expect("the echo comes back through the relay")
                .unwrap();
            assert_eq!(&b[..n], &[i; 100]);
            rtts.push(t.elapsed());
        }
        let min = rtts.iter().min().unwrap();
        assert!(*min >= Duration::from_millis(40), "{rtts:?}");
        let (down, up) = relay.stats();
        assert_eq!((down.delivered, up.delivered), (10, 10));

        // Every packet lost from now on: nothing comes back.
        relay.set(
            Direction::Down,
            LinkConfig {
                loss: Loss::Random(1.0),
                ..LinkConfig::default()
            },
        );
        client.send_to(&[0; 10], relay.addr).await.unwrap();
        let mut b = [0u8; 64];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), client.recv(&mut b))
                .await
                .is_err()
        );
    }
}
