//! The built-in games' sound: a looping arpeggio and a short blip for each key or button the
//! player presses, synthesised sample by sample. Pure: it counts samples, never reads a clock.

use super::{CHANNELS, SAMPLE_RATE};

/// Notes of the loop, Hz (A minor arpeggio over two octaves).
const NOTES: [f32; 8] = [220.0, 261.63, 329.63, 440.0, 523.25, 440.0, 329.63, 261.63];
/// Length of each note, samples (150 ms).
const NOTE_SAMPLES: u64 = SAMPLE_RATE as u64 * 150 / 1000;
/// Length of a blip, samples (80 ms).
const BLIP_SAMPLES: u64 = SAMPLE_RATE as u64 * 80 / 1000;
const MUSIC_LEVEL: f32 = 0.18;
const BLIP_LEVEL: f32 = 0.35;

/// The generator; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Soundtrack {
    sample: u64,
    // (start sample, pitch) of blips still sounding.
    blips: Vec<(u64, f32)>,
}

impl Soundtrack {
    /// A soundtrack at its first sample.
    pub fn new() -> Self {
        Self::default()
    }

    /// Samples (per channel) made so far.
    pub fn position(&self) -> u64 {
        self.sample
    }

    /// Starts a blip at the current sample; `pitch` in Hz.
    pub fn blip(&mut self, pitch: f32) {
        if self.blips.len() < 16 {
            self.blips.push((self.sample, pitch.clamp(100.0, 4000.0)));
        }
    }

    /// Fills `out` with interleaved stereo 16-bit samples and moves on by `out.len() / 2`.
    pub fn fill(&mut self, out: &mut [i16]) {
        let rate = SAMPLE_RATE as f32;
        for frame in out.chunks_exact_mut(CHANNELS as usize) {
            let n = self.sample;
            let note = NOTES[((n / NOTE_SAMPLES) % NOTES.len() as u64) as usize];
            let in_note = (n % NOTE_SAMPLES) as f32 / NOTE_SAMPLES as f32;
            // A plucked envelope: quick attack, exponential decay.
            let envelope = (in_note * 40.0).min(1.0) * (-4.0 * in_note).exp();
            let phase = n as f32 / rate;
            let music = MUSIC_LEVEL * envelope * (std::f32::consts::TAU * note * phase).sin();
            let mut effects = 0.0;
            for &(start, pitch) in &self.blips {
                if n - start >= BLIP_SAMPLES {
                    continue;
                }
                let t = (n - start) as f32 / rate;
                let left = 1.0 - (n - start) as f32 / BLIP_SAMPLES as f32;
                // A falling chirp: the pitch drops an octave over the blip.
                let f = pitch * (1.0 - 0.5 * (1.0 - left));
                effects += BLIP_LEVEL * left * (std::f32::consts::TAU * f * t).sin();
            }
            // Music a little left, effects a little right.
            let l = music * 0.9 + effects * 0.6;
            let r = music * 0.6 + effects * 0.9;
            frame[0] = (l.clamp(-1.0, 1.0) * f32::from(i16::MAX)) as i16;
            frame[1] = (r.clamp(-1.0, 1.0) * f32::from(i16::MAX)) as i16;
            self.sample += 1;
            if self.sample.is_multiple_of(64) {
                let now = self.sample;
                self.blips.retain(|&(start, _)| now - start < BLIP_SAMPLES);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixelgrid_proto::audio::level as rms;

    fn second(track: &mut Soundtrack) -> Vec<i16> {
        let mut out = vec![0i16; (SAMPLE_RATE * CHANNELS) as usize];
        track.fill(&mut out);
        out
    }

    #[test]
    fn the_loop_is_audible_and_the_same_every_time() {
        let (mut a, mut b) = (Soundtrack::new(), Soundtrack::new());
        let (sa, sb) = (second(&mut a), second(&mut b));
        assert_eq!(sa, sb, "no clock, no randomness");
        let level = rms(&sa);
        assert!((0.03..0.5).contains(&level), "level {level}");
        assert_eq!(a.position(), u64::from(SAMPLE_RATE));
    }

    #[test]
    fn a_blip_adds_sound_and_then_fades() {
        let mut quiet = Soundtrack::new();
        let mut blipped = Soundtrack::new();
        blipped.blip(880.0);
        let mut q = vec![0i16; 2 * BLIP_SAMPLES as usize];
        let mut b = q.clone();
        quiet.fill(&mut q);
        blipped.fill(&mut b);
        assert!(rms(&b) > rms(&q) * 1.3, "{} vs {}", rms(&b), rms(&q));
        // After the blip the two are the same music again.
        let (mut q2, mut b2) = (vec![0i16; 960], vec![0i16; 960]);
        quiet.fill(&mut q2);
        blipped.fill(&mut b2);
        assert_eq!(q2, b2);
    }
}
