#!/usr/bin/env bash
# Runs every test of the workspace against real components (lavapipe Vulkan, GStreamer, ...).
# Installs what is missing first, so it works on a fresh Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
# rustup's cargo and the PyPI tools (hadolint, kubernetes-validate) the deploy-file tests run.
export PATH="${PIXELGRID_TOOLS:-/opt/pixelgrid-tools}/bin:$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { echo "test: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
# Without a GPU, pin Vulkan to lavapipe so a stray ICD cannot change what is tested.
if [ -z "${VK_ICD_FILENAMES:-}" ] && ! ls /dev/nvidia0 >/dev/null 2>&1; then
  for f in /usr/share/vulkan/icd.d/lvp_icd.x86_64.json /usr/share/vulkan/icd.d/lvp_icd.*.json; do
    [ -f "$f" ] && export VK_ICD_FILENAMES="$f" && break
  done
fi
cargo test --workspace --all-targets "$@"
