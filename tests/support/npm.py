"""Third-party clients from npm (the MCP Inspector CLI, Claude Code), installed on first use into
tests/.node/ (gitignored). Where npm or the registry is missing the tests skip, except under
CI=true where they fail."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import IN_CI

NODE_DIR = Path(__file__).resolve().parents[1] / ".node"


def unavailable(what: str, why: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but {what} is unavailable: {why}")
    pytest.skip(f"{what} unavailable: {why}")


def ensure_installed(what: str, spec: str, ready: Callable[[], bool]) -> None:
    """``npm install spec`` into NODE_DIR unless ``ready()`` says it is there already."""
    if ready():
        return
    if shutil.which("node") is None or shutil.which("npm") is None:
        unavailable(what, "node/npm are not installed (apt-get install nodejs npm)")
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            ["npm", "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "--loglevel=error", spec],
            capture_output=True, text=True, timeout=600, check=False,
        )
    except subprocess.TimeoutExpired:
        unavailable(what, "npm install timed out")
    if proc.returncode != 0 or not ready():
        unavailable(what, f"npm install failed: {proc.stderr.strip()[-1000:]}")
