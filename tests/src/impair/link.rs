//! The deciding core of the impairment link: what happens to each packet, on a clock it is given.
//!
//! A packet offered at `now` first waits for the bottleneck: a token bucket (`rate_bps`, `burst`
//! bytes) drained in FIFO order behind a drop-tail queue of `queue_bytes`, so sending faster than
//! the rate shows up as growing delay and then as loss, the way a home router's queue behaves.
//! On leaving the bottleneck it may be lost (random or Gilbert–Elliott bursts), then crosses the
//! propagation delay plus uniform jitter; a `reorder` share of packets is held `reorder_extra`
//! longer, so later ones overtake it. Everything is decided at [`Link::offer`] and the packet is
//! handed back by [`Link::poll`] once its delivery time has come.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

/// How packets are lost after the bottleneck.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Loss {
    /// None are.
    #[default]
    None,
    /// Each packet independently with this probability.
    Random(f64),
    /// A two-state Markov chain: in the good state packets are lost with `loss_good`, in the bad
    /// state with `loss_bad`; each packet moves good→bad with `p_enter_bad` and bad→good with
    /// `p_leave_bad`. The mean loss is `π_bad·loss_bad + π_good·loss_good`, with
    /// `π_bad = p_enter_bad / (p_enter_bad + p_leave_bad)`, and a burst lasts `1/p_leave_bad`
    /// packets on average.
    GilbertElliott {
        /// Probability per packet of entering the bad state.
        p_enter_bad: f64,
        /// Probability per packet of leaving it.
        p_leave_bad: f64,
        /// Loss probability in the good state.
        loss_good: f64,
        /// Loss probability in the bad state.
        loss_bad: f64,
    },
}

impl Loss {
    /// Gilbert–Elliott bursts averaging `mean` loss with bursts of `burst` packets on average
    /// (every packet of a burst lost, none outside one).
    pub fn bursty(mean: f64, burst: f64) -> Self {
        let p_leave_bad = 1.0 / burst.max(1.0);
        // π_bad = mean  ⇒  p_enter = mean·p_leave / (1 − mean).
        let p_enter_bad = mean * p_leave_bad / (1.0 - mean).max(f64::EPSILON);
        Loss::GilbertElliott {
            p_enter_bad,
            p_leave_bad,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
    }

    /// The long-run share of packets lost.
    pub fn mean(&self) -> f64 {
        match *self {
            Loss::None => 0.0,
            Loss::Random(p) => p,
            Loss::GilbertElliott {
                p_enter_bad,
                p_leave_bad,
                loss_good,
                loss_bad,
            } => {
                let bad = p_enter_bad / (p_enter_bad + p_leave_bad).max(f64::EPSILON);
                bad * loss_bad + (1.0 - bad) * loss_good
            }
        }
    }
}

/// What the link does; every field may change mid-run ([`Link::set_config`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Bottleneck rate in bits per second; `None` for no cap.
    pub rate_bps: Option<u64>,
    /// Bytes the bottleneck may send back to back after an idle spell (token bucket depth).
    pub burst_bytes: usize,
    /// Bytes that may wait in the bottleneck's queue; a packet that does not fit is dropped.
    pub queue_bytes: usize,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per packet.
    pub jitter: Duration,
    /// Loss after the bottleneck.
    pub loss: Loss,
    /// Share of packets held back by `reorder_extra`, so that later ones overtake them.
    pub reorder: f64,
    /// How long a reordered packet is held back.
    pub reorder_extra: Duration,
}

impl Default for LinkConfig {
    /// A perfect link: no cap, no delay, no loss.
    fn default() -> Self {
        Self {
            rate_bps: None,
            burst_bytes: 3_000,
            // About 100 ms at 2.5 Mbit/s: a modest home router's buffer.
            queue_bytes: 32_000,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: Loss::None,
            reorder: 0.0,
            reorder_extra: Duration::from_millis(5),
        }
    }
}

impl LinkConfig {
    /// This link capped at `bps`.
    pub fn capped(mut self, bps: u64) -> Self {
        self.rate_bps = Some(bps);
        self
    }
}

/// What became of an offered packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It will come out of [`Link::poll`] at this time.
    Delivered(Duration),
    /// The bottleneck's queue was full.
    QueueFull,
    /// Lost after the bottleneck.
    Lost,
}

/// Counters, for tests and benchmark tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets offered.
    pub offered: u64,
    /// Bytes offered: what the sender sent into the link.
    pub offered_bytes: u64,
    /// Packets handed back by `poll`.
    pub delivered: u64,
    /// Bytes handed back by `poll`.
    pub delivered_bytes: u64,
    /// Dropped because the queue was full.
    pub queue_drops: u64,
    /// Lost after the bottleneck.
    pub lost: u64,
}

