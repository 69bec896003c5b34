"""Fixtures: a session-wide moto upstream, and keygate servers started per test.

KEYGATE_BIN points at the keygate binary (scripts/test.sh sets it); without it
the suite looks in $CARGO_TARGET_DIR/debug, ~/.cache/keygate-target/debug and
./target/debug. A missing peer fails the run; nothing is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from harness import REPO, Keygate, Moto

KEYGATES = pytest.StashKey[list]()


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for kg in item.stash.get(KEYGATES, []):
            report.sections.append((f"keygate log {kg.log_path}", kg.log()))
