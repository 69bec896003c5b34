#!/usr/bin/env bash
# Deterministic per-request costs of an AWS cache hit, for before/after
# comparisons of hot-path changes (throughput on a shared 2-core VM moves by
# ±10% between identical runs; these counts do not).
#
#   bash scripts/hit-costs.sh [strict|batched]     (default: batched)
#
# Prints four lines:
#   instructions  callgrind over exactly N requests (kgbench.py replay) on two
#                 keep-alive connections, counters zeroed after a warm-up.
#                 valgrind runs SHA-256 in software (no SHA-NI), so the
#                 share of its software block function is also shown and
#                 subtracted: the natively fast part would otherwise dominate.
#   allocations   heaptrack: (allocations for 1,000 + N requests minus those
#                 for 1,000) / N, so start-up and warm-up cancel out.
#                 heaptrack sees only the system allocator's malloc, so this
#                 runs a build without the `jemalloc` feature: the count is
#                 the code's, whichever allocator serves it.
#   syscalls      strace -c -f during a 4 s wrk run at 32 connections.
#   CPU split     user and system time and context switches per request
#                 over an untraced 4 s run (these move between runs like
#                 throughput does; the three counts above do not).
#
# Needs valgrind, heaptrack, strace and wrk (installed with apt-get if
# missing), and the project venv (scripts/peers.sh). Takes about 3 minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODE=${1:-batched}
case $MODE in strict | batched) ;; *) echo "usage: $0 [strict|batched]" >&2; exit 2 ;; esac
N=6000

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
source scripts/peers.sh
kg_ensure_venv
PY=$KG_VENV/bin/python
for tool in valgrind heaptrack strace wrk; do
    command -v $tool >/dev/null && continue
    sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get install -y -qq $tool >/dev/null 2>&1 ||
        die "$tool is missing and 'apt-get install $tool' failed; install it and rerun"
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/keygate-target}
work=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && pkill -f "serve --config $work/hit.toml"
    rm -rf "$work"
}
trap cleanup EXIT
cargo build --release --locked -q --no-default-features
SYSTEM_ALLOC_BIN=$work/keygate-system-alloc
cp "$CARGO_TARGET_DIR/release/keygate" "$SYSTEM_ALLOC_BIN"
cargo build --release --locked -q
BIN=$CARGO_TARGET_DIR/release/keygate
read -r port admin < <("$PY" benches/kgbench.py ports 2)
"$PY" benches/kgbench.py config hit --demo config/demo.toml --out "$work/hit.toml" \
    --listen "$port" --admin "$admin" --state-dir "$work/state" --set "audit.mode=\"$MODE\"" >/dev/null
"$PY" benches/kgbench.py lua --config "$work/hit.toml" --out "$work/hit.lua"
replay() { "$PY" benches/kgbench.py replay --config "$work/hit.toml" --n "$1"; }

# start CMD...: run keygate under CMD, wait until it answers.
start() {
    rm -rf "$work/state"
    KEYGATE_LOG=warn "$@" "$BIN" serve --config "$work/hit.toml" >"$work/kg.log" 2>&1 &
    pid=$!
    for _ in $(seq 300); do
        curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || die "keygate exited: $(tail -5 "$work/kg.log")"
        sleep 0.1
    done
    die "keygate did not answer /healthz within 30 s"
}
# SIGINT to keygate itself (valgrind runs it in-process; heaptrack's wrapper
# is a shell, and a background shell ignores SIGINT), then wait for the tool
# to write its data.
stop() {
    pkill -INT -f "serve --config $work/hit.toml" || true
    wait "$pid" 2>/dev/null || true
    pid=
}

# 1. Instructions.
start valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" --dump-instr=no
replay 500
callgrind_control -z "$pid" >/dev/null
replay "$N"
callgrind_control -d "$pid" >/dev/null
stop
dump=$(ls "$work"/cg.out.* 2>/dev/null | head -1)
[ -n "$dump" ] || dump=$work/cg.out
callgrind_annotate --threshold=100 "$dump" >"$work/cg.txt" 2>/dev/null
total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}' "$work/cg.txt")
# The software block function(s): `sha2::sha256::soft::*` in a thin-LTO
# build, inlined into `sha2::sha256::compress256` under fat LTO (whose
# native path is SHA-NI). Each symbol counted once.
sha=$(awk '/sha2::sha256::(soft::|compress256)/ && !seen[$3] {gsub(",", "", $1); s += $1; seen[$3] = 1} END {print s + 0}' "$work/cg.txt")
echo "instructions per request: $((total / N)) in all, $(((total - ${sha:-0}) / N)) outside SHA-256 ($MODE audit, $N requests)"

# 2. Allocations.
allocations() {
    local BIN=$SYSTEM_ALLOC_BIN
    start heaptrack -o "$work/ht.$1"
    replay "$1"
    stop
    heaptrack_print -f "$work/ht.$1".* 2>/dev/null | awk '/calls to allocation functions:/ {print $5}'
}
base=$(allocations 1000)
more=$(allocations $((1000 + N)))
echo "heap allocations per request: $(((more - base) / N))"

# 3. Syscalls.
start env
wrk -t2 -c32 -d2s -s "$work/hit.lua" "http://127.0.0.1:$port/" >/dev/null
timeout 6 strace -c -f -p "$pid" -o "$work/strace.out" 2>/dev/null &
tracer=$!
sleep 0.5
requests=$(wrk -t2 -c32 -d4s -s "$work/hit.lua" "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}')
wait "$tracer" || true
awk -v n="$requests" 'NR > 2 && $4 ~ /^[0-9]+$/ { calls[$NF] = $4 / n }
    END { line = ""; for (c in calls) if (calls[c] >= 0.01 && c != "total") line = line sprintf(" %s %.2f", c, calls[c]);
          printf "syscalls per request: %.2f (%s )\n", calls["total"], line }' "$work/strace.out"

# 4. Where the CPU goes, untraced: user and system time, and context
#    switches of all keygate's threads, over a 4 s run at 32 connections.
#    Involuntary switches are preemptions: wrk shares the two cores, and
#    a response that wakes a wrk thread can preempt the keygate worker that
#    sent it, so they grow faster than keygate's own work does.
switches() {  # voluntary involuntary, summed over threads
    cat /proc/"$pid"/task/*/status 2>/dev/null |
        awk '/^voluntary_ctxt_switches/ {v += $2} /^nonvoluntary_ctxt_switches/ {n += $2} END {print v, n}'
}
read -r utime0 stime0 < <(awk '{print $14, $15}' /proc/"$pid"/stat)
read -r vol0 invol0 < <(switches)
requests=$(wrk -t2 -c32 -d4s -s "$work/hit.lua" "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}')
read -r utime1 stime1 < <(awk '{print $14, $15}' /proc/"$pid"/stat)
read -r vol1 invol1 < <(switches)
awk -v n="$requests" -v hz="$(getconf CLK_TCK)" -v u=$((utime1 - utime0)) -v s=$((stime1 - stime0)) \
    -v v=$((vol1 - vol0)) -v i=$((invol1 - invol0)) 'BEGIN {
    printf "CPU per request: user %.2f us, system %.2f us; context switches per request: %.3f voluntary, %.3f involuntary\n",
        u / hz / n * 1e6, s / hz / n * 1e6, v / n, i / n }'
