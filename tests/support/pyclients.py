"""Third-party Python MCP clients (openai-agents, langchain-mcp-adapters) in a virtualenv of their
own in the user's cache (``~/.cache/mcp-codeexec/pyclients``, outside the repository so its
third-party code is never mistaken for the project's), installed from PyPI on first use: they pin versions of
``mcp`` that differ from the one this project runs on, so they cannot share its environment. The
tests drive them as subprocesses. Where the registry is unreachable they skip, except under CI=true."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

from tests.support.npm import unavailable

CLIENTS_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mcp-codeexec" / "pyclients"


def client_python(name: str, *specs: str) -> Path:
    """The interpreter of virtualenv ``name`` with ``specs`` installed (made on first use)."""
    root = CLIENTS_DIR / name
    python = root / "bin" / "python"
    marker = root / "installed.json"
    if python.exists() and marker.exists() and json.loads(marker.read_text()) == list(specs):
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    try:
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *specs], capture_output=True, text=True,
                              timeout=900, check=False)
    except subprocess.TimeoutExpired:
        unavailable(name, "pip install timed out")
    if proc.returncode != 0:
        unavailable(name, f"pip install failed: {proc.stderr.strip()[-1000:]}")
    marker.write_text(json.dumps(list(specs)))
    return python


def run_client(python: Path, script: str, env: dict[str, str], timeout: float = 300) -> dict:
    """Run ``script`` with ``python``; it prints one JSON object as its last stdout line."""
    proc = subprocess.run([str(python), "-c", script, sys.executable], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
