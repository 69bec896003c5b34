#!/usr/bin/env bash
# Run all of keygate's tests: build, Rust unit/integration tests, end-to-end tests
# against real peers (moto for AWS Secrets Manager, an OpenBao dev server for Vault)
# with real clients (boto3, aws CLI, hvac, bao CLI).
#
# Needs: Rust (cargo), Python >= 3.11 with venv + pip. Everything else is installed
# into ${KEYGATE_VENV:-$HOME/.cache/keygate-venv} on first use.
# Env knobs: KEYGATE_VENV, CARGO_TARGET_DIR (default $HOME/.cache/keygate-target),
#            PYTEST_ADDOPTS (extra pytest flags, e.g. "-k hold -x").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"

# shellcheck source=scripts/peers.sh
source "$REPO/scripts/peers.sh"

started=$SECONDS
step=""
begin() { step="$1"; kg_log "$1"; }
on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "FAILED: ${step:-setup} (exit $rc) after $((SECONDS - started))s" >&2
    fi
}
trap on_exit EXIT

command -v cargo >/dev/null 2>&1 || { echo "error: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }

begin "python test tools and chromium"
kg_ensure_venv
kg_ensure_chromium
export PATH="$KG_VENV/bin:$PATH"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keygate-target}"
locked=()
if git -C "$REPO" ls-files --error-unmatch Cargo.lock >/dev/null 2>&1; then
    locked=(--locked)
else
    kg_log "Cargo.lock is not committed: building without --locked"
fi

begin "cargo build ${locked[*]} (target dir $CARGO_TARGET_DIR)"
cargo build "${locked[@]}"

begin "cargo test ${locked[*]}"
cargo test "${locked[@]}"

KEYGATE_BIN="$CARGO_TARGET_DIR/debug/keygate"
[ -x "$KEYGATE_BIN" ] || { echo "error: $KEYGATE_BIN was not built" >&2; exit 1; }
export KEYGATE_BIN

begin "end-to-end tests (pytest tests/e2e, keygate at $KEYGATE_BIN)"
# The suite guards every call with timeouts; this is only a last-resort bound.
timeout -k 30 -s INT 1800 "$KG_VENV/bin/python" -m pytest -q tests/e2e

# The benchmark harness must keep working; a smoke run checks that (briefly,
# on debug builds: the numbers mean nothing here, BENCHMARKS.md has the real ones).
begin "benchmark harness smoke run (scripts/bench.sh --smoke)"
KEYGATE_BENCH_PROFILE=debug bash "$REPO/scripts/bench.sh" --smoke > /dev/null

step=""
kg_log "all tests passed in $((SECONDS - started))s"
