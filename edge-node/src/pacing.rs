//! The session's frame clock: when to render the next frame and which ticks were missed.
//!
//! Clock-free: the session asks [`FramePacer::poll`] with the current time in microseconds since
//! it started and gets back either "render tick N now" or "sleep until T". A session that falls
//! more than one frame behind skips the missed ticks (and counts them) instead of rendering a
//! burst to catch up: a player wants the newest picture, not a queue of old ones.

/// What the session should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Render the frame for `tick` (its due time is `due_us`); `skipped` ticks before it were
    /// missed because the session ran late.
    Render {
        /// Frame clock tick; the frame number shown to the player.
        tick: u64,
        /// When this frame was due, in µs since the session started.
        due_us: u64,
        /// Ticks dropped since the previous render.
        skipped: u64,
    },
    /// Nothing to do before this time, in µs since the session started.
    SleepUntil(u64),
}

/// Paces frames at a fixed rate; see the module docs.
#[derive(Debug, Clone)]
pub struct FramePacer {
    interval_us: u64,
    next_tick: u64,
    next_due_us: u64,
}

impl FramePacer {
    /// A pacer whose first frame is due at time 0. `fps` must be at least 1.
    pub fn new(fps: u32) -> Self {
        Self {
            interval_us: 1_000_000 / u64::from(fps.max(1)),
            next_tick: 0,
            next_due_us: 0,
        }
    }

    /// Time between frames.
    pub fn interval_us(&self) -> u64 {
        self.interval_us
    }

    /// The player's input arrived at `now_us`: the next frame is due now instead of at its tick,
    /// so the input shows a frame sooner, and the frames after it follow one interval apart.
    /// Refused (false) when it would put two frames closer than half an interval, so the frame
    /// rate never goes above its setting by more than that.
    pub fn hurry(&mut self, now_us: u64) -> bool {
        let previous_due = self.next_due_us.saturating_sub(self.interval_us);
        if now_us >= self.next_due_us || now_us < previous_due + self.interval_us / 2 {
            return false;
        }
        self.next_due_us = now_us;
        true
    }

    /// Decides what to do at `now_us`.
    pub fn poll(&mut self, now_us: u64) -> Pace {
        if now_us < self.next_due_us {
            return Pace::SleepUntil(self.next_due_us);
        }
        // Ticks whose whole interval has already passed are skipped.
        let skipped = (now_us - self.next_due_us) / self.interval_us;
        let tick = self.next_tick + skipped;
        let due_us = self.next_due_us + skipped * self.interval_us;
        self.next_tick = tick + 1;
        self.next_due_us = due_us + self.interval_us;
        Pace::Render {
            tick,
            due_us,
            skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_brings_the_next_frame_forward_but_never_doubles_the_rate() {
        let mut p = FramePacer::new(50); // 20 ms
        assert!(matches!(p.poll(0), Pace::Render { tick: 0, .. }));
        // 5 ms after a frame: too soon, the frame stays at 20 ms.
        assert!(!p.hurry(5_000));
        assert_eq!(p.poll(5_000), Pace::SleepUntil(20_000));
        // 12 ms after it: rendered at once, and the next one 20 ms later.
        assert!(p.hurry(12_000));
        assert!(matches!(
            p.poll(12_000),
            Pace::Render {
                tick: 1,
                skipped: 0,
                ..
            }
        ));
        assert_eq!(p.poll(12_001), Pace::SleepUntil(32_000));
        // A frame already due is not hurried.
        assert!(!p.hurry(40_000));
    }

    #[test]
    fn on_time_session_renders_every_tick() {
        let mut p = FramePacer::new(50); // 20 ms
        let mut now = 0;
        for expected in 0..100 {
            match p.poll(now) {
                Pace::Render { tick, skipped, .. } => {
                    assert_eq!((tick, skipped), (expected, 0));
                }
                other => panic!("expected a render at {now}, got {other:?}"),
            }
            assert_eq!(p.poll(now + 5_000), Pace::SleepUntil(now + 20_000));
            now += 20_000;
        }
    }

    #[test]
    fn late_session_skips_missed_ticks_and_keeps_the_grid() {
        let mut p = FramePacer::new(50);
        assert!(matches!(p.poll(0), Pace::Render { tick: 0, .. }));
        // Stalled for 75 ms: ticks 1, 2 are missed, tick 3 (due 60 ms) renders now.
        assert_eq!(
            p.poll(75_000),
            Pace::Render {
                tick: 3,
                due_us: 60_000,
                skipped: 2
            }
        );
        assert_eq!(p.poll(75_001), Pace::SleepUntil(80_000));
    }

    #[test]
    fn slightly_late_frames_are_not_dropped() {
        let mut p = FramePacer::new(30);
        let i = p.interval_us();
        assert!(matches!(p.poll(0), Pace::Render { .. }));
        assert_eq!(
            p.poll(i + i - 1),
            Pace::Render {
                tick: 1,
                due_us: i,
                skipped: 0
            }
        );
    }
}
