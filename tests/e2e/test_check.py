"""`keygate check`: shipped configs load; unsafe ones are refused at load."""

from __future__ import annotations

import os
import re

import pytest
from harness import REPO, describe, free_port, render_config, run


# demo-upstream.toml takes the Vault address and token from the environment.
UPSTREAM_ENV = {"VAULT_ADDR": "http://127.0.0.1:8200", "VAULT_TOKEN": "root"}


@pytest.mark.parametrize("name", ["demo.toml", "demo-upstream.toml"])
def test_check_accepts_shipped_config(keygate_bin, tmp_path, name):
    env = {**os.environ, **UPSTREAM_ENV}
    result = run([keygate_bin, "check", "--config", REPO / "config" / name], cwd=tmp_path, env=env)
    assert result.returncode == 0, describe(result)


def test_check_names_the_missing_vault_environment_variable(keygate_bin, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in UPSTREAM_ENV}
    result = run([keygate_bin, "check", "--config", REPO / "config" / "demo-upstream.toml"], cwd=tmp_path, env=env)
    assert result.returncode == 64, describe(result)
    assert "upstream.vault.address" in result.stderr and "VAULT_ADDR" in result.stderr, describe(result)


def test_check_accepts_the_test_config(keygate_bin, tmp_path):
    config = tmp_path / "keygate.toml"
    config.write_text(
        render_config(listen="127.0.0.1:1", admin_listen="127.0.0.1:2", state=str(tmp_path / "kg.db"))
    )
    result = run([keygate_bin, "check", "--config", config], cwd=tmp_path)
    assert result.returncode == 0, describe(result)


def test_check_refuses_hold_rule_with_zero_approvals(keygate_bin, tmp_path):
    shipped = (REPO / "config" / "demo.toml").read_text()
    unsafe, n = re.subn(r"(?m)^approvals = 1\b", "approvals = 0", shipped, count=1)
    assert n == 1, "config/demo.toml has no `approvals = 1` line to change"
    config = tmp_path / "unsafe.toml"
    config.write_text(unsafe)

    result = run([keygate_bin, "check", "--config", config], cwd=tmp_path)

    assert result.returncode != 0, describe(result)
    assert "approvals" in result.stdout + result.stderr, describe(result)


def test_serve_refuses_hold_rule_with_zero_approvals(keygate_bin, tmp_path):
    config = tmp_path / "unsafe.toml"
    config.write_text(
        render_config(
            listen=f"127.0.0.1:{free_port()}", admin_listen=f"127.0.0.1:{free_port()}", state=str(tmp_path / "kg.db")
        ).replace(
            "approvals = 1", "approvals = 0"
        )
    )

    result = run([keygate_bin, "serve", "--config", config], cwd=tmp_path, timeout=30)

    assert result.returncode != 0, describe(result)
    assert "approvals" in result.stdout + result.stderr, describe(result)
