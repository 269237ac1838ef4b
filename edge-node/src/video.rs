//! The shape of a stream: picture size, frame rate, codec, and their limits.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Largest width or height a session may ask for.
pub const MAX_DIMENSION_PX: u32 = 4096;
/// Highest frame rate a session may ask for.
pub const MAX_FPS: u32 = 240;

/// Picture size and frame rate of one session, validated by [`VideoMode::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoMode {
    /// Width in pixels (even, 16..=4096).
    pub width: u32,
    /// Height in pixels (even, 16..=4096).
    pub height: u32,
    /// Frames per second (1..=240).
    pub fps: u32,
}

impl VideoMode {
    /// Checks a requested mode. Sizes must be even because 4:2:0 chroma covers 2x2 pixels.
    pub fn new(width: u32, height: u32, fps: u32) -> Result<Self> {
        check_dimension("width", width)?;
        check_dimension("height", height)?;
        if fps == 0 || fps > MAX_FPS {
            return Err(Error::invalid(
                "fps",
                format!("{fps} is out of range; use 1..={MAX_FPS}"),
            ));
        }
        Ok(Self { width, height, fps })
    }

    /// Time between two frames, in microseconds.
    pub fn frame_interval_us(&self) -> u64 {
        1_000_000 / u64::from(self.fps)
    }
}

fn check_dimension(field: &'static str, value: u32) -> Result<()> {
    if !(16..=MAX_DIMENSION_PX).contains(&value) {
        return Err(Error::invalid(
            field,
            format!("{value} px is out of range; use 16..={MAX_DIMENSION_PX}"),
        ));
    }
    if !value.is_multiple_of(2) {
        return Err(Error::invalid(
            field,
            format!("{value} px is odd; 4:2:0 video needs an even size"),
        ));
    }
    Ok(())
}

/// Video codecs a session can be encoded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// H.264 constrained-baseline, what every browser decodes.
    H264,
    /// VP8, for clients without H.264.
    Vp8,
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Codec::H264 => "h264",
            Codec::Vp8 => "vp8",
        })
    }
}

impl std::str::FromStr for Codec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "h264" | "avc" => Ok(Codec::H264),
            "vp8" => Ok(Codec::Vp8),
            other => Err(Error::invalid(
                "codec",
                format!("{other:?} is not supported; use h264 or vp8"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_modes() {
        assert!(VideoMode::new(1280, 720, 60).is_ok());
        assert!(VideoMode::new(1920, 1080, 30).is_ok());
        assert!(VideoMode::new(4096, 2160, 30).is_ok());
    }

    #[test]
    fn rejects_bad_modes_naming_the_field() {
        let cases = [
            (0, 720, 30, "width"),
            (1280, 0, 30, "height"),
            (1281, 720, 30, "width"),
            (1280, 721, 30, "height"),
            (4098, 720, 30, "width"),
            (1280, 720, 0, "fps"),
            (1280, 720, 1000, "fps"),
        ];
        for (w, h, fps, field) in cases {
            match VideoMode::new(w, h, fps) {
                Err(Error::InvalidArgument { field: f, .. }) => {
                    assert_eq!(f, field, "{w}x{h}@{fps}")
                }
                other => panic!("{w}x{h}@{fps}: expected an error on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn codec_names_parse() {
        assert_eq!("H264".parse::<Codec>().unwrap(), Codec::H264);
        assert_eq!("vp8".parse::<Codec>().unwrap(), Codec::Vp8);
        assert!("hevc".parse::<Codec>().is_err());
    }
}
