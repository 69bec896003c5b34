#!/usr/bin/env bash
# keygate's benchmark harness: one command, one Markdown table.
#
#   bash scripts/bench.sh            full run (a few minutes on 2 cores)
#   bash scripts/bench.sh --smoke    every row, very briefly: checks the harness, not the numbers
#
# Environment:
#   KEYGATE_BENCH_PROFILE=release|debug   which build to measure (default release;
#                                         debug only makes sense with --smoke, as CI does)
#   CARGO_TARGET_DIR                      default $HOME/.cache/keygate-target
#   KEYGATE_BENCH_KEEP=1                  keep the work dir (configs, logs, wrk output)
#   KEYGATE_BENCH_SET='audit.mode="batched"; cache.ttl="60s"'
#                                         overrides applied to every generated config
#                                         (dotted.key=<TOML value>, separated by ';')
#   KEYGATE_BENCH_CARGO_ARGS='--no-default-features'
#                                         extra cargo arguments for the keygate build
#                                         (here: the system allocator instead of jemalloc)
#
# Everything runs on 127.0.0.1 on free ports: a bare hyper server (the
# ceiling, examples/bare_hyper.rs), fresh keygate instances on configs derived
# from config/demo.toml (benches/kgbench.py), wrk for load, benches/held.py for
# held requests, criterion (benches/policy.rs) for policy decisions. The table
# goes to stdout and to $CARGO_TARGET_DIR/bench/last.md.
#
# Each wrk row: a warm-up run, then the measured run; keygate's CPU per
# request is the change of utime+stime in /proc/<pid>/stat (all threads) over
# the measured run divided by wrk's request count; peak RSS is VmHWM. The
# cache-hit targets are judged on paired rounds (bare hyper and keygate
# alternating, short runs, medians of the per-round ratios), since the VM's
# speed drifts between rows a minute apart; so is the cache-miss target
# (direct call, bare proxy, keygate with each AWS client, back to back).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# From config/demo.toml: the Vault row's path and token.
VAULT_PATH=/v1/secret/data/demo/db
VAULT_TOKEN=kg-demo-app-token
DEMO_CONFIG=$ROOT/config/demo.toml

usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
log() { printf '==> [%3ss] %s\n' "$SECONDS" "$*" >&2; }  # seconds since start
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

SMOKE=0
for arg in "$@"; do
    case $arg in
        --smoke) SMOKE=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $arg" ;;
    esac
done

PROFILE=${KEYGATE_BENCH_PROFILE:-release}
case $PROFILE in
    release) build_flags=(--release); bench_flags=(); bin_dir=release ;;
    # `cargo bench` defaults to the optimized bench profile; the dev profile
    # keeps a debug smoke run (CI) from compiling everything optimized too.
    debug) build_flags=(); bench_flags=(--profile dev); bin_dir=debug ;;
    *) die "KEYGATE_BENCH_PROFILE=$PROFILE: use release or debug" ;;
esac
[ "$PROFILE" = release ] || [ "$SMOKE" = 1 ] || log "WARNING: measuring a debug build: the numbers mean nothing"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/keygate-target}

if [ "$SMOKE" = 1 ]; then
    MODE=smoke WARMUP=1 DURATION=1
    PAIR_ROUNDS=1 PAIR_SECS=1
    HELD_N=200 HELD_APPROVE=200
    SCALE_NS=(100 1000)
    IDS_N=1000
    CRITERION_ARGS=(--warm-up-time 0.1 --measurement-time 0.2 --sample-size 10)
    CACHE_ITERATIONS=20000
else
    MODE=full WARMUP=3 DURATION=10
    PAIR_ROUNDS=5 PAIR_SECS=4
    HELD_N=10000 HELD_APPROVE=1000
    SCALE_NS=(1000 10000)
    IDS_N=10000
    CRITERION_ARGS=(--warm-up-time 1 --measurement-time 3)
    CACHE_ITERATIONS=2000000
fi
COLD_RUNS=5

# Config overrides for every keygate instance, as kgbench --set arguments.
SET_ARGS=()
IFS=';' read -ra overrides <<<"${KEYGATE_BENCH_SET:-}"
for o in "${overrides[@]}"; do
    o=$(sed 's/^[[:space:]]*//; s/[[:space:]]*$//' <<<"$o")
    [ -z "$o" ] || SET_ARGS+=(--set "$o")
done

# --- tools ---------------------------------------------------------------

source scripts/peers.sh
kg_ensure_venv
PY=$KG_VENV/bin/python
export PYTHONDONTWRITEBYTECODE=1  # held.py imports kgbench.py: leave no __pycache__ in benches/
KGB=("$PY" "$ROOT/benches/kgbench.py")

