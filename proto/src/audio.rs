//! The sound a session sends, as node and player agree on it: Opus, 48 kHz stereo, 20 ms
//! packets, and how loud a stretch of decoded samples is.

/// Samples per second (each channel).
pub const SAMPLE_RATE: u32 = 48_000;
/// Channels (interleaved left, right).
pub const CHANNELS: u32 = 2;
/// Milliseconds of sound per packet.
pub const FRAME_MS: u32 = 20;

/// Root-mean-square level of 16-bit samples: 0.0 for silence up to 1.0.
pub fn level(samples: &[i16]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples
        .iter()
        .map(|&s| (f64::from(s) / f64::from(i16::MAX)).powi(2))
        .sum();
    (sum / samples.len() as f64).sqrt() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_is_zero_for_silence_and_grows_with_loudness() {
        assert_eq!(level(&[]), 0.0);
        assert_eq!(level(&[0; 100]), 0.0);
        let quiet: Vec<i16> = (0..100)
            .map(|i| if i % 2 == 0 { 1000 } else { -1000 })
            .collect();
        let loud: Vec<i16> = quiet.iter().map(|s| s * 10).collect();
        assert!(level(&loud) > 9.0 * level(&quiet));
    }
}
