# PixelGrid edge node. Build from the repository root:
#   docker build -f deploy/docker/edge-node.Dockerfile -t pixelgrid/edge-node .
# Run with the NVIDIA container toolkit on GPU machines (--gpus all); without a GPU it renders on
# Mesa's lavapipe. Host networking is recommended: WebRTC media uses UDP ports chosen at run time.
# Set PIXELGRID_ICE_IP and PIXELGRID_PUBLIC_URL to the address players reach the host at.

FROM rust:1.95-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev libsqlite3-dev \
      glslc libvulkan-dev libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p edge-node --bin edge-node \
 && install -m 0755 target/release/edge-node /usr/local/bin/edge-node

FROM debian:bookworm-slim
# GStreamer encoders (x264 in ugly, NVENC/VA/openh264 in bad, VP8 in good), Vulkan loader and
# lavapipe for machines without a GPU, curl for the health check.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libvulkan1 mesa-vulkan-drivers \
      gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
      gstreamer1.0-plugins-ugly gstreamer1.0-libav libunwind8 libdw1 \
      xvfb bubblewrap pulseaudio \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pixelgrid \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/pixelgrid --create-home pixelgrid
# What the NVIDIA container toolkit mounts: CUDA/NVML (compute, utility), NVENC (video), Vulkan
# ICD (graphics).
# MALLOC_ARENA_MAX: glibc's per-thread arenas kept the memory of ended sessions (README, Soak).
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,video,graphics,utility \
    MALLOC_ARENA_MAX=2 \
    PIXELGRID_LISTEN=0.0.0.0:8080 \
    PIXELGRID_IDENTITY=/var/lib/pixelgrid/node.key
COPY --from=build /usr/local/bin/edge-node /usr/local/bin/edge-node
USER 10001:10001
WORKDIR /var/lib/pixelgrid
VOLUME ["/var/lib/pixelgrid"]
EXPOSE 8080/tcp
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s CMD ["curl", "-fsS", "http://127.0.0.1:8080/healthz"]
CMD ["edge-node", "serve"]
