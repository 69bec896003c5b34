#!/usr/bin/env bash
# Quick cache-hit measurement of the AWS front end (the full benchmark
# harness is issue 6): starts the release binary on the demo config, signs
# one GetSecretValue with botocore (valid for the 5-minute SigV4 window),
# replays it with wrk, and reports throughput, latency and keygate's CPU
# time per request from /proc. Needs wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/peers.sh
kg_ensure_venv
command -v wrk >/dev/null || { echo "error: wrk not found (apt-get install wrk)" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keygate-target}"
cargo build --release --locked -q
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
sed -e 's/8740/18740/; s/8741/18741/' -e "s#./data/keygate.db#$work/kg.db#" config/demo.toml > "$work/bench.toml"
if [ -n "${AUDIT_MODE:-}" ]; then printf "\n[audit]\nmode = \"%s\"\n" "$AUDIT_MODE" >> "$work/bench.toml"; fi
KEYGATE_LOG=warn "$CARGO_TARGET_DIR/release/keygate" serve --config "$work/bench.toml" 2> "$work/kg.log" &
pid=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:18741/healthz >/dev/null && break; sleep 0.1; done
"$KG_VENV/bin/python" - "$work/req.lua" <<'PY'
import json, sys
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
body = json.dumps({"SecretId": "demo/api/key"})
req = AWSRequest(method="POST", url="http://127.0.0.1:18740/", data=body, headers={
    "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "secretsmanager.GetSecretValue"})
SigV4Auth(Credentials("AKIAKEYGATEDEMOAPP01", "demo-app-secret-key"), "secretsmanager", "us-east-1").add_auth(req)
lines = ['wrk.method = "POST"', f'wrk.body = {json.dumps(body)}']
lines += [f'wrk.headers[{json.dumps(k)}] = {json.dumps(v)}' for k, v in req.headers.items()]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
curl -sf -X POST http://127.0.0.1:18740/ >/dev/null || true
wrk -t2 -c32 -d3s -s "$work/req.lua" http://127.0.0.1:18740/ >/dev/null   # warm-up
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(ticks)
out=$(wrk -t2 -c32 -d10s --latency -s "$work/req.lua" http://127.0.0.1:18740/)
after=$(ticks)
echo "$out"
requests=$(echo "$out" | awk '/requests in/ {print $1}')
hz=$(getconf CLK_TCK)
non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
echo "non-2xx responses: ${non2xx:-0}"
awk -v t=$((after - before)) -v hz="$hz" -v n="$requests" 'BEGIN { printf "keygate CPU per request: %.1f us\n", t / hz / n * 1e6 }'
echo "peak RSS: $(awk '/VmHWM/ {print $2, $3}' /proc/$pid/status)"
