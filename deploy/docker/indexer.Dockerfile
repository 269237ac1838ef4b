# PixelGrid indexer. Build from the repository root:
#   docker build -f deploy/docker/indexer.Dockerfile -t pixelgrid/indexer .
# Keep /var/lib/pixelgrid on a volume: it holds the SQLite ledger.

FROM rust:1.95-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev libsqlite3-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p indexer --bin indexer \
 && install -m 0755 target/release/indexer /usr/local/bin/indexer

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libsqlite3-0 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pixelgrid \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/pixelgrid --create-home pixelgrid
ENV PIXELGRID_INDEXER_LISTEN=0.0.0.0:50061 \
    PIXELGRID_INDEXER_HTTP_LISTEN=0.0.0.0:8061 \
    PIXELGRID_LEDGER=/var/lib/pixelgrid/indexer.db
COPY --from=build /usr/local/bin/indexer /usr/local/bin/indexer
USER 10001:10001
WORKDIR /var/lib/pixelgrid
VOLUME ["/var/lib/pixelgrid"]
EXPOSE 50061/tcp 8061/tcp
HEALTHCHECK --interval=10s --timeout=3s CMD ["curl", "-fsS", "http://127.0.0.1:8061/healthz"]
CMD ["indexer", "serve"]