/// SplitMix64: small, fast and reproducible from a seed, which is all a test link needs.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
}

/// One direction of an impaired link carrying packets of type `P`.
#[derive(Debug)]
pub struct Link<P> {
    config: LinkConfig,
    rng: Rng,
    /// Tokens (bytes) in the bucket at `bucket_at`.
    tokens: f64,
    bucket_at: Duration,
    /// When the bottleneck finishes sending what is queued.
    free_at: Duration,
    /// (leaves the bottleneck at, bytes) of packets still in its queue, in order.
    queued: VecDeque<(Duration, usize)>,
    queued_bytes: usize,
    bad_state: bool,
    in_flight: BinaryHeap<Reverse<(Duration, u64)>>,
    packets: std::collections::HashMap<u64, (P, usize)>,
    next_id: u64,
    stats: LinkStats,
}

impl<P> Link<P> {
    /// A link behaving as `config`, with its random choices drawn from `seed`.
    pub fn new(config: LinkConfig, seed: u64) -> Self {
        Self {
            tokens: config.burst_bytes as f64,
            config,
            rng: Rng(seed),
            bucket_at: Duration::ZERO,
            free_at: Duration::ZERO,
            queued: VecDeque::new(),
            queued_bytes: 0,
            bad_state: false,
            in_flight: BinaryHeap::new(),
            packets: Default::default(),
            next_id: 0,
            stats: LinkStats::default(),
        }
    }

    /// What the link does now.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Changes the link from `now` on; packets already past the bottleneck keep their fate.
    pub fn set_config(&mut self, now: Duration, config: LinkConfig) {
        self.refill(now);
        self.config = config;
        self.tokens = self.tokens.min(config.burst_bytes as f64);
    }

    /// Counters so far.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Bytes waiting in the bottleneck's queue at `now`.
    pub fn queued_bytes(&mut self, now: Duration) -> usize {
        self.expire_queue(now);
        self.queued_bytes
    }

    fn expire_queue(&mut self, now: Duration) {
        while let Some(&(leaves, bytes)) = self.queued.front() {
            if leaves > now {
                break;
            }
            self.queued.pop_front();
            self.queued_bytes -= bytes;
        }
    }

    fn refill(&mut self, now: Duration) {
        if now <= self.bucket_at {
            return;
        }
        if let Some(rate) = self.config.rate_bps {
            let earned = (now - self.bucket_at).as_secs_f64() * rate as f64 / 8.0;
            self.tokens = (self.tokens + earned).min(self.config.burst_bytes as f64);
        }
        self.bucket_at = now;
    }

    /// When a packet of `bytes` offered at `now` leaves the bottleneck, or `None` if the queue is
    /// full.
    fn through_bottleneck(&mut self, now: Duration, bytes: usize) -> Option<Duration> {
        let Some(rate) = self.config.rate_bps.filter(|r| *r > 0) else {
            return Some(now);
        };
        self.expire_queue(now);
        if self.queued_bytes + bytes > self.config.queue_bytes + self.config.burst_bytes {
            return None;
        }
        // FIFO: this packet starts competing for tokens when the one ahead of it has left.
        let start = now.max(self.free_at);
        self.refill(start);
        let leaves = if self.tokens >= bytes as f64 {
            start
        } else {
            let wait = (bytes as f64 - self.tokens) * 8.0 / rate as f64;
            let leaves = start + Duration::from_secs_f64(wait);
            self.refill(leaves);
            leaves
        };
        self.tokens = (self.tokens - bytes as f64).max(0.0);
        self.free_at = leaves;
        if leaves > now {
            self.queued.push_back((leaves, bytes));
            self.queued_bytes += bytes;
        }
        Some(leaves)
    }

    fn lost(&mut self) -> bool {
        match self.config.loss {
            Loss::None => false,
            Loss::Random(p) => self.rng.chance(p),
            Loss::GilbertElliott {
                p_enter_bad,
                p_leave_bad,
                loss_good,
                loss_bad,
            } => {
                let flip = if self.bad_state {
                    p_leave_bad
                } else {
                    p_enter_bad
                };
                if self.rng.chance(flip) {
                    self.bad_state = !self.bad_state;
                }
                self.rng
                    .chance(if self.bad_state { loss_bad } else { loss_good })
            }
        }
    }

