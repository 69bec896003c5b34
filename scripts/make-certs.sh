#!/usr/bin/env bash
# Make a small PKI for keygate's TLS listeners with openssl:
#
#   ca.pem / ca.key          a CA (keep ca.key offline in real use)
#   server.pem / server.key  keygate's server certificate, for the given names
#   client.pem / client.key  a workload client certificate whose SPIFFE ID
#                            (URI SAN) names it to keygate
#
# Usage: scripts/make-certs.sh DIR [SERVER_NAMES] [SPIFFE_ID]
#   SERVER_NAMES  comma-separated host names and IP addresses
#                 (default: localhost,127.0.0.1)
#   SPIFFE_ID     default: spiffe://example.org/ns/payments/sa/api
#
# Then, in keygate's config:
#   [server.tls]
#   cert = "DIR/server.pem"
#   key = "DIR/server.key"
#   client_ca = "DIR/ca.pem"
#   [[identities]]
#   certificates = ["spiffe://example.org/ns/payments/sa/api"]
# and a workload presents DIR/client.pem + DIR/client.key, trusting DIR/ca.pem.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 3 ]; then
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 64
fi
dir=$1
server_names=${2:-localhost,127.0.0.1}
spiffe_id=${3:-spiffe://example.org/ns/payments/sa/api}
days=365

command -v openssl >/dev/null || { echo "error: openssl not found (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"
umask 077 # private keys readable by their owner only

# subjectAltName entries: IP:... for addresses, DNS:... for names
sans=""
IFS=, read -ra names <<<"$server_names"
for name in "${names[@]}"; do
    if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then sans+="IP:$name,"; else sans+="DNS:$name,"; fi
done
sans=${sans%,}

# 1. The CA: self-signed, may sign certificates (ECDSA P-256 keys throughout).
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout ca.key -out ca.pem -days "$days" -subj "/CN=keygate example CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# 2. keygate's server certificate, for TLS clients that check the names above.
cat >server.ext <<EOF
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $sans
EOF
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout server.key -out server.csr -subj "/CN=${names[0]}" 2>/dev/null
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -days "$days" -extfile server.ext -out server.pem 2>/dev/null

# 3. A workload's client certificate: its SPIFFE ID is its name in keygate.
cat >client.ext <<EOF
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = URI:$spiffe_id
EOF
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout client.key -out client.csr -subj "/CN=${spiffe_id##*/}" 2>/dev/null
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -days "$days" -extfile client.ext -out client.pem 2>/dev/null

rm -f server.csr client.csr server.ext client.ext ca.srl
chmod 644 ca.pem server.pem client.pem
echo "wrote $(pwd)/{ca,server,client}.{pem,key}: server names $sans; client $spiffe_id"
