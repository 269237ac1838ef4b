//! The ordered encoder chain and the rule for picking from it, apart from GStreamer so it can be
//! tested with made-up outcomes.

use crate::video::Codec;
use crate::{Error, Result};
use serde::Serialize;

/// One encoder element the chain may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EncoderCandidate {
    /// GStreamer element name.
    pub element: &'static str,
    /// What it outputs.
    pub codec: Codec,
    /// Fixed-function hardware (NVENC, VA-API) rather than software.
    pub hardware: bool,
    /// What to install or have when the element is missing.
    pub needs: &'static str,
}

/// H.264 encoders, best first.
pub const CHAIN_H264: &[EncoderCandidate] = &[
    EncoderCandidate {
        element: "nvh264enc",
        codec: Codec::H264,
        hardware: true,
        needs: "an NVIDIA GPU with NVENC and its driver (gstreamer1.0-plugins-bad's nvcodec)",
    },
    EncoderCandidate {
        element: "vah264enc",
        codec: Codec::H264,
        hardware: true,
        needs: "a VA-API GPU driver (gstreamer1.0-plugins-bad's va plugin)",
    },
    EncoderCandidate {
        element: "x264enc",
        codec: Codec::H264,
        hardware: false,
        needs: "gstreamer1.0-plugins-ugly",
    },
    EncoderCandidate {
        element: "openh264enc",
        codec: Codec::H264,
        hardware: false,
        needs: "gstreamer1.0-plugins-bad with openh264",
    },
];

/// VP8 encoders, best first.
pub const CHAIN_VP8: &[EncoderCandidate] = &[EncoderCandidate {
    element: "vp8enc",
    codec: Codec::Vp8,
    hardware: false,
    needs: "gstreamer1.0-plugins-good",
}];

/// The chain for a codec.
pub fn chain_for(codec: Codec) -> &'static [EncoderCandidate] {
    match codec {
        Codec::H264 => CHAIN_H264,
        Codec::Vp8 => CHAIN_VP8,
    }
}

/// An encoder that was passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedEncoder {
    /// GStreamer element name.
    pub element: String,
    /// Why it was not used.
    pub reason: String,
}

/// The encoder picked for a codec and what was tried before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EncoderChoice {
    /// The winner.
    pub candidate: EncoderCandidate,
    /// Those tried before it, in order.
    pub skipped: Vec<SkippedEncoder>,
}

/// Walks the chain for `codec` (or only `only`, when an operator names an element) and returns
/// the first candidate `try_encode` accepts. `try_encode` returns why a candidate does not work.
pub fn choose(
    codec: Codec,
    only: Option<&str>,
    mut try_encode: impl FnMut(&EncoderCandidate) -> std::result::Result<(), String>,
) -> Result<EncoderChoice> {
    let chain = chain_for(codec);
    let candidates: Vec<&EncoderCandidate> = match only {
        Some(name) => {
            let found: Vec<_> = chain.iter().filter(|c| c.element == name).collect();
            if found.is_empty() {
                let known: Vec<_> = chain.iter().map(|c| c.element).collect();
                return Err(Error::invalid(
                    "encoder",
                    format!(
                        "{name:?} is not a {codec} encoder; use one of {}",
                        known.join(", ")
                    ),
                ));
            }
            found
        }
        None => chain.iter().collect(),
    };
    let mut skipped = Vec::new();
    for candidate in candidates {
        match try_encode(candidate) {
            Ok(()) => {
                return Ok(EncoderChoice {
                    candidate: *candidate,
                    skipped,
                });
            }
            Err(reason) => skipped.push(SkippedEncoder {
                element: candidate.element.to_owned(),
                reason,
            }),
        }
    }
    Err(Error::NoEncoder {
        codec: codec.to_string(),
        tried: skipped
            .iter()
            .map(|s| format!("{} ({})", s.element, s.reason))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_working_encoder_wins_and_earlier_ones_say_why() {
        let choice = choose(Codec::H264, None, |c| match c.element {
            "x264enc" | "openh264enc" => Ok(()),
            other => Err(format!("{other} missing")),
        })
        .unwrap();
        assert_eq!(choice.candidate.element, "x264enc");
        let skipped: Vec<_> = choice.skipped.iter().map(|s| s.element.as_str()).collect();
        assert_eq!(skipped, ["nvh264enc", "vah264enc"]);
        assert_eq!(choice.skipped[0].reason, "nvh264enc missing");
    }

    #[test]
    fn nothing_working_lists_every_attempt() {
        let err = choose(Codec::H264, None, |_| Err("broken".into())).unwrap_err();
        let text = err.to_string();
        for c in CHAIN_H264 {
            assert!(text.contains(c.element), "{text}");
        }
    }

    #[test]
    fn unknown_or_mismatched_encoder_names_are_invalid_arguments() {
        for (codec, name) in [(Codec::H264, "x265enc"), (Codec::Vp8, "x264enc")] {
            match choose(codec, Some(name), |_| Ok(())) {
                Err(Error::InvalidArgument {
                    field: "encoder", ..
                }) => {}
                other => panic!("{name}: {other:?}"),
            }
        }
    }
}
