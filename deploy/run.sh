#!/usr/bin/env bash
# The main job: set up this machine, build the edge node and serve the built-in game `arena` to
# a browser over WebRTC. Open the printed URL and click Play. Ctrl-C stops it.
#
#   PIXELGRID_LISTEN=ip:port   where to serve (default: this machine's first address, port 8080;
#                              browsers do not pair with 127.0.0.1 unless told to)
#
# Until the orchestrator and the local grid land, the node runs alone in --insecure-dev mode:
# it signs its own session tokens and serves the player page itself.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p edge-node
bin=target/release/edge-node
$bin probe
if [ -z "${PIXELGRID_LISTEN:-}" ]; then
  ip=$(hostname -I 2>/dev/null | awk '{print $1}')
  export PIXELGRID_LISTEN="${ip:-127.0.0.1}:8080"
fi
echo
echo "Open http://$PIXELGRID_LISTEN/ in Chrome or Firefox and click Play (arrows/WASD, mouse, gamepad)."
echo "Record instead:  $bin record --seconds 10 --hold ArrowRight --out arena.mp4"
echo
exec $bin serve --insecure-dev
