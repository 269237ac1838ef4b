//! A studio's `pixelgrid-game.toml` is untrusted: any bytes must give a manifest or an error
//! naming a field, never a panic; an accepted manifest fills in any mode without panicking.
#![no_main]

use edge_node::runtime::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Manifest::parse(text) {
        Ok(m) => {
            for mode in &m.modes {
                let _ = m.run.args_for(*mode);
                assert!(m.supports(*mode));
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
