"""Packaging: `pip install .` and `uvx --from .` give a working `mcp-codeexec`; the top-level Dockerfile packages the
server, which then serves /mcp with a bearer token and runs sandboxes on the host's engine.

The Dockerfile's default base is the official Python image; this machine cannot pull it, so the
test builds FROM the Debian base `mcp-codeexec image build --base debian` leaves on the engine
(python3 then comes from apt), with the extra CA bundle injected as `ca-bundle.crt`.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import docker
import docker.errors
import httpx2
import pytest
from docker.utils.build import tar
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from mcp_codeexec.config import load_settings
from mcp_codeexec.engines.docker import SandboxManager
from mcp_codeexec.image import DEBIAN_BASE, find_ca_bundle
from tests.conftest import IN_CI
from tests.support.oracle import assert_hosted_shape

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def build_context() -> io.IOBase:
    """What `docker build .` sends (the .dockerignore applies), plus ca-bundle.crt."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    context = tar(str(ROOT), exclude=patterns)
    bundle = find_ca_bundle()
    data = bundle.read_bytes() if bundle else b""
    with tarfile.open(fileobj=context, mode="a") as archive:
        info = tarfile.TarInfo("ca-bundle.crt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    context.seek(0)
    return context


def base_image(client: docker.DockerClient) -> str:
    for candidate in (DEBIAN_BASE, "python:3.11-slim-bookworm"):
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.get(candidate)
            return candidate
    why = f"neither {DEBIAN_BASE} nor python:3.11-slim-bookworm is on the engine (mcp-codeexec image build --base debian makes the first)"
    if IN_CI:
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def server_image(docker_engine: None) -> Iterator[str]:
    client = docker.from_env(timeout=900)
    tag = f"mcp-codeexec-server:test-{secrets.token_hex(4)}"
    try:
        base = base_image(client)
        log = []
        for event in client.api.build(fileobj=build_context(), custom_context=True, tag=tag, buildargs={"BASE": base},
                                      rm=True, forcerm=True, pull=False, decode=True):
            log.append(event.get("stream") or event.get("status") or "")
            if "error" in event:
                pytest.fail(f"building the server image failed: {event['error']}\n{''.join(log)[-4000:]}")
        yield tag
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(tag, force=True)
        client.close()


def wait_for_port(port: int, container, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        container.reload()
        if container.status != "running":
            pytest.fail(f"the server container exited: {container.logs().decode()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"GET /mcp HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            if s.recv(12).startswith(b"HTTP/1."):
                return
        time.sleep(0.1)
    pytest.fail(f"the server did not listen within {deadline} s: {container.logs().decode()[-3000:]}")


async def test_the_packaged_server_serves_mcp_over_http_with_a_token_and_runs_sandboxes(server_image: str) -> None:
    client = docker.from_env()
    token = secrets.token_urlsafe(24)
    data_dir = f"/data/test-{secrets.token_hex(6)}"
    env = {"MCP_CODEEXEC_AUTH_TOKENS": token, "MCP_CODEEXEC_DATA_DIR": data_dir, "MCP_CODEEXEC_POOL_SIZE": "0",
           "MCP_CODEEXEC_LOG_LEVEL": "WARNING"}
    if os.environ.get("MCP_CODEEXEC_RUNTIME"):
        env["MCP_CODEEXEC_RUNTIME"] = os.environ["MCP_CODEEXEC_RUNTIME"]
    container = client.containers.run(
        server_image, detach=True, environment=env, ports={"8000/tcp": ("127.0.0.1", None)},
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}},
        labels={"io.mcp-codeexec.role": "server-image-test"},
    )
    try:
        container.reload()
        port = int(container.ports["8000/tcp"][0]["HostPort"])
        wait_for_port(port, container)
        url = f"http://127.0.0.1:{port}/mcp"
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(120)) as anonymous:
            assert (await anonymous.post(url, json={})).status_code == 401
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(120)) as http:
            async with Client(streamable_http_client(url, http_client=http)) as mcp:
                tools = [tool.name for tool in (await mcp.list_tools()).tools]
                assert tools == ["bash_code_execution", "text_editor_code_execution", "code_execution"]
                ran = await mcp.call_tool("bash_code_execution", {"command": "echo from-the-packaged-server; id -u"})
                assert_hosted_shape(ran.structured_content, "bash_code_execution")
                assert ran.structured_content["stdout"] == "from-the-packaged-server\n1000\n"
                assert ran.meta["container"]["id"].startswith("container_")
        quota = container.exec_run(["mcp-codeexec", "config", "--json"]).output.decode()
        assert '"quota": {\n      "value": "none"' in quota
    finally:
        container.remove(force=True, v=True)
        # The sandboxes it started carry its data dir's label; remove them (and their volumes) from here.
        leftovers = load_settings(data_dir=data_dir, quota="none", pool_size=0)
        SandboxManager(leftovers, client).remove_installation()
        client.close()


