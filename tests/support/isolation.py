"""Settings untouched by the user running the tests: no config file, no MCP_CODEEXEC_* variables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def isolate_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(tmp_path / "no-config.toml"))
    for key in list(os.environ):
        if key.startswith("MCP_CODEEXEC_") and key != "MCP_CODEEXEC_CONFIG":
            monkeypatch.delenv(key)
