"""Fixtures: session-wide moto and OpenBao upstreams, and keygate servers
started per test.

KEYGATE_BIN points at the keygate binary (scripts/test.sh sets it); without it
the suite looks in $CARGO_TARGET_DIR/debug, ~/.cache/keygate-target/debug and
./target/debug. A missing peer fails the run; nothing is skipped.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest

from certs import Pki, make_test_pki
from harness import REPO, Keygate, Moto, OpenBao

KEYGATES = pytest.StashKey[list]()
OPENBAOS = pytest.StashKey[list]()


def _find_keygate_bin() -> Path | None:
    if os.environ.get("KEYGATE_BIN"):
        return Path(os.environ["KEYGATE_BIN"])
    candidates = []
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "keygate")
    candidates += [Path.home() / ".cache/keygate-target/debug/keygate", REPO / "target/debug/keygate"]
    return next((c for c in candidates if c.is_file()), None)


@pytest.fixture(scope="session")
def keygate_bin() -> Path:
    path = _find_keygate_bin()
    if path is None or not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"keygate binary not found ({path or 'KEYGATE_BIN unset'}); build it with `cargo build` "
            "and set KEYGATE_BIN=$CARGO_TARGET_DIR/debug/keygate, or run scripts/test.sh",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def moto(tmp_path_factory) -> Moto:
    server = Moto(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def upstream(moto: Moto) -> Moto:
    """moto, emptied and seeded with the demo secrets for this test."""
    moto.reset()
    moto.seed()
    return moto


@pytest.fixture
def start_keygate(request, keygate_bin: Path, upstream: Moto, tmp_path: Path) -> Callable[..., Keygate]:
    """start_keygate(hold_window="1s", ...) -> a running Keygate with its own
    config, state and log under tmp_path; all are stopped after the test."""
    started: list[Keygate] = []
    request.node.stash[KEYGATES] = started

    def start(**config_opts: str) -> Keygate:
        kg = Keygate(keygate_bin, tmp_path / f"keygate{len(started)}", upstream.url, **config_opts)
        started.append(kg)
        return kg.start()

    yield start
    for kg in started:
        kg.stop()


@pytest.fixture
def keygate(start_keygate) -> Keygate:
    """keygate with the default test config (hold_window 20s)."""
    return start_keygate()


@pytest.fixture
def quick_keygate(start_keygate) -> Keygate:
    """keygate whose hold rules give up after 1s: the timeout / retry path."""
    return start_keygate(hold_window="1s")


# --------------------------------------------------------------------------
# TLS: a test PKI (tests/e2e/certs.py)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    """CA, server and client certificates for the TLS tests. Shared by the
    session: tests that change certificate files copy them first."""
    return make_test_pki(tmp_path_factory.mktemp("pki"))


# --------------------------------------------------------------------------
# Vault: OpenBao as the upstream of keygate's Vault front end


@pytest.fixture(scope="session")
def openbao(tmp_path_factory) -> OpenBao:
    """One OpenBao dev server for the session: KV v2 at secret/, PKI at pki/,
    policies app-read and admin. Tests that stop it use start_openbao instead."""
    server = OpenBao(tmp_path_factory.mktemp("openbao"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def vault_upstream(request, openbao: OpenBao) -> OpenBao:
    """The session OpenBao with the demo secrets (re)written for this test."""
    request.node.stash.setdefault(OPENBAOS, []).append(openbao)
    openbao.seed()
    return openbao


@pytest.fixture
def start_openbao(request, tmp_path: Path) -> Callable[[], OpenBao]:
    """start_openbao() -> an OpenBao of this test's own (set up and seeded),
    for tests that stop or restart the upstream; stopped after the test."""
    started: list[OpenBao] = []

    def start() -> OpenBao:
        server = OpenBao(tmp_path / f"openbao{len(started)}")
        started.append(server)
        request.node.stash.setdefault(OPENBAOS, []).append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def start_vault_keygate(start_keygate, vault_upstream: OpenBao) -> Callable[..., Keygate]:
    """start_vault_keygate(hold_window="1s", vault_addr=..., ...) -> a running
    keygate with the Vault front end in front of vault_upstream (or vault_addr)."""

    def start(**config_opts) -> Keygate:
        config_opts.setdefault("vault_addr", vault_upstream.url)
        return start_keygate(**config_opts)

    return start


@pytest.fixture
def vault_keygate(start_vault_keygate) -> Keygate:
    """keygate with the Vault front end (hold_window 20s)."""
    return start_vault_keygate()


@pytest.fixture
def quick_vault_keygate(start_vault_keygate) -> Keygate:
    """keygate with the Vault front end whose holds give up after 1s."""
    return start_vault_keygate(hold_window="1s")


@pytest.fixture
def background():
    """Run a client call in a thread (it blocks while keygate holds it)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for kg in item.stash.get(KEYGATES, []):
            report.sections.append((f"keygate log {kg.log_path}", kg.log()))
        for bao in item.stash.get(OPENBAOS, []):
            report.sections.append((f"OpenBao log {bao.log_path}", bao.log()))
