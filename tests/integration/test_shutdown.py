"""Graceful shutdown: on SIGTERM, SIGINT or SIGHUP a stdio or HTTP server answers the call in flight
(``unavailable``, naming the shutdown, when it cannot finish within the grace), saves the shell
state, removes its pool containers and exits 0 without a traceback. Many short-lived servers
leave nothing behind, whatever their pool fill was doing when they went."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import docker
import httpx2
import pytest

from mcp_codeexec.config import Settings
from mcp_codeexec.engines.docker import L_INSTALL, installation_label
from tests.integration.conftest import make_settings
from tests.support.http_probe import rpc_payload
from tests.support.servers import free_port, remove_installation, server_env

pytestmark = pytest.mark.anyio

SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]


def containers_of(settings: Settings) -> list[str]:
    client = docker.from_env()
    try:
        found = client.containers.list(ignore_removed=True, all=True, filters={"label": f"{L_INSTALL}={installation_label(settings.data_dir)}"})
        return [c.name for c in found]
    finally:
        client.close()


def assert_only_the_session_container_is_left(settings: Settings) -> None:
    """The session's container stays (its owner record says whose); the pool container is gone."""
    (name,) = containers_of(settings)
    assert (settings.data_dir / "owners" / (name.removeprefix("mcp-codeexec-") + ".json")).exists()


def rpc(id_: int, method: str, params: dict) -> dict:
    return {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}


INIT = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
SLOW = {"name": "bash_code_execution", "arguments": {"command": "echo started; export KEPT=1; sleep 60"}}


class StdioServer:
    """A stdio server driven by raw JSON-RPC lines, so the test controls exactly when it signals."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.err = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_codeexec", "serve"], env=server_env(settings, MCP_CODEEXEC_LOG_LEVEL="INFO"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
        )
        self.log = log

    def send(self, message: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def receive(self) -> dict:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            assert line, "the server closed stdout: " + self.log.read_text()[-2000:]
            message = json.loads(line)
            if "id" in message:
                return message

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


async def until(condition, timeout: float) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.1)


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
async def test_a_signalled_stdio_server_answers_its_call_removes_its_pool_and_exits_0(tmp_path, docker_engine, signum):
    settings = make_settings(tmp_path, pool_size=1)
    server = StdioServer(settings, tmp_path / "server.log")
    try:
        server.send(rpc(1, "initialize", INIT))
        assert "result" in server.receive()
        server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        await until(lambda: "pool: 1/1 warm containers ready" in server.log.read_text(), 120)
        server.send(rpc(2, "tools/call", SLOW))  # takes the warm container; the pool refills
        await until(lambda: "pool: 1/1 warm containers ready" in server.log.read_text().split("pool: 1/1", 1)[1], 120)
        time.sleep(1)  # the command is running
        started = time.monotonic()
        server.proc.send_signal(signum)
        reply = await anyio.to_thread.run_sync(server.receive)
        result = reply["result"]
        assert result["isError"] and result["structuredContent"]["error_code"] == "unavailable"
        assert "shutting down" in result["content"][0]["text"] and signum.name in result["content"][0]["text"]
        assert await anyio.to_thread.run_sync(lambda: server.proc.wait(30)) == 0
        elapsed = time.monotonic() - started
        assert elapsed < 20
        log = server.log.read_text()
        assert "Traceback" not in log, log
        # The session's container stays (with its shell state saved); the pool container is gone.
        assert_only_the_session_container_is_left(settings)
    finally:
        server.close()
        remove_installation(settings)


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
async def test_a_signalled_http_server_answers_its_call_removes_its_pool_and_exits_0(tmp_path, docker_engine, signum):
    settings = make_settings(tmp_path, pool_size=1)
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_codeexec", "serve", "--transport", "http", "--port", str(port), "--no-auth"],
            env=server_env(settings, MCP_CODEEXEC_LOG_LEVEL="INFO"), stdout=subprocess.DEVNULL, stderr=err,
        )
    try:
        await until(lambda: "pool: 1/1 warm containers ready" in log.read_text(), 120)
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            init = await http.post("/mcp", json=rpc(1, "initialize", INIT), headers=headers)
            headers["Mcp-Session-Id"] = init.headers["mcp-session-id"]
            headers["Mcp-Protocol-Version"] = "2025-06-18"
            await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)

            async def signal_soon() -> None:
                await anyio.sleep(3)
                proc.send_signal(signum)

            async with anyio.create_task_group() as tg:
                tg.start_soon(signal_soon)
                response = await http.post("/mcp", json=rpc(2, "tools/call", SLOW), headers=headers)
        data = rpc_payload(response)
        assert data["id"] == 2
        result = data["result"]
        assert result["structuredContent"]["error_code"] == "unavailable"
        assert "shutting down" in result["content"][0]["text"] and signum.name in result["content"][0]["text"]
        assert await anyio.to_thread.run_sync(lambda: proc.wait(30)) == 0
        text = log.read_text()
        assert "Traceback" not in text, text
        assert_only_the_session_container_is_left(settings)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        remove_installation(settings)


async def test_many_short_lived_servers_leave_no_container_behind(tmp_path, docker_engine):
    """Each server exits at a different point of its pool fill (often mid-create)."""
    settings = make_settings(tmp_path, pool_size=1)
    env = server_env(settings)
    try:
        for n in range(12):
            proc = subprocess.Popen([sys.executable, "-m", "mcp_codeexec", "serve"], env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            await anyio.sleep(1.0 + 0.25 * n)  # start-up takes ~1 s; the create runs after it
            proc.send_signal(signal.SIGTERM if n % 2 else signal.SIGINT)
            _, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=60))
            assert proc.returncode == 0 and b"Traceback" not in err, err.decode()[-2000:]
            assert containers_of(settings) == [], f"server {n} left {containers_of(settings)}"
    finally:
        remove_installation(settings)


def test_a_clean_stdio_exit_removes_the_pool_too(tmp_path, docker_engine) -> None:
    settings = make_settings(tmp_path, pool_size=1)
    try:
        log = tmp_path / "server.log"
        with open(log, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "mcp_codeexec", "serve"], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=err, env=server_env(settings, MCP_CODEEXEC_LOG_LEVEL="INFO"))
        deadline = time.monotonic() + 120
        while "pool: 1/1 warm containers ready" not in log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert proc.stdin is not None
        proc.stdin.close()  # what a client does first
        assert proc.wait(30) == 0
        assert containers_of(settings) == []
        assert "Traceback" not in log.read_text()
    finally:
        remove_installation(settings)


if os.name != "posix":  # pragma: no cover
    pytestmark = pytest.mark.skip("signals are POSIX")
