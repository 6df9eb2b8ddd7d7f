"""A clean stdio shutdown (the client closes stdin) saves the shell state, and says nothing about it."""

from __future__ import annotations

import json
import subprocess
import sys

import docker

from mcp_codeexec.config import Settings
from mcp_codeexec.engines.docker import NAME_PREFIX
from tests.support.servers import server_env


def _rpc(proc: subprocess.Popen, request_id: int | None, method: str, params: dict) -> dict | None:
    message = {"jsonrpc": "2.0", "method": method, "params": params}
    if request_id is not None:
        message["id"] = request_id
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write((json.dumps(message) + "\n").encode())
    proc.stdin.flush()
    if request_id is None:
        return None
    while True:
        reply = json.loads(proc.stdout.readline())
        if reply.get("id") == request_id:
            return reply


def test_closing_stdin_saves_the_shell_state_without_a_warning(settings: Settings) -> None:
    env = server_env(settings, MCP_CODEEXEC_LOG_LEVEL="INFO")
    proc = subprocess.Popen([sys.executable, "-m", "mcp_codeexec", "serve"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _rpc(proc, 1, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                     "clientInfo": {"name": "shutdown-test", "version": "1"}})
        _rpc(proc, None, "notifications/initialized", {})
        reply = _rpc(proc, 2, "tools/call", {"name": "bash_code_execution",
                                             "arguments": {"command": "cd /tmp && export SAVED_ON_EXIT=yes"}})
        assert reply is not None and not reply["result"].get("isError"), reply
        container_id = reply["result"]["_meta"]["container"]["id"]
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert "shell state not saved" not in stderr, stderr
    assert "Traceback" not in stderr, stderr
    saved = docker.from_env().containers.get(NAME_PREFIX + container_id).exec_run(
        ["cat", "/workspace/.codeexec/shell-state"], user="1000"
    )
    assert saved.exit_code == 0 and b"SAVED_ON_EXIT" in saved.output, saved.output[-500:]