    /// Offers `packet` of `bytes` at `now` and says what will become of it.
    pub fn offer(&mut self, now: Duration, bytes: usize, packet: P) -> Fate {
        self.stats.offered += 1;
        self.stats.offered_bytes += bytes as u64;
        let Some(leaves) = self.through_bottleneck(now, bytes) else {
            self.stats.queue_drops += 1;
            return Fate::QueueFull;
        };
        if self.lost() {
            self.stats.lost += 1;
            return Fate::Lost;
        }
        let c = self.config;
        let jitter = if c.jitter.is_zero() {
            Duration::ZERO
        } else {
            c.jitter.mul_f64(self.rng.unit())
        };
        let held = if self.rng.chance(c.reorder) {
            c.reorder_extra
        } else {
            Duration::ZERO
        };
        let at = leaves + c.delay + jitter + held;
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight.push(Reverse((at, id)));
        self.packets.insert(id, (packet, bytes));
        Fate::Delivered(at)
    }

    /// The next packet due at or before `now`, if any.
    pub fn poll(&mut self, now: Duration) -> Option<P> {
        let Reverse((at, id)) = *self.in_flight.peek()?;
        if at > now {
            return None;
        }
        self.in_flight.pop();
        let (packet, bytes) = self.packets.remove(&id)?;
        self.stats.delivered += 1;
        self.stats.delivered_bytes += bytes as u64;
        Some(packet)
    }

    /// When the next packet is due, if any is in flight.
    pub fn next_delivery(&self) -> Option<Duration> {
        self.in_flight.peek().map(|Reverse((at, _))| *at)
    }
}

/// Link settings that change at given times since the start of a run.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    steps: Vec<(Duration, LinkConfig)>,
}

impl Schedule {
    /// `config` from the start.
    pub fn starting(config: LinkConfig) -> Self {
        Self {
            steps: vec![(Duration::ZERO, config)],
        }
    }

    /// Then `config` from `at` on.
    pub fn then(mut self, at: Duration, config: LinkConfig) -> Self {
        self.steps.push((at, config));
        self.steps.sort_by_key(|(t, _)| *t);
        self
    }

    /// What applies at `t`.
    pub fn at(&self, t: Duration) -> LinkConfig {
        self.steps
            .iter()
            .rev()
            .find(|(from, _)| *from <= t)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }

