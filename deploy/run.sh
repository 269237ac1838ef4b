#!/usr/bin/env bash
# The main job: set up this machine and run a whole PixelGrid on it — an orchestrator (embedded
# store, or a real etcd with --etcd), an indexer (one-minute epochs, so payouts show up quickly)
# and two edge nodes rendering on this machine's GPU or on the CPU (lavapipe) and reporting to
# the indexer — then open the printed URL and click Play. Ctrl-C stops everything.
#
#   deploy/run.sh [--etcd]
#   PIXELGRID_HOST=ip      address browsers reach this machine at (default: its first address;
#                          browsers do not pair WebRTC with 127.0.0.1 unless told to)
#   PIXELGRID_STATE=dir    node identities, token key, etcd data, indexer ledger (default: out/grid)
#   PIXELGRID_GAMES=dir    packaged games the nodes host besides arena: deploy/games/* (SuperTux,
#                          vkcube) are installed there (default: /var/tmp/pixelgrid-games, a
#                          directory the unprivileged game user can reach)
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p orchestrator -p edge-node -p indexer -p pixelgrid-client
bin=target/release
host="${PIXELGRID_HOST:-$(hostname -I 2>/dev/null | awk '{print $1}')}"
host="${host:-127.0.0.1}"
state="${PIXELGRID_STATE:-out/grid}"
mkdir -p "$state"
games="${PIXELGRID_GAMES:-/var/tmp/pixelgrid-games}"
mkdir -p -m 755 "$games"
for g in deploy/games/*/; do
  $bin/edge-node games --dir "$games" add "$g" >/dev/null
done

pids=()
stop() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

etcd_args=()
if [ "${1:-}" = "--etcd" ]; then
  etcd --name grid --data-dir "$state/etcd" --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
    --log-level error > "$state/etcd.log" 2>&1 &
  pids+=($!)
  etcd_args=(--etcd http://127.0.0.1:2379)
  sleep 2
fi

# Nodes trust only the token key they are given here (never one told over the network).
token_public_key=$($bin/orchestrator --token-key "$state/token.key" public-key)
# The page on this local grid hands anonymous players grants of the "demo" studio.
$bin/orchestrator --listen 127.0.0.1:50051 --http-listen "$host:8000" \
  --token-key "$state/token.key" --operator-key-file "$state/operator.key" \
  --state-file "$state/orchestrator-state.db" --demo-studio demo "${etcd_args[@]}" &
pids+=($!)
# One checker watches every node once a minute; the indexer counts its signed results.
checker_key=$($bin/pixelgrid checker-key --key "$state/checker.key")
$bin/indexer serve --listen 127.0.0.1:50061 --orchestrator http://127.0.0.1:50051 \
  --orchestrator-key "$token_public_key" --checker-key "$checker_key" \
  --ledger "$state/indexer.db" --epoch-ms 60000 --slot-ms 5000 --max-report-delay-ms 10000 &
indexer_pid=$!
pids+=($indexer_pid)
sleep 1
if ! kill -0 "$indexer_pid" 2>/dev/null; then
  echo "The indexer did not start (see its error above). A ledger written under older rules is" >&2
  echo "refused: move $state/indexer.db aside to start a new one." >&2
  exit 1
fi
for i in 1 2; do
  # glibc's per-thread arenas kept the memory of ended sessions (README, Soak).
  MALLOC_ARENA_MAX=2 $bin/edge-node serve --orchestrator http://127.0.0.1:50051 --listen "$host:808$i" \
    --orchestrator-key "$token_public_key" \
    --identity "$state/node-$i.key" --max-sessions 4 --drain-timeout-s 5 --games-dir "$games" \
    --indexer http://127.0.0.1:50061 --report-interval-ms 5000 &
  pids+=($!)
done
sleep 3
export PIXELGRID_OPERATOR_KEY_FILE="$state/operator.key"
# A studio for headless play and the SDK examples; its API key stays on this machine.
api_key_of() { sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p'; }
api_key=$($bin/pixelgrid --json studios create local --name "Local studio" 2>/dev/null | api_key_of || true)
[ -n "$api_key" ] || api_key=$($bin/pixelgrid --json studios keys add local | api_key_of)
(umask 077; echo "$api_key" > "$state/studio-local.key")
$bin/pixelgrid --api-key "$api_key" check --all-nodes --every-s 60 --key "$state/checker.key" \
  --submit-to http://127.0.0.1:50061 > "$state/checks.jsonl" 2> "$state/checker.log" &
pids+=($!)
$bin/pixelgrid --orchestrator http://127.0.0.1:50051 nodes || true
echo
$bin/pixelgrid --orchestrator http://127.0.0.1:50051 games || true
echo
echo "Play: open http://$host:8000/ in Chrome or Firefox and click Play (arrows/WASD, mouse, gamepad)."
echo "Play headless: PIXELGRID_API_KEY=\$(cat $state/studio-local.key) $bin/pixelgrid play --duration-s 10"
echo "               (--game supertux for a packaged game)"
echo "Checks: tail -f $state/checks.jsonl (a checker's signed watch of each node, once a minute)"
echo "Operate: PIXELGRID_OPERATOR_KEY_FILE=$state/operator.key $bin/pixelgrid sessions"
echo "         (nodes, drain NODE, undrain NODE, studios list, usage --studio local, epochs, payouts EPOCH)"
echo "Ctrl-C stops the grid."
wait
