# The grid's TURN relay: Debian's coturn, for players behind NATs that let no direct UDP through.
# Build from the repository root:
#   docker build -f deploy/docker/turn.Dockerfile -t pixelgrid/turn .
# It checks the per-session credentials the orchestrator hands out (TURN REST: the orchestrator's
# --turn-secret-file and this server's static-auth-secret hold the same secret). It needs the
# host's network (the relay ports are what players and nodes send to) and --external-ip when the
# host sits behind a 1:1 NAT, as cloud hosts do.

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends coturn \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pixelgrid \
 && useradd --system --uid 10001 --gid 10001 --no-create-home pixelgrid
USER 10001:10001
EXPOSE 3478/udp 3478/tcp 49160-49400/udp
# The compose file and the DaemonSet append the shared secret to a private copy of this config.
CMD ["turnserver", "-c", "/etc/pixelgrid/turn/turnserver.conf", "--log-file=stdout"]
