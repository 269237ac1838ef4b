//! Any bytes as a bearer token: verification (session token or launch grant, one trusted key or
//! two during a rotation, with or without a `kid` footer) must refuse or accept, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pixelgrid_proto::token::{TokenSigner, TokenVerifier};

fuzz_target!(|data: &[u8]| {
    let one = TokenSigner::from_seed(&[3; 32]).verifier();
    let (a, b) = (
        TokenSigner::from_seed(&[3; 32]).public_key_hex(),
        TokenSigner::from_seed(&[4; 32]).public_key_hex(),
    );
    let two = TokenVerifier::from_hex_keys(&[a.as_str(), b.as_str()]).expect("two keys");
    if let Ok(text) = std::str::from_utf8(data) {
        for v in [&one, &two] {
            let _ = v.verify(text, 1_800_000_000);
            let _ = v.verify_grant(text, 1_800_000_000);
        }
        let _ = pixelgrid_proto::token::parse_rfc3339(text);
    }
});
