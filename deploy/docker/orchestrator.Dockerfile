# PixelGrid orchestrator (control plane). Build from the repository root:
#   docker build -f deploy/docker/orchestrator.Dockerfile -t pixelgrid/orchestrator .

FROM rust:1.95-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p orchestrator --bin orchestrator \
 && install -m 0755 target/release/orchestrator /usr/local/bin/orchestrator

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pixelgrid \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/pixelgrid --create-home pixelgrid
ENV PIXELGRID_LISTEN=0.0.0.0:50051 \
    PIXELGRID_HTTP_LISTEN=0.0.0.0:8000
COPY --from=build /usr/local/bin/orchestrator /usr/local/bin/orchestrator
USER 10001:10001
WORKDIR /var/lib/pixelgrid
EXPOSE 50051/tcp 8000/tcp
HEALTHCHECK --interval=10s --timeout=3s CMD ["curl", "-fsS", "http://127.0.0.1:8000/healthz"]
# Every replica of one grid must share the token key: mount it there (a Secret, a file).
CMD ["orchestrator", "--token-key", "/var/lib/pixelgrid/token.key"]