ensure_wrk() {
    command -v wrk >/dev/null && return 0
    log "wrk not found: installing it with apt-get"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
    { "${sudo[@]}" apt-get install -y -qq wrk >/dev/null 2>&1 ||
        { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq wrk; }; } ||
        die "wrk is missing and 'apt-get install wrk' failed; install wrk (https://github.com/wg/wrk) and rerun"
    command -v wrk >/dev/null || die "apt-get installed wrk but it is not on PATH"
}
ensure_wrk
command -v curl >/dev/null || die "curl is needed (apt-get install curl)"

# Held requests need one descriptor per connection in keygate and in held.py
# (both inherit this limit), and wrk needs one per connection too.
need_fds=$((HELD_N + 512))
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=1048576
[ "$hard" -ge "$need_fds" ] || die "need $need_fds open files for $HELD_N held requests, but the hard limit (ulimit -Hn) is $hard"
ulimit -n "$hard"

# --- build -------------------------------------------------------------------

# Separate invocations on purpose: building an example turns on the features
# that dev-dependencies (criterion) ask of shared crates, so a keygate binary
# built in the same invocation would differ from the one `cargo build` ships
# (and from the one other builds leave in the shared target dir). keygate
# comes last: `cargo bench` builds the package's binaries too, with default
# features, and would replace a binary built with KEYGATE_BENCH_CARGO_ARGS;
# the policy row runs `cargo bench` again, so every row runs a copy.
log "building examples/bare_hyper, benches/policy.rs and benches/cache.rs ($PROFILE)"
cargo build "${build_flags[@]}" --locked --example bare_hyper
cargo bench "${bench_flags[@]}" --locked --bench policy --no-run
cargo bench "${bench_flags[@]}" --locked --bench cache --no-run
log "building keygate ($PROFILE${KEYGATE_BENCH_CARGO_ARGS:+, $KEYGATE_BENCH_CARGO_ARGS})"
read -ra keygate_cargo_args <<<"${KEYGATE_BENCH_CARGO_ARGS:-}"
cargo build "${build_flags[@]}" "${keygate_cargo_args[@]}" --locked --bin keygate
[ -x "$CARGO_TARGET_DIR/$bin_dir/keygate" ] || die "no keygate binary at $CARGO_TARGET_DIR/$bin_dir/keygate after the build"
BARE=$CARGO_TARGET_DIR/$bin_dir/examples/bare_hyper
[ -x "$BARE" ] || die "no bare_hyper binary at $BARE after the build"

# --- processes ---------------------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/keygate-bench.XXXXXX")
KG=$work/keygate
cp "$CARGO_TARGET_DIR/$bin_dir/keygate" "$KG"
PIDS=()

# alive PID: running (a process that exited but was not yet reaped is a
# zombie, which `kill -0` would still report as there).
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