def test_pip_install_gives_a_working_command_with_the_sandbox_build_context(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # System site packages provide the dependencies (no download); the package itself is built
    # and installed from the checkout like any user's `pip install .`.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_CODEEXEC_")}
    env.update(MCP_CODEEXEC_CONFIG=str(tmp_path / "none.toml"), MCP_CODEEXEC_DATA_DIR=str(tmp_path / "data"))
    command = venv / "bin" / "mcp-codeexec"
    help_text = subprocess.run([str(command), "--help"], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert help_text.returncode == 0
    for sub in ("serve", "image", "files", "containers", "doctor", "config"):
        assert sub in help_text.stdout
    where = subprocess.run(
        [str(python), "-c", "import mcp_codeexec, mcp_codeexec.image as i; print(mcp_codeexec.__file__); print(i.sandbox_dir())"],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path,
    )
    installed, sandbox = where.stdout.split()
    assert installed.startswith(str(venv)) and sandbox.startswith(str(venv))
    assert (Path(sandbox) / "Dockerfile").is_file() and (Path(sandbox) / "agent" / "codeexec_agent.py").is_file()
    assert not (Path(sandbox) / "ca-bundle.crt").exists()  # a local proxy's CA never ships
    version = subprocess.run([str(command), "--version"], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert version.stdout.strip() == "mcp-codeexec 0.1.0"


async def test_uvx_from_the_checkout_serves_both_tools(tmp_path: Path) -> None:
    """`uvx --from <checkout> mcp-codeexec serve` (the runtime hint server.json gives registries):
    uv builds the package into a throwaway environment and a real MCP client lists its tools."""
    uvx = shutil.which("uvx") or str(Path(sys.executable).parent / "uvx")
    if not Path(uvx).exists():
        if IN_CI:
            pytest.fail("CI=true but uvx is missing (pip install uv; it is in the [test] extra)")
        pytest.skip("uvx is not installed (pip install uv)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_CODEEXEC_")}
    # A private cache keeps the test from touching (or depending on) the user's; native TLS makes
    # uv trust the system CA bundle, as behind this machine's TLS-intercepting proxy.
    env.update(UV_CACHE_DIR=str(tmp_path / "uv-cache"), UV_NATIVE_TLS="1", UV_TOOL_DIR=str(tmp_path / "uv-tools"),
               MCP_CODEEXEC_CONFIG=str(tmp_path / "none.toml"), MCP_CODEEXEC_DATA_DIR=str(tmp_path / "data"),
               MCP_CODEEXEC_POOL_SIZE="0")
    version = await anyio.run_process([uvx, "--from", str(ROOT), "mcp-codeexec", "--version"], env=env, cwd=tmp_path, check=False)
    assert version.returncode == 0, version.stderr.decode()[-3000:]
    assert version.stdout.decode().strip() == "mcp-codeexec 0.1.0"
    params = StdioServerParameters(command=uvx, args=["--from", str(ROOT), "mcp-codeexec", "serve"], env=env, cwd=str(tmp_path))
    async with Client(params) as client:
        tools = await client.list_tools()
    assert [tool.name for tool in tools.tools] == ["bash_code_execution", "text_editor_code_execution", "code_execution"]
