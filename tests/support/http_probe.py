"""Raw HTTP helpers for the HTTP-security and fuzz tests: hand-made JSON-RPC requests (so malformed
ones can be sent too), both protocol eras, and an in-process uvicorn for apps built by the tests."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import uvicorn

from mcp_codeexec.config import Settings
from tests.support.servers import free_port, server_env

MODERN = "2026-07-28"
"""Session-less protocol revision: every POST stands alone (no initialize, no Mcp-Session-Id)."""
LEGACY = "2025-06-18"
"""Handshake-era revision: initialize gives an Mcp-Session-Id that later requests carry."""
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "http-probe", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def modern_headers(token: str | None, method: str = "tools/call", name: str | None = None) -> dict[str, str]:
    headers = {**ACCEPT, **auth(token), "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


def modern_request(method: str, params: dict[str, Any] | None = None, id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "method": method, "params": {**(params or {}), "_meta": META}}


def modern_call(client: httpx2.Client, url: str, token: str | None, tool: str, arguments: Any, id: int = 1) -> httpx2.Response:
    """One session-less ``tools/call``; ``arguments`` is sent as given (any JSON)."""
    body = modern_request("tools/call", {"name": tool, "arguments": arguments}, id)
    return client.post(url + "/mcp", content=json.dumps(body), headers=modern_headers(token, "tools/call", tool))


def rpc_payload(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC message of a response, whether sent as JSON or as one SSE ``message`` event."""
    text = response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        datas = [line[5:].strip() for line in text.splitlines() if line.startswith("data:") and line[5:].strip()]
        messages = [json.loads(d) for d in datas]
        finals = [m for m in messages if "result" in m or "error" in m]
        assert finals, text[:2000]
        return finals[-1]
    return json.loads(text)


def tool_result(response: httpx2.Response) -> dict[str, Any]:
    assert response.status_code == 200, (response.status_code, response.text[:2000])
    payload = rpc_payload(response)
    assert "result" in payload, payload
    return payload["result"]


def open_legacy_session(client: httpx2.Client, url: str, token: str | None) -> str:
    """initialize + notifications/initialized; return the Mcp-Session-Id."""
    init = {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "http-probe", "version": "1"}},
    }
    r = client.post(url + "/mcp", content=json.dumps(init), headers={**ACCEPT, **auth(token)})
    assert r.status_code == 200, (r.status_code, r.text[:500])
    sid = r.headers["mcp-session-id"]
    r = client.post(url + "/mcp", content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                    headers=legacy_headers(token, sid))
    assert r.status_code == 202, (r.status_code, r.text[:500])
    return sid


def legacy_headers(token: str | None, session_id: str) -> dict[str, str]:
    return {**ACCEPT, **auth(token), "Mcp-Session-Id": session_id, "MCP-Protocol-Version": LEGACY}


def legacy_call(client: httpx2.Client, url: str, token: str | None, session_id: str, tool: str, arguments: Any,
                id: int = 2) -> httpx2.Response:
    body = {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    return client.post(url + "/mcp", content=json.dumps(body), headers=legacy_headers(token, session_id))


@contextlib.contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Run an ASGI app (lifespan included) on a free loopback port in a thread; yield its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="warning",
                                          lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("in-process HTTP server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss


@contextlib.contextmanager
def spawn(settings: Settings, *, env: dict[str, str] | None = None, args: list[str] | None = None,
          expect_start: bool = True) -> Iterator[Server]:
    """``mcp-codeexec serve --transport http`` exactly as a user runs it (no ``--no-auth`` unless asked)."""
    port = free_port()
    full_env = server_env(settings, **(env or {}))
    argv = [sys.executable, "-m", "mcp_codeexec", "serve", "--transport", "http", "--port", str(port), *(args or [])]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = settings.data_dir.parent / f"server-{port}.stderr"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(argv, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    server = Server(f"http://127.0.0.1:{port}", proc, stderr_path)
    try:
        if expect_start:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"HTTP server exited ({proc.returncode}): {server.stderr()[-3000:]}")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
                assert time.monotonic() < deadline, "HTTP server did not start listening"
                time.sleep(0.05)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