    /// The next change strictly after `t`.
    pub fn next_change(&self, t: Duration) -> Option<Duration> {
        self.steps.iter().map(|(from, _)| *from).find(|f| *f > t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Offers `count` packets of `bytes` every `every`, collecting (sent, delivered) times.
    fn run(
        link: &mut Link<Duration>,
        count: u32,
        bytes: usize,
        every: Duration,
    ) -> Vec<(Duration, Duration)> {
        let mut out = Vec::new();
        let mut now = Duration::ZERO;
        for _ in 0..count {
            link.offer(now, bytes, now);
            now += every;
            while let Some(sent) = link.poll(now) {
                out.push((sent, now));
            }
        }
        // Drain what is still in flight.
        while let Some(at) = link.next_delivery() {
            while let Some(sent) = link.poll(at) {
                out.push((sent, at));
            }
        }
        out
    }

    #[test]
    fn a_capped_link_carries_its_rate_and_queues_the_excess_as_delay_then_drops_it() {
        // 5 Mbit/s offered for 5 s into a 2.5 Mbit/s bottleneck.
        let config = LinkConfig {
            queue_bytes: 64_000,
            ..LinkConfig::default().capped(2_500_000)
        };
        let mut link = Link::new(config, 1);
        // 1,250 bytes every 2 ms = 5 Mbit/s.
        let got = run(&mut link, 2_500, 1_250, 2 * MS);
        let s = link.stats();
        // Over the whole run, the queue's drain after the last offer included.
        let span = got.iter().map(|(_, at)| *at).max().unwrap().as_secs_f64();
        let carried_bps = s.delivered_bytes as f64 * 8.0 / span;
        assert!(
            (carried_bps - 2_500_000.0).abs() / 2_500_000.0 < 0.03,
            "carried {carried_bps} bit/s"
        );
        assert!(s.queue_drops > 1_000, "about half is dropped: {s:?}");
        // The queue fills to its size: 64 kB at 2.5 Mbit/s ≈ 205 ms of delay, never much more.
        let worst = got.iter().map(|(a, b)| *b - *a).max().unwrap();
        assert!(
            worst >= 190 * MS && worst <= 215 * MS,
            "worst delay {worst:?}"
        );
    }

    #[test]
    fn under_its_rate_a_capped_link_adds_only_serialisation() {
        let mut link = Link::new(LinkConfig::default().capped(10_000_000), 1);
        let got = run(&mut link, 1_000, 1_250, 2 * MS); // 5 Mbit/s
        assert_eq!(link.stats().queue_drops, 0);
        let worst = got.iter().map(|(a, b)| *b - *a).max().unwrap();
        assert!(worst <= 2 * MS, "{worst:?}");
    }

    #[test]
    fn delay_and_jitter_stay_within_their_bounds() {
        let config = LinkConfig {
            delay: 50 * MS,
            jitter: 10 * MS,
            ..LinkConfig::default()
        };
        let mut link = Link::new(config, 7);
        let mut now = Duration::ZERO;
        let mut delays = Vec::new();
        for _ in 0..10_000 {
            let Fate::Delivered(at) = link.offer(now, 100, ()) else {
                panic!("a lossless link lost a packet")
            };
            delays.push((at - now).as_secs_f64() * 1e3);
            now += MS;
        }
        let min = delays.iter().cloned().fold(f64::MAX, f64::min);
        let max = delays.iter().cloned().fold(0.0, f64::max);
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        assert!(min >= 50.0 && max <= 60.0, "{min}..{max}");
        assert!((mean - 55.0).abs() < 0.3, "mean {mean}");
    }

    #[test]
    fn random_loss_matches_its_probability() {
        let config = LinkConfig {
            loss: Loss::Random(0.02),
            ..LinkConfig::default()
        };
        let mut link = Link::new(config, 3);
        for i in 0..200_000u64 {
            link.offer(Duration::from_micros(i * 100), 1_000, ());
        }
        let share = link.stats().lost as f64 / 200_000.0;
        assert!((share - 0.02).abs() < 0.002, "lost {share}");
    }

    #[test]
    fn bursty_loss_has_the_same_mean_in_bursts_of_the_asked_length() {
        let loss = Loss::bursty(0.02, 5.0);
        assert!((loss.mean() - 0.02).abs() < 1e-9);
        let mut link = Link::new(
            LinkConfig {
                loss,
                ..LinkConfig::default()
            },
            11,
        );
        let mut bursts = Vec::new();
        let mut run_len = 0;
        for i in 0..400_000u64 {
            match link.offer(Duration::from_micros(i * 100), 1_000, ()) {
                Fate::Lost => run_len += 1,
                _ if run_len > 0 => {
                    bursts.push(run_len);
                    run_len = 0;
                }
                _ => {}
            }
        }
        let share = link.stats().lost as f64 / 400_000.0;
        let mean_burst = bursts.iter().sum::<u32>() as f64 / bursts.len() as f64;
        assert!((share - 0.02).abs() < 0.003, "lost {share}");
        assert!((mean_burst - 5.0).abs() < 0.4, "mean burst {mean_burst}");
    }

    #[test]
    fn reordered_packets_are_overtaken_by_later_ones() {
        let config = LinkConfig {
            reorder: 0.1,
            reorder_extra: 5 * MS,
            ..LinkConfig::default()
        };
        let mut link = Link::new(config, 5);
        let got = run(&mut link, 10_000, 200, MS);
        assert_eq!(got.len(), 10_000, "reordering loses nothing");
        let overtaken = got.windows(2).filter(|w| w[1].0 < w[0].0).count();
        let share = overtaken as f64 / 10_000.0;
        assert!((share - 0.1).abs() < 0.015, "out of order {share}");
    }

    #[test]
    fn a_change_mid_run_applies_from_then_on() {
        let schedule = Schedule::starting(LinkConfig::default()).then(
            2 * 1000 * MS,
            LinkConfig {
                delay: 30 * MS,
                ..LinkConfig::default()
            },
        );
        let mut link = Link::new(schedule.at(Duration::ZERO), 1);
        let before = link.offer(1000 * MS, 100, ());
        assert_eq!(schedule.next_change(1000 * MS), Some(2000 * MS));
        link.set_config(2000 * MS, schedule.at(2000 * MS));
        let after = link.offer(2500 * MS, 100, ());
        assert_eq!(before, Fate::Delivered(1000 * MS));
        assert_eq!(after, Fate::Delivered(2530 * MS));
        assert_eq!(schedule.next_change(2000 * MS), None);
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let config = LinkConfig {
            jitter: 3 * MS,
            loss: Loss::Random(0.1),
            ..LinkConfig::default().capped(1_000_000)
        };
        let fates = |seed| {
            let mut link = Link::<()>::new(config, seed);
            (0..1_000u64)
                .map(|i| link.offer(Duration::from_micros(i * 500), 300, ()))
                .collect::<Vec<_>>()
        };
        assert_eq!(fates(42), fates(42));
        assert_ne!(fates(42), fates(43));
    }
}
