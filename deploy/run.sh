#!/usr/bin/env bash
# The main job: set up this machine, then render and encode the built-in game `arena` on this
# node (Vulkan on the GPU, or lavapipe on the CPU) and write a video and snapshots you can open.
# Until the orchestrator and player page land, this is how to watch the grid's edge node work.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
out="${PIXELGRID_OUT:-out}"
mkdir -p "$out"
cargo build --release -p edge-node
bin=target/release/edge-node
$bin probe
$bin snapshot --frames 3 --out "$out/snapshots" --hold ArrowRight >/dev/null
$bin record --seconds "${PIXELGRID_SECONDS:-10}" --hold ArrowRight --hold ArrowDown --out "$out/arena.mp4"
echo
echo "Play it:   ffplay $out/arena.mp4   (or vlc, or any browser)"
echo "Look at:   $out/snapshots/frame-00000.png"
echo "Measure:   $bin bench-pipeline --width 1280 --height 720 --fps 30 --frames 600 --sessions 8"
