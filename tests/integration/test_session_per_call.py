"""Clients that start a server per tool call (langchain-mcp-adapters' default ``get_tools()``):
each new stdio session resumes the local user's most recent sandbox that no server is using, so
files and the shell's exported variables carry over and no container piles up; ``--fresh`` (or
``MCP_CODEEXEC_RESUME_SANDBOX=false``) starts a new one. Stopped sandboxes kept per principal are
capped, least recently used evicted first."""

from __future__ import annotations

import subprocess
import sys

import anyio
import docker
import pytest

from mcp_codeexec.config import Settings
from mcp_codeexec.engines.docker import L_INSTALL, SandboxManager, connect, installation_label
from tests.integration.conftest import make_settings
from tests.support.pyclients import client_python, run_client
from tests.support.servers import mcp_client, remove_installation, server_env

pytestmark = pytest.mark.anyio

LANGCHAIN = r"""
import asyncio, json, os, sys
from langchain_mcp_adapters.client import MultiServerMCPClient

async def main():
    client = MultiServerMCPClient({"codeexec": {"command": sys.argv[1], "args": ["-m", "mcp_codeexec", "serve"],
                                                "transport": "stdio", "env": dict(os.environ)}})
    tools = {t.name: t for t in await client.get_tools()}
    bash = tools["bash_code_execution"]
    outputs = []
    for command in ["echo kept > /workspace/a.txt; export KEPT=yes", "cat /workspace/a.txt; echo ${KEPT:-unset}",
                    "cat /workspace/a.txt; echo ${KEPT:-unset}"]:
        outputs.append(str(await bash.ainvoke({"command": command})))  # each call: a new server process
    print(json.dumps({"outputs": outputs}))

asyncio.run(main())
"""


def containers_of(settings: Settings) -> list[str]:
    client = docker.from_env()
    try:
        return [c.name for c in client.containers.list(ignore_removed=True, all=True, filters={"label": f"{L_INSTALL}={installation_label(settings.data_dir)}"})]
    finally:
        client.close()


@pytest.fixture(scope="module")
def langchain_python():
    return client_python("langchain", "langchain-mcp-adapters==0.3.2")


async def test_langchain_calls_each_in_a_new_server_share_one_sandbox(tmp_path, docker_engine, langchain_python):
    settings = make_settings(tmp_path, pool_size=1)
    try:
        env = server_env(settings)
        result = await anyio.to_thread.run_sync(lambda: run_client(langchain_python, LANGCHAIN, env))
        first, second, third = result["outputs"]
        assert "kept" in second and "yes" in second, second
        assert "kept" in third and "yes" in third, third
        assert len(containers_of(settings)) == 1  # one sandbox; every server's pool container removed
    finally:
        remove_installation(settings)


async def test_fresh_sessions_when_the_user_asks_for_them(tmp_path, docker_engine, langchain_python):
    settings = make_settings(tmp_path, pool_size=0)
    try:
        env = server_env(settings, MCP_CODEEXEC_RESUME_SANDBOX="false")
        result = await anyio.to_thread.run_sync(lambda: run_client(langchain_python, LANGCHAIN, env))
        assert "unset" in result["outputs"][1] and "No such file" in result["outputs"][1]
        assert len(containers_of(settings)) == 3
    finally:
        remove_installation(settings)


async def test_a_session_does_not_resume_a_sandbox_another_server_is_using(settings):
    async with mcp_client("stdio", settings) as a, mcp_client("stdio", settings) as b:
        ra = await a.call_tool("bash_code_execution", {"command": "true"})
        rb = await b.call_tool("bash_code_execution", {"command": "true"})
        assert ra.meta["container"]["id"] != rb.meta["container"]["id"]
    async with mcp_client("stdio", settings) as c:  # both are free now: the most recently used (a, closed last) is resumed
        rc = await c.call_tool("bash_code_execution", {"command": "true"})
        assert rc.meta["container"]["id"] == ra.meta["container"]["id"]


async def test_stopped_sandboxes_beyond_the_per_principal_cap_are_evicted_oldest_first(tmp_path, docker_engine):
    settings = make_settings(tmp_path, max_kept_sandboxes_per_principal=2, resume_sandbox=False)
    try:
        made = []
        for _ in range(4):
            async with mcp_client("stdio", settings) as client:
                made.append((await client.call_tool("bash_code_execution", {"command": "true"})).meta["container"]["id"])
        manager = SandboxManager(settings, connect())
        for cid in made:
            await anyio.to_thread.run_sync(manager.stop, cid)
        ls = subprocess.run([sys.executable, "-m", "mcp_codeexec", "containers", "ls"], env=server_env(settings),
                            capture_output=True, text=True, timeout=60, check=True).stdout
        assert "local: 4 stopped sandbox(es) kept of at most 2" in ls, ls
        evicted = await anyio.to_thread.run_sync(manager.reap)
        assert sorted(evicted) == sorted(made[:2])
        assert sorted(containers_of(settings)) == sorted(f"mcp-codeexec-{cid}" for cid in made[2:])
        ls = subprocess.run([sys.executable, "-m", "mcp_codeexec", "containers", "ls"], env=server_env(settings),
                            capture_output=True, text=True, timeout=60, check=True).stdout
        assert "local: 2 stopped sandbox(es) kept of at most 2" in ls, ls
    finally:
        remove_installation(settings)
