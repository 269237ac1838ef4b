//! Any bytes as a bearer token: verification must refuse or accept, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pixelgrid_proto::token::TokenSigner;

fuzz_target!(|data: &[u8]| {
    let verifier = TokenSigner::from_seed(&[3; 32]).verifier();
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = verifier.verify(text, 1_800_000_000);
        let _ = pixelgrid_proto::token::parse_rfc3339(text);
    }
});
