"""`mcp-codeexec config`: effective values, each with the source it came from; secrets never shown."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mcp_codeexec.cli import main


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in list(os.environ):
        if var.startswith("MCP_CODEEXEC_") or var == "ANTHROPIC_API_KEY":
            monkeypatch.delenv(var)
    toml = tmp_path / "config.toml"
    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(toml))
    return toml


def run_config(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["config", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_each_value_is_attributed_to_flag_env_toml_or_default(env: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    env.write_text('pool_size = 4\ncall_timeout = 30\nruntime = "runsc"\n')
    monkeypatch.setenv("MCP_CODEEXEC_CALL_TIMEOUT", "12")
    status, out, _ = run_config(capsys, "--json", "--runtime", "runc", "--port", "9000")
    assert status == 0
    report = json.loads(out)
    s = report["settings"]
    assert report["config_file"] == {"path": str(env), "exists": True}
    assert s["runtime"] == {"value": "runc", "source": "flag", "detail": "command line"}  # flag beats toml
    assert s["port"]["value"] == 9000 and s["port"]["source"] == "flag"
    assert s["call_timeout"] == {"value": 12.0, "source": "env", "detail": "MCP_CODEEXEC_CALL_TIMEOUT"}  # env beats toml
    assert s["pool_size"] == {"value": 4, "source": "toml", "detail": str(env)}
    assert s["backend"] == {"value": "docker", "source": "default", "detail": None}


def test_the_table_shows_one_line_per_setting_with_its_source(env: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("MCP_CODEEXEC_POOL_SIZE", "2")
    status, out, _ = run_config(capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"config file: {env} (not found)"
    pool = next(line for line in lines if line.startswith("pool_size "))
    assert pool.split()[1:] == ["2", "env", "(MCP_CODEEXEC_POOL_SIZE)"]
    assert next(line for line in lines if line.startswith("image ")).split()[1:] == ["-", "default"]


def test_secrets_are_never_printed(env: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-very-secret-key")
    monkeypatch.setenv("MCP_CODEEXEC_AUTH_TOKENS", "alice:alice-token-0123456789,bare-token-0123456789abc")
    for args in ([], ["--json"]):
        status, out, _ = run_config(capsys, *args)
        assert status == 0
        assert "very-secret" not in out and "alice-token" not in out and "bare-token" not in out
    s = json.loads(out)["settings"]
    assert s["anthropic_api_key"]["value"] == "<hidden, 22 characters>"
    assert s["anthropic_api_key"]["source"] == "env" and s["anthropic_api_key"]["detail"] == "ANTHROPIC_API_KEY"
    assert s["auth_tokens"]["value"] == ["alice:<hidden>", "<hidden>"]


def test_an_invalid_value_names_its_source_and_exits_2(env: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    env.write_text("pool_size = 500\n")
    status, out, err = run_config(capsys)
    assert status == 2 and out == ""
    assert "pool_size" in err and f"from toml: {env}" in err
    status, _, err = run_config(capsys, "--pool-size", "-1")
    assert status == 2 and "from flag" in err


def test_a_broken_toml_file_is_reported_with_its_path(env: Path, capsys) -> None:
    env.write_text("pool_size = = 4\n")
    status, _, err = run_config(capsys)
    assert status == 2 and str(env) in err and "not valid TOML" in err
