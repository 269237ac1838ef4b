//! Compiles the GLSL shaders in `shaders/` to SPIR-V with `glslc` (Debian `glslc`, installed by
//! `deploy/install-deps.sh`).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for name in ["rect.vert", "rect.frag"] {
        let src = PathBuf::from("shaders").join(name);
        println!("cargo:rerun-if-changed={}", src.display());
        let dst = out.join(format!("{name}.spv"));
        let status = Command::new("glslc")
            .args(["-O", "--target-env=vulkan1.1", "-o"])
            .arg(&dst)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run glslc ({e}): install Debian's `glslc` (deploy/install-deps.sh does)"
                )
            });
        assert!(status.success(), "glslc failed on {}", src.display());
    }
}