# stop_pid PID: SIGTERM (keygate shuts down gracefully), SIGKILL after 5 s.
# The pid leaves PIDS first, so the exit trap never signals a reused pid.
stop_pid() {
    local pid=$1 p i keep=()
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
    kill -TERM "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    for i in $(seq 100); do
        alive "$pid" || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$? pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [ "$status" -ne 0 ] || [ "${KEYGATE_BENCH_KEEP:-0}" = 1 ]; then
        log "work dir kept for inspection: $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # utime + stime, all threads
vm_kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
free_ports() { "${KGB[@]}" ports "$1"; }
json_get() { "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# Wait until URL answers with any HTTP status; fail early if PID died.
wait_http() {
    local url=$1 pid=$2 logfile=$3 i
    for i in $(seq 1500); do
        curl -s -o /dev/null --max-time 1 "$url" && return 0
        alive "$pid" || { tail -n 20 "$logfile" >&2; die "process $pid exited before $url answered (log: $logfile)"; }
        sleep 0.02
    done
    tail -n 20 "$logfile" >&2
    die "$url did not answer within 30 s (log: $logfile)"
}

# start_keygate NAME KIND [kgbench config options...]: a fresh keygate on new
# ports and a new state dir. Sets KG_PID, KG_CONFIG, KG_PORT, KG_ADMIN.
start_keygate() {
    local name=$1 kind=$2
    shift 2
    local ports
    ports=$(free_ports 2)
    read -r KG_PORT KG_ADMIN <<<"$ports"
    KG_CONFIG=$work/$name.toml
    "${KGB[@]}" config "$kind" --demo "$DEMO_CONFIG" --out "$KG_CONFIG" \
        --listen "$KG_PORT" --admin "$KG_ADMIN" --state-dir "$work/$name-state" "${SET_ARGS[@]}" "$@"
    "$KG" check --config "$KG_CONFIG" >/dev/null || die "generated config $KG_CONFIG is invalid (see above)"
    KEYGATE_LOG=warn "$KG" serve --config "$KG_CONFIG" >"$work/$name.log" 2>&1 &
    KG_PID=$!
    PIDS+=("$KG_PID")
    wait_http "http://127.0.0.1:$KG_ADMIN/healthz" "$KG_PID" "$work/$name.log"
}

# start_bare PORT: the ceiling server answering the captured bytes. Sets BARE_PID.
start_bare() {
    "$BARE" --port "$1" --body-file "$work/body.json" >"$work/bare.log" 2>&1 &
    BARE_PID=$!
    PIDS+=("$BARE_PID")
    wait_http "http://127.0.0.1:$1/" "$BARE_PID" "$work/bare.log"
}

# --- wrk rows ----------------------------------------------------------------

ROWS=()                                            # Markdown table rows, in order
declare -A RPS P50 P99 CPU                         # by row key, for the summary lines

us_of() {  # wrk latency ("68.00us", "1.21ms", "2.00s") -> microseconds
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) x = v + 0; else if (v ~ /ms$/) x = v * 1000; else if (v ~ /s$/) x = v * 1e6; else x = -1
        print x }'
}
fmt_us() { awk -v x="$1" 'BEGIN { if (x < 100) printf "%.1f µs", x; else if (x < 1000) printf "%.0f µs", x; else printf "%.2f ms", x / 1000 }'; }
group() { sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$1"; }  # 10000 -> 10,000
fmt_ns() { awk -v x="$1" 'BEGIN { if (x < 1000) printf "%.0f ns", x; else if (x < 1e6) printf "%.2f µs", x / 1000; else printf "%.2f ms", x / 1e6 }'; }
fmt_mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

# wrk_threads CONNS: two wrk threads, one at one connection (wrk needs
# connections >= threads).
wrk_threads() { if [ "$1" -ge 2 ]; then echo 2; else echo 1; fi; }

# wrk_measure KEY LABEL PID CONNS SECS URL [wrk options...]: one measured wrk
# run (no warm-up). Sets RPS, P50, P99 (µs) and CPU (µs of PID per request)
# under KEY.
wrk_measure() {
    local key=$1 label=$2 pid=$3 conns=$4 secs=$5 url=$6
    shift 6
    local opts=(-t"$(wrk_threads "$conns")" -c"$conns" --timeout 10s "$@")
    local out=$work/wrk-$key.txt
    local before after
    before=$(ticks "$pid")
    wrk "${opts[@]}" -d"${secs}s" --latency "$url" >"$out" || die "wrk run of '$label' failed"
    after=$(ticks "$pid")

    local requests rps p50 p99 non2xx errors
    requests=$(awk '/ requests in / {print $1}' "$out")
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(us_of "$(awk '$1 == "50%" {print $2}' "$out")")
    p99=$(us_of "$(awk '$1 == "99%" {print $2}' "$out")")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
    errors=$(grep -E 'Socket errors:' "$out" || true)
    [ -n "$requests" ] && [ "$requests" -gt 0 ] || { cat "$out" >&2; die "'$label': wrk made no requests"; }
    [ "${non2xx:-0}" -eq 0 ] || { cat "$out" >&2; die "'$label': $non2xx of $requests responses were not 2xx (expected all 200)"; }
    [ -z "$errors" ] || log "WARNING: '$label': $errors"
    RPS[$key]=$rps P50[$key]=$p50 P99[$key]=$p99
    CPU[$key]=$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$requests" 'BEGIN { printf "%.1f", t / hz / n * 1e6 }')
}

# wrk_row KEY LABEL PID CONNS URL [wrk options...]: warm-up, measured run, one table row.
wrk_row() {
    local key=$1 label=$2 pid=$3 conns=$4 url=$5
    shift 5
    log "row: $label (warm-up ${WARMUP}s, measured ${DURATION}s)"
    wrk -t"$(wrk_threads "$conns")" -c"$conns" --timeout 10s "$@" -d"${WARMUP}s" "$url" >"$work/wrk-$key-warmup.txt" ||
        die "wrk warm-up of '$label' failed"
    wrk_measure "$key" "$label" "$pid" "$conns" "$DURATION" "$url" "$@"
    ROWS+=("| $label | $(printf '%.0f' "${RPS[$key]}") | $(fmt_us "${P50[$key]}") | $(fmt_us "${P99[$key]}") | ${CPU[$key]} | $(fmt_mib "$(vm_kib "$pid" VmHWM)") |")
}

# --- run ---------------------------------------------------------------------

commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || commit="$commit (with uncommitted changes)"
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
started=$(date +%s)

# 0. Capture the exact bytes keygate answers for GetSecretValue demo/api/key:
#    the bare server returns them, so rows 1-4 move the same payload.
#    The same signed request, replayed against the bare server (which checks
#    nothing), makes the bare rows receive the same bytes as keygate's.
start_keygate capture hit
"${KGB[@]}" call --config "$KG_CONFIG" --out "$work/body.json"
"${KGB[@]}" lua --config "$KG_CONFIG" --out "$work/aws.lua"
stop_pid "$KG_PID"
log "captured GetSecretValue body: $(wc -c <"$work/body.json") bytes"

# 1. The ceiling. It keeps running as the upstream of the cache-miss row.
bare_port=$(free_ports 1)
start_bare "$bare_port"
wrk_row bare "bare hyper, 32 conns (ceiling)" "$BARE_PID" 32 "http://127.0.0.1:$bare_port/" -s "$work/aws.lua"

# 2. AWS GetSecretValue, cache hit; a fresh keygate per row so each peak RSS
#    is its own. Signed right before use: SigV4 allows 5 minutes.
for conns in 1 32 256; do
    start_keygate "aws$conns" hit
    "${KGB[@]}" call --config "$KG_CONFIG"   # preflight: fails with keygate's answer if not 200
    [ "$conns" != 32 ] || rss_one_identity=$(vm_kib "$KG_PID" VmRSS)
    "${KGB[@]}" lua --config "$KG_CONFIG" --out "$work/aws$conns.lua"
    wrk_row "aws$conns" "keygate AWS GetSecretValue, cache hit, $conns conn$([ "$conns" = 1 ] || echo s)" \
        "$KG_PID" "$conns" "http://127.0.0.1:$KG_PORT/" -s "$work/aws$conns.lua"
    stop_pid "$KG_PID"
done

# 2a. The target comparison, paired: the host's speed drifts by ±20% within
#     a run (both servers slow down and speed up together), so rows measured
#     a minute apart give a noisy ratio. Alternate short runs of bare hyper
#     and of one keygate, and judge the targets on the medians of the
#     per-round ratios.
start_keygate pair hit
"${KGB[@]}" call --config "$KG_CONFIG"
"${KGB[@]}" lua --config "$KG_CONFIG" --out "$work/pair.lua"
log "paired rounds: bare hyper and keygate's cache hit at 32 conns, $PAIR_ROUNDS x ${PAIR_SECS}s each"
wrk -t2 -c32 -d"${WARMUP}s" -s "$work/pair.lua" "http://127.0.0.1:$KG_PORT/" >/dev/null || die "wrk warm-up of the paired keygate failed"
PAIR_TPUT=() PAIR_P99=() PAIR_CPU=() PAIR_BARE_CPU=()
for round in $(seq "$PAIR_ROUNDS"); do
    wrk_measure pbare "paired bare hyper" "$BARE_PID" 32 "$PAIR_SECS" "http://127.0.0.1:$bare_port/" -s "$work/aws.lua"
    wrk_measure pkg "paired keygate" "$KG_PID" 32 "$PAIR_SECS" "http://127.0.0.1:$KG_PORT/" -s "$work/pair.lua"
    PAIR_TPUT+=("$(awk -v a="${RPS[pkg]}" -v b="${RPS[pbare]}" 'BEGIN { printf "%.3f", a / b }')")
    PAIR_P99+=("$(awk -v a="${P99[pkg]}" -v b="${P99[pbare]}" 'BEGIN { printf "%.2f", a / b }')")
    PAIR_CPU+=("${CPU[pkg]}")
    PAIR_BARE_CPU+=("${CPU[pbare]}")
    log "  round $round: keygate ${RPS[pkg]} req/s, bare ${RPS[pbare]} req/s (${PAIR_TPUT[-1]}), CPU ${CPU[pkg]} vs ${CPU[pbare]} µs/req, p99 ${PAIR_P99[-1]}x"
done
stop_pid "$KG_PID"
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
pair_tput=$(median "${PAIR_TPUT[@]}")
pair_p99=$(median "${PAIR_P99[@]}")
pair_cpu=$(median "${PAIR_CPU[@]}")
pair_bare_cpu=$(median "${PAIR_BARE_CPU[@]}")

# 2b. The same at 32 connections with IDS_N more identities configured, each
#     with its own access key and Vault token: the lookup by access key must
#     not grow with them. RSS after the preflight, against the 32-conn row's.
start_keygate "ids$IDS_N" hit --identities "$IDS_N"
"${KGB[@]}" call --config "$KG_CONFIG"
rss_many_identities=$(vm_kib "$KG_PID" VmRSS)
"${KGB[@]}" lua --config "$KG_CONFIG" --out "$work/ids.lua"
wrk_row ids "keygate AWS GetSecretValue, cache hit, 32 conns, $(group $((IDS_N + 1))) identities configured" \
    "$KG_PID" 32 "http://127.0.0.1:$KG_PORT/" -s "$work/ids.lua"
stop_pid "$KG_PID"

# 2c. The 32-connection cache hit over TLS (scripts/make-certs.sh: P-256
#     certificate, server-authenticated only; SigV4 still authenticates),
#     once on keep-alive connections (what TLS adds per request) and once
#     with `Connection: close`, so that every request pays a full handshake
#     (what callers that do not keep connections cost: one aws CLI run, say).
bash scripts/make-certs.sh "$work/certs" >/dev/null 2>&1 || die "scripts/make-certs.sh failed (is openssl installed?)"
TLS_SET=(--set "server.tls.cert=\"$work/certs/server.pem\"" --set "server.tls.key=\"$work/certs/server.key\"")
start_keygate tls32 hit "${TLS_SET[@]}"
"${KGB[@]}" lua --config "$KG_CONFIG" --out "$work/tls.lua"
wrk_row tls32 "keygate AWS GetSecretValue, cache hit, 32 conns, TLS" \
    "$KG_PID" 32 "https://127.0.0.1:$KG_PORT/" -s "$work/tls.lua"
wrk_row tlsnew "keygate AWS GetSecretValue, cache hit, 32 conns, TLS, a new connection per request" \
    "$KG_PID" 32 "https://127.0.0.1:$KG_PORT/" -s "$work/tls.lua" -H "Connection: close"
stop_pid "$KG_PID"

# 3. Vault KV v2 read, cache hit.
start_keygate vault32 hit
status=$(curl -s -o "$work/vault-preflight.json" -w '%{http_code}' -H "X-Vault-Token: $VAULT_TOKEN" "http://127.0.0.1:$KG_PORT$VAULT_PATH")
[ "$status" = 200 ] || die "Vault preflight GET $VAULT_PATH: HTTP $status: $(head -c 300 "$work/vault-preflight.json")"
wrk_row vault32 "keygate Vault KV v2 read, cache hit, 32 conns" "$KG_PID" 32 \
    "http://127.0.0.1:$KG_PORT$VAULT_PATH" -H "X-Vault-Token: $VAULT_TOKEN"
stop_pid "$KG_PID"

# 4. Cache miss: keygate (cache off) in front of the bare server as its AWS
#    upstream, against wrk straight to the bare server, all at 1 connection.
#    Two more rows frame it: a bare pass-through proxy in front of the same
#    server (`bare_hyper --forward-to`: the extra hop alone, the floor of any
#    proxy on this machine), and keygate with `upstream.client = "direct"`.
#    keygate's own SDK credentials are dummies: the bare server checks nothing.
wrk_row direct1 "bare hyper direct, 1 conn (cache-miss baseline)" "$BARE_PID" 1 \
    "http://127.0.0.1:$bare_port/" -s "$work/aws.lua"
proxy_port=$(free_ports 1)
"$BARE" --port "$proxy_port" --forward-to "127.0.0.1:$bare_port" >"$work/proxy.log" 2>&1 &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
wait_http "http://127.0.0.1:$proxy_port/" "$PROXY_PID" "$work/proxy.log"
wrk_row proxy1 "bare hyper proxy → bare hyper upstream, 1 conn (cache-miss floor)" "$PROXY_PID" 1 \
    "http://127.0.0.1:$proxy_port/" -s "$work/aws.lua"
# start_miss NAME [config args...]: a cache-miss keygate, checked with one call.
start_miss() {
    local name=$1
    shift
    AWS_ACCESS_KEY_ID=bench-dummy-key AWS_SECRET_ACCESS_KEY=bench-dummy-secret AWS_EC2_METADATA_DISABLED=true \
        start_keygate "$name" miss --bare-port "$bare_port" "$@"
    "${KGB[@]}" call --config "$KG_CONFIG"
}
start_miss miss1
MISS_SDK=("$KG_PID" "$KG_PORT" "$KG_CONFIG")
"${KGB[@]}" lua --config "$KG_CONFIG" --out "$work/miss1.lua"
wrk_row miss1 "keygate AWS GetSecretValue, cache miss → bare hyper upstream, 1 conn" "$KG_PID" 1 \
    "http://127.0.0.1:$KG_PORT/" -s "$work/miss1.lua"
start_miss missd --set 'upstream.client="direct"'
MISS_DIRECT=("$KG_PID" "$KG_PORT" "$KG_CONFIG")
grep -q '^client = "direct"' "$KG_CONFIG" || die "$KG_CONFIG does not set upstream.client = \"direct\""
"${KGB[@]}" lua --config "$KG_CONFIG" --out "$work/missd.lua"
wrk_row missd "keygate AWS GetSecretValue, cache miss → bare hyper upstream, 1 conn, upstream.client = \"direct\"" "$KG_PID" 1 \
    "http://127.0.0.1:$KG_PORT/" -s "$work/missd.lua"

# 4b. The miss targets are judged on paired rounds, as the hit's: the four
#     1-connection runs above, back to back in each round, and the medians
#     of each round's added p50 (the VM's speed drifts between rows).
log "paired rounds: direct, proxy, keygate (SDK client), keygate (direct client), 1 conn, $PAIR_ROUNDS x ${PAIR_SECS}s each"
MISS_FLOOR=() MISS_ADDED=() MISS_ADDED_DIRECT=()
for round in $(seq "$PAIR_ROUNDS"); do
    # Signed afresh each round: keygate refuses a signature older than 5 minutes.
    "${KGB[@]}" lua --config "${MISS_SDK[2]}" --out "$work/miss1.lua"
    "${KGB[@]}" lua --config "${MISS_DIRECT[2]}" --out "$work/missd.lua"
    wrk_measure mdirect "paired direct" "$BARE_PID" 1 "$PAIR_SECS" "http://127.0.0.1:$bare_port/" -s "$work/aws.lua"
    wrk_measure mproxy "paired proxy" "$PROXY_PID" 1 "$PAIR_SECS" "http://127.0.0.1:$proxy_port/" -s "$work/aws.lua"
    wrk_measure msdk "paired keygate, SDK client" "${MISS_SDK[0]}" 1 "$PAIR_SECS" "http://127.0.0.1:${MISS_SDK[1]}/" -s "$work/miss1.lua"
    wrk_measure mdc "paired keygate, direct client" "${MISS_DIRECT[0]}" 1 "$PAIR_SECS" "http://127.0.0.1:${MISS_DIRECT[1]}/" -s "$work/missd.lua"
    MISS_FLOOR+=("$(awk -v a="${P50[mproxy]}" -v b="${P50[mdirect]}" 'BEGIN { print a - b }')")
    MISS_ADDED+=("$(awk -v a="${P50[msdk]}" -v b="${P50[mdirect]}" 'BEGIN { print a - b }')")
    MISS_ADDED_DIRECT+=("$(awk -v a="${P50[mdc]}" -v b="${P50[mdirect]}" 'BEGIN { print a - b }')")
    log "  round $round: p50 direct ${P50[mdirect]}, proxy ${P50[mproxy]}, keygate ${P50[msdk]} (SDK client, ${CPU[msdk]} µs CPU), ${P50[mdc]} (direct client, ${CPU[mdc]} µs CPU) µs"
done
stop_pid "${MISS_SDK[0]}"
stop_pid "${MISS_DIRECT[0]}"
stop_pid "$PROXY_PID"
stop_pid "$BARE_PID"

# 5. Held requests: memory while N wait, and approval -> release latency.
log "row: $HELD_N held requests (approving $HELD_APPROVE)"
start_keygate held hit
"$PY" benches/held.py --config "$KG_CONFIG" --pid "$KG_PID" --n "$HELD_N" --approve "$HELD_APPROVE" >"$work/held.json" ||
    die "benches/held.py failed (keygate log: $work/held.log)"
stop_pid "$KG_PID"
held_extra=$(json_get "$work/held.json" extra_kib)
held_per=$(json_get "$work/held.json" bytes_per_pending)
held_p50=$(json_get "$work/held.json" release_p50_us)
held_p99=$(json_get "$work/held.json" release_p99_us)
held_rss=$(json_get "$work/held.json" rss_pending_kib)
ROWS+=("| $(group "$HELD_N") held requests: approval → release (sample of $(group "$HELD_APPROVE")) | — | $(fmt_us "$held_p50") | $(fmt_us "$held_p99") | — | $(fmt_mib "$held_rss") (+$(fmt_mib "$held_extra") held) |")

# 6. Policy decision time (criterion). Medians come from estimates.json files
#    written by this run (older ones are ignored, so a stale result never shows).
log "row: policy decision time (criterion)"
marker=$work/criterion-start
touch "$marker"
sleep 1  # estimates.json must be strictly newer than the marker
cargo bench "${bench_flags[@]}" --locked --bench policy -- --noplot "${CRITERION_ARGS[@]}" >"$work/criterion.txt" 2>&1 ||
    { tail -n 30 "$work/criterion.txt" >&2; die "cargo bench --bench policy failed"; }
"$PY" - "$CARGO_TARGET_DIR/criterion/policy_decide" "$marker" >"$work/policy.json" <<'PY' || die "could not read criterion's results"
import json, os, sys
root, marker = sys.argv[1], os.path.getmtime(sys.argv[2])
out = {}
for case in ("last_rule", "no_match", "glob_last_rule"):
    for n in (10, 1000, 10000):
        path = os.path.join(root, case, str(n), "new", "estimates.json")
        if not os.path.exists(path) or os.path.getmtime(path) < marker:
            sys.exit(f"error: no fresh criterion result at {path}")
        with open(path) as f:
            out[f"{case}_{n}"] = json.load(f)["median"]["point_estimate"]  # ns
print(json.dumps(out))
PY
for n in 10 1000 10000; do
    ROWS+=("| policy decide, $(group "$n") rules: last rule / no match / glob last rule | — | $(fmt_ns "$(json_get "$work/policy.json" "last_rule_$n")") / $(fmt_ns "$(json_get "$work/policy.json" "no_match_$n")") / $(fmt_ns "$(json_get "$work/policy.json" "glob_last_rule_$n")") | — | — | — |")
done

# 6b. The read cache's hit under contention (benches/cache.rs): ns per get
#     with one thread, and with two threads hitting one entry at once.
log "row: read cache hit (benches/cache.rs)"
cargo bench "${bench_flags[@]}" --locked --bench cache -- "$CACHE_ITERATIONS" >"$work/cache.txt" 2>&1 ||
    { tail -n 30 "$work/cache.txt" >&2; die "cargo bench --bench cache failed"; }
cache_1=$(awk '/1 thread\(s\):/ {print $(NF-3)}' "$work/cache.txt")
cache_2=$(awk '/2 thread\(s\):/ {print $(NF-5) " / " $(NF-3)}' "$work/cache.txt")
[ -n "$cache_1" ] && [ -n "$cache_2" ] || { cat "$work/cache.txt" >&2; die "could not read benches/cache.rs output"; }
ROWS+=("| read cache hit (\`ReadCache::get\`): 1 thread / 2 threads on one entry | — | $cache_1 ns / $cache_2 ns | — | — | — |")

# 7. Cold start: spawn -> admin /readyz 200, fresh state each time.
log "row: cold start to ready ($COLD_RUNS runs)"
"${KGB[@]}" coldstart --bin "$KG" --demo "$DEMO_CONFIG" --work "$work" --runs "$COLD_RUNS" "${SET_ARGS[@]}" >"$work/cold.json"
cold_ms=$(json_get "$work/cold.json" median_ms)
ROWS+=("| cold start to ready (median of $COLD_RUNS) | — | $(awk -v x="$cold_ms" 'BEGIN { printf "%.1f ms", x }') | — | — | — |")
"${KGB[@]}" coldstart --bin "$KG" --demo "$DEMO_CONFIG" --work "$work" --runs "$COLD_RUNS" --identities "$IDS_N" "${SET_ARGS[@]}" >"$work/cold-ids.json"
cold_ids_ms=$(json_get "$work/cold-ids.json" median_ms)
ROWS+=("| cold start to ready, $(group $((IDS_N + 1))) identities (median of $COLD_RUNS) | — | $(awk -v x="$cold_ids_ms" 'BEGIN { printf "%.1f ms", x }') | — | — | — |")

# 8. Scale: RSS per cached secret. The dev store is seeded with N secrets;
#    the baseline is read after one warm request, then each secret once.
SCALE_LINES=()
for n in "${SCALE_NS[@]}"; do
    log "scale: $n cached secrets"
    start_keygate "scale$n" scale --seed "$n"
    "${KGB[@]}" call --config "$KG_CONFIG"
    sleep 0.5
    rss0=$(vm_kib "$KG_PID" VmRSS)
    "${KGB[@]}" read-all --config "$KG_CONFIG" --n "$n"
    sleep 0.5
    rss1=$(vm_kib "$KG_PID" VmRSS)
    stop_pid "$KG_PID"
    SCALE_LINES+=("- RSS with $(group "$n") secrets cached: $(fmt_mib "$rss1") (+$(fmt_mib $((rss1 - rss0))) for reading them) → $(( (rss1 - rss0) * 1024 / n )) bytes per cached secret")
done

# --- report ------------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f%%", 100 * a / b }'; }
# check 1|0 -> ok / MISSED; a smoke run's numbers say nothing about targets.
check() { if [ "$SMOKE" = 1 ]; then echo "n/a in smoke"; else awk -v ok="$1" 'BEGIN { print (ok ? "ok" : "MISSED") }'; fi; }
miss_added=$(median "${MISS_ADDED[@]}")
miss_added_direct=$(median "${MISS_ADDED_DIRECT[@]}")
miss_floor=$(median "${MISS_FLOOR[@]}")
list_us() { printf '%s\n' "$@" | awk '{ printf "%s%.0f", (NR > 1 ? ", " : ""), $1 }'; }
# Per rule from the glob case: literal identities are indexed, so only a
# policy of glob identities shows what walking one more rule costs.
per_rule=$(awk -v a="$(json_get "$work/policy.json" glob_last_rule_10000)" -v b="$(json_get "$work/policy.json" glob_last_rule_10)" 'BEGIN { printf "%.2f", (a - b) / 9990 }')
p10k=$(json_get "$work/policy.json" last_rule_10000)
p10k_glob=$(json_get "$work/policy.json" glob_last_rule_10000)

{
    echo "# keygate benchmark ($MODE, $PROFILE build)"
    echo
    echo "- commit: $commit"
    echo "- configs: derived from config/demo.toml$([ -z "${KEYGATE_BENCH_SET:-}" ] || echo "; overrides: $KEYGATE_BENCH_SET")"
    [ -z "${KEYGATE_BENCH_CARGO_ARGS:-}" ] || echo "- keygate built with: $KEYGATE_BENCH_CARGO_ARGS"
    echo "- machine: nproc $(nproc), $cpu_model"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); wrk -t2 (-t1 at 1 conn), ${WARMUP}s warm-up + ${DURATION}s measured per row; took $(( $(date +%s) - started ))s after the build"
    echo
    echo "| row | throughput (req/s) | p50 | p99 | CPU µs/req | peak RSS |"
    echo "|---|---:|---:|---:|---:|---:|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "CPU µs/req and peak RSS (VmHWM) are the server's: bare hyper on its rows, keygate on the others (each keygate row is a fresh process). Held row: p50/p99 from the approve POST to the held client's answer; RSS while all are pending. Policy rows: criterion medians (glob: rules name identities by glob, so all are walked). Read cache row: benches/cache.rs, ns per get, each thread's own figure."
    echo
    echo "- cache-miss pass-through, medians of $PAIR_ROUNDS paired rounds of ${PAIR_SECS}s at 1 conn, p50 added over a direct call to the same upstream: $(fmt_us "$miss_added") with the SDK's client (target < 150 µs: $(check "$(awk -v x="$miss_added" 'BEGIN { print (x < 150) }')"); rounds: $(list_us "${MISS_ADDED[@]}") µs), $(fmt_us "$miss_added_direct") with upstream.client = \"direct\" ($(check "$(awk -v x="$miss_added_direct" 'BEGIN { print (x < 150) }')"); rounds: $(list_us "${MISS_ADDED_DIRECT[@]}") µs); a bare proxy adds $(fmt_us "$miss_floor") (rounds: $(list_us "${MISS_FLOOR[@]}") µs), the floor of any pass-through here"
    echo
    echo "- TLS: a keep-alive cache hit costs ${CPU[tls32]} µs of keygate CPU per request against ${CPU[aws32]} in plaintext; with a new connection per request ${CPU[tlsnew]} µs, so a full handshake (X25519, ECDSA P-256) costs about $(awk -v a="${CPU[tlsnew]}" -v b="${CPU[tls32]}" 'BEGIN { printf "%.0f", a - b }') µs"
    echo
    echo "Targets (compare rows of one run):"
    echo "- AWS cache hit at 32 conns vs bare hyper, medians of $PAIR_ROUNDS paired rounds of ${PAIR_SECS}s: throughput $(pct "$pair_tput" 1) (≥ 75%: $(check "$(awk -v x="$pair_tput" 'BEGIN { print (x >= 0.75) }')"); rounds: $(printf '%s ' "${PAIR_TPUT[@]}" | awk '{ for (i = 1; i <= NF; i++) printf "%s%.0f%%", (i > 1 ? ", " : ""), 100 * $i }')), CPU $pair_cpu µs/req (≤ 12: $(check "$(awk -v a="$pair_cpu" 'BEGIN { print (a <= 12) }')"); bare $pair_bare_cpu), p99 ${pair_p99}x bare's (≤ 1.2x: $(check "$(awk -v x="$pair_p99" 'BEGIN { print (x <= 1.2) }')"))"
    echo "- the same from the table's rows (measured minutes apart): throughput $(pct "${RPS[aws32]}" "${RPS[bare]}"), CPU ${CPU[aws32]} µs/req, p99 $(ratio "${P99[aws32]}" "${P99[bare]}")x"
    echo "- $(group "$HELD_N") held: +$(fmt_mib "$held_extra") (< 64 MiB for 10,000: $(check "$(awk -v k="$held_extra" -v n="$HELD_N" 'BEGIN { print (k / 1024 * 10000 / n < 64) }')")), release p99 $(fmt_us "$held_p99") (< 5 ms: $(check "$(awk -v x="$held_p99" 'BEGIN { print (x < 5000) }')"))"
    echo "- 10,000-rule policy, last rule: $(fmt_ns "$p10k") median (< 5 µs: $(check "$(awk -v x="$p10k" 'BEGIN { print (x < 5000) }')")); with glob identities (no index): $(fmt_ns "$p10k_glob") ($(check "$(awk -v x="$p10k_glob" 'BEGIN { print (x < 5000) }')"))"
    echo
    echo "Scale:"
    printf '%s\n' "${SCALE_LINES[@]}"
    echo "- cost per policy rule walked (glob last rule, 10,000 vs 10 rules): $per_rule ns"
    echo "- cost per pending request: $held_per bytes (+$(fmt_mib "$held_extra") for $(group "$HELD_N"))"
    echo "- cost per configured identity: $(( (rss_many_identities - rss_one_identity) * 1024 / IDS_N )) bytes of RSS (+$(fmt_mib $((rss_many_identities - rss_one_identity))) for $(group "$IDS_N")); a cache hit at 32 conns with them: $(pct "${RPS[ids]}" "${RPS[aws32]}") of the one-identity row's throughput, ${CPU[ids]} vs ${CPU[aws32]} µs CPU per request; start-up $(awk -v a="$cold_ids_ms" -v b="$cold_ms" 'BEGIN { printf "+%.1f ms", a - b }')"
    [ "$SMOKE" = 0 ] || { echo; echo "SMOKE RUN: every row ran very briefly; the numbers are not measurements."; }
} >"$work/report.md"

mkdir -p "$CARGO_TARGET_DIR/bench"
cp "$work/report.md" "$CARGO_TARGET_DIR/bench/last.md"
echo
cat "$work/report.md"
log "written to $CARGO_TARGET_DIR/bench/last.md"
