#!/bin/sh
# Creates the TLS material of the NATS client port (nothing here is committed):
#
#   deploy/certs/make-certs.sh [OUT_DIR]        # default: deploy/certs
#
#   ca.pem      the CA certificate: clients (workers, the recommender) verify the server with it
#   ca.key      the CA key: keep it off the servers (only needed to issue a new server cert)
#   server.pem  the server certificate, signed by the CA, for the names in NATS_TLS_NAMES
#   server.key  its key (mode 600): only the nats container reads it
#
# NATS_TLS_NAMES (default "DNS:nats,DNS:localhost,IP:127.0.0.1") are the subject
# alternative names: add the public name the recommender connects to, e.g.
#   NATS_TLS_NAMES="DNS:nats,DNS:localhost,IP:127.0.0.1,DNS:nats.example.com" deploy/certs/make-certs.sh
# NATS_TLS_DAYS (default 825) is the validity of the server certificate. Rerun to renew
# (an existing CA is kept, so clients need no new ca.pem), then
#   docker compose restart nats
set -eu
out="${1:-$(dirname "$0")}"
names="${NATS_TLS_NAMES:-DNS:nats,DNS:localhost,IP:127.0.0.1}"
days="${NATS_TLS_DAYS:-825}"
mkdir -p "$out"
umask 077
if [ ! -s "$out/ca.key" ] || [ ! -s "$out/ca.pem" ]; then
  openssl req -x509 -newkey rsa:3072 -sha256 -nodes -days 3650 \
    -subj "/CN=tips-ml NATS CA" -keyout "$out/ca.key" -out "$out/ca.pem" 2>/dev/null
fi
openssl req -newkey rsa:2048 -sha256 -nodes -subj "/CN=nats" \
  -keyout "$out/server.key" -out "$out/server.csr" 2>/dev/null
ext="$out/server.ext"
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n' \
  "$names" > "$ext"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" -CAcreateserial \
  -days "$days" -sha256 -extfile "$ext" -out "$out/server.pem" 2>/dev/null
rm -f "$out/server.csr" "$ext" "$out/ca.srl"
chmod 600 "$out/server.key" "$out/ca.key"
chmod 644 "$out/ca.pem" "$out/server.pem"
echo "TLS material in $out: ca.pem server.pem server.key (SAN $names)"
