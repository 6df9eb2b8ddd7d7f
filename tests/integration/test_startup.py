"""Start-up work a client must not wait for: the first reap of leftovers runs beside the session.

Claude Code and other clients give a starting server a few seconds to answer ``initialize``; with
many leftovers (or a loaded engine) the start-up reap alone can take longer.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from mcp_codeexec.config import Settings
from tests.support.servers import server_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.anyio
INITIALIZE = (b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
              b'"capabilities":{},"clientInfo":{"name":"startup-test","version":"1"}}}\n')


def held_server(settings: Settings, held: Path, method: str, **extra: str) -> tuple[list[str], dict[str, str]]:
    env = server_env(settings, HELD_METHOD=method, HELD_DIR=str(held), PYTHONPATH=str(ROOT), **extra)
    return [sys.executable, "-m", "tests.support.held_server", "serve"], env


async def wait_for(path: Path, timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while not path.exists():
            await anyio.sleep(0.02)


async def test_initialize_and_a_call_are_answered_while_the_start_up_reap_is_still_running(settings: Settings, tmp_path: Path) -> None:
    held = tmp_path / "held"
    held.mkdir()
    command, env = held_server(settings, held, "reap")
    params = StdioServerParameters(command=command[0], args=command[1:], env=env, cwd=str(ROOT))
    try:
        with anyio.fail_after(60):
            async with Client(params, read_timeout_seconds=60) as client:
                # The reap starts in a worker thread beside the session: initialize may be answered
                # a moment before it enters (CI saw this once), so wait for it rather than assert.
                await wait_for(held / "reap.entered")  # the reap has started ...
                result = await client.call_tool("bash_code_execution", {"command": "echo during-reap"})
                assert not result.is_error, result
                assert "during-reap" in result.structured_content["stdout"]
                assert not (held / "reap.done").exists()  # ... and was still held meanwhile
                (held / "release").touch()
                await wait_for(held / "reap.done")
                result = await client.call_tool("bash_code_execution", {"command": "echo after-reap"})
                assert "after-reap" in result.structured_content["stdout"]
    finally:
        (held / "release").touch()


@pytest.mark.parametrize("method", ["resolve_image", "reap"])
def test_stdin_closing_during_start_up_exits_0_without_a_traceback(settings: Settings, tmp_path: Path, method: str) -> None:
    held = tmp_path / "held"
    held.mkdir()
    command, env = held_server(settings, held, method, MCP_CODEEXEC_LOG_LEVEL="INFO")
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (held / f"{method}.entered").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.02)
        # The client sends initialize and goes away (stdin closed) while the server is still
        # starting; the held step then finishes.
        threading.Timer(0.5, (held / "release").touch).start()
        _, stderr = proc.communicate(INITIALIZE, timeout=60)
    finally:
        (held / "release").touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert b"Traceback" not in stderr, stderr.decode()[-3000:]
    assert b"Error" not in stderr, stderr.decode()[-3000:]
