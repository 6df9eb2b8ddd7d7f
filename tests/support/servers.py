"""Start mcp-codeexec for tests over each transport and clean up what it created."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from mcp_codeexec.config import Settings
from mcp_codeexec.server import create_server

TRANSPORTS = ["memory", "stdio", "http"]


def server_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment that makes a server subprocess use exactly the settings a test built."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_CODEEXEC_")}
    env["MCP_CODEEXEC_CONFIG"] = str(settings.data_dir / "no-config.toml")
    env["MCP_CODEEXEC_LOG_LEVEL"] = "WARNING"
    for name in sorted(settings.model_fields_set | {"data_dir", "pool_size", "call_timeout"}):
        value = getattr(settings, name)
        if name in ("config_file", "anthropic_api_key") or value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list):
            value = ",".join(map(str, value))
        elif isinstance(value, dict):
            value = json.dumps(value)  # pydantic-settings decodes a dict field's env value as JSON
        env[f"MCP_CODEEXEC_{name.upper()}"] = str(value)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def http_server(settings: Settings, token: str | None = None, extra_args: list[str] | None = None) -> Iterator[str]:
    """Run ``mcp-codeexec serve --transport http`` as a subprocess; yield its base URL."""
    port = free_port()
    env = server_env(settings)
    if token:
        env["MCP_CODEEXEC_AUTH_TOKENS"] = token
    args = [sys.executable, "-m", "mcp_codeexec", "serve", "--transport", "http", "--port", str(port)]
    proc = subprocess.Popen(args + (extra_args or []) + ([] if token else ["--no-auth"]), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"HTTP server exited: {proc.stderr.read().decode()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@asynccontextmanager
async def mcp_client(transport: str, settings: Settings, *, base_url: str | None = None, token: str | None = None) -> AsyncIterator[Client]:
    if transport == "memory":
        async with Client(create_server(settings)) as client:
            yield client
    elif transport == "stdio":
        params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_codeexec", "serve"], env=server_env(settings))
        async with Client(params) as client:
            yield client
    else:
        assert base_url is not None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(120)) as http:
            async with Client(streamable_http_client(base_url + "/mcp", http_client=http)) as client:
                yield client


def remove_installation(settings: Settings) -> None:
    """Remove every container and workspace a test's server created (they carry its data dir label)."""
    from mcp_codeexec.engines.docker import SandboxManager, connect

    SandboxManager(settings, connect()).remove_installation()


def new_token() -> str:
    return secrets.token_urlsafe(24)
