#!/usr/bin/env bash
# Makes a private CA and TLS certificates for a grid's daemons (for a test bed or a grid that
# does not use a public CA or cert-manager):
#
#   deploy/make-certs.sh DIR NAME...      e.g. deploy/make-certs.sh deploy/certs orchestrator indexer
#
# Writes DIR/ca.crt (give it to every client as PIXELGRID_CA_FILE), and per NAME DIR/NAME.crt and
# DIR/NAME.key, valid for NAME, localhost, 127.0.0.1 and the names in $PIXELGRID_CERT_SANS
# (comma-separated, e.g. "orchestrator.example.com,IP:192.0.2.10"). The CA key stays in DIR/ca.key:
# keep it offline. Certificates signed by the same CA also serve as client certificates for
# mutual TLS (--tls-client-ca DIR/ca.crt). It also writes DIR/turn.secret when missing: the
# secret the orchestrators sign TURN credentials with (--turn-secret-file) and coturn checks them
# with (static-auth-secret).
set -euo pipefail
dir="${1:?usage: make-certs.sh DIR NAME...}"
shift
mkdir -p "$dir"
if [ ! -f "$dir/ca.key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
    -subj "/CN=PixelGrid grid CA" -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
fi
for name in "$@"; do
  sans="DNS:$name,DNS:localhost,IP:127.0.0.1"
  extras="${PIXELGRID_CERT_SANS:-}"
  for extra in ${extras//,/ }; do
    case "$extra" in IP:*|DNS:*) sans="$sans,$extra" ;; *) sans="$sans,DNS:$extra" ;; esac
  done
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 397 -out "$dir/$name.crt" \
    -extfile <(printf "subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n" "$sans") 2>/dev/null
  rm -f "$dir/$name.csr"
  chmod 600 "$dir/$name.key"
  echo "$dir/$name.crt ($sans)"
done
if [ ! -f "$dir/turn.secret" ]; then
  (umask 077 && head -c32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/turn.secret")
  echo "$dir/turn.secret (TURN shared secret)"
fi
