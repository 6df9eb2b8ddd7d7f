"""The server SIGKILLed mid-command on the kubernetes backend, and a new server started: the command
ran once (the agent in the pod carries on without the server), the new server reattaches to the same
pod by id with every file, and when it is done nothing is left: the dead server's warm pool pod is
reaped (its server process is gone), the sandbox is removed, no pod, NetworkPolicy or claim stays."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from mcp_codeexec.config import Settings
from tests.support.backends import backend_settings, remove_backend_installation
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import server_env

from .test_faults import engine_of, leftovers, no_leftovers
from .test_leader import pool_pods

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Client]:
    args = ["-m", "mcp_codeexec", "serve", "--backend", "kubernetes", "--kubeconfig", str(settings.kubeconfig),
            "--namespace", settings.k8s_namespace]
    params = StdioServerParameters(command=sys.executable, args=args, env=server_env(settings))
    async with Client(params) as client:
        yield client


def server_pids() -> set[int]:
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if "mcp_codeexec" in cmdline and "serve" in cmdline:
            found.add(child.pid)
    return found


async def bash(client: Client, command: str, **extra: Any) -> Any:
    result = await client.call_tool("bash_code_execution", {"command": command, **extra})
    assert_hosted_shape(result.structured_content, "bash_code_execution")
    return result


async def test_a_server_killed_mid_command_and_restarted_runs_nothing_twice_loses_no_file_and_leaves_nothing(
        tmp_path: Path, kubeconfig: str) -> None:
    settings = backend_settings("kubernetes", tmp_path, pool_size=1, reap_interval_seconds=1.0, k8s_lease_seconds=3.0)
    probe = engine_of(settings)
    try:
        before = server_pids()
        async with serve(settings) as client:
            first = await bash(client, "echo data > /workspace/f.txt; echo ok")
            cid = first.meta["container"]["id"]
            (server_pid,) = server_pids() - before
            with anyio.fail_after(90):  # the killed server's warm pool pod, to be reaped later
                while not (dead_pool := await anyio.to_thread.run_sync(pool_pods, probe)):
                    await anyio.sleep(0.3)
            outcome: dict[str, object] = {}

            async def long_call() -> None:
                try:
                    outcome["result"] = await bash(client, "echo ran >> /workspace/count.txt; sleep 3; echo late > /workspace/late.txt")
                except Exception as exc:  # noqa: BLE001 - any error is the expected outcome
                    outcome["error"] = exc

            started = time.monotonic()
            with anyio.fail_after(30):  # the client must not hang
                async with anyio.create_task_group() as tg:
                    tg.start_soon(long_call)
                    await anyio.sleep(1.5)  # the command is running in the pod
                    os.kill(server_pid, signal.SIGKILL)
            assert time.monotonic() - started < 15
            if "result" in outcome:
                assert outcome["result"].is_error  # type: ignore[attr-defined]
            else:
                assert "error" in outcome

        async with serve(settings) as client:
            with anyio.fail_after(60):
                again = await bash(client, "sleep 3; cat /workspace/f.txt /workspace/count.txt /workspace/late.txt", container_id=cid)
            assert again.structured_content["stdout"] == "data\nran\nlate\n", again.structured_content
            assert again.meta["container"]["id"] == cid
            # The new server leads once the dead one's Lease expires and reaps its pool pod (its
            # process is gone); the new server's own pool pod is a different one.
            with anyio.fail_after(60):
                while set(dead_pool) & set(await anyio.to_thread.run_sync(leftovers, probe)):
                    await anyio.sleep(0.5)
        # A clean exit removes the server's own pool pod; the sandbox stays for its id until removed.
        with anyio.fail_after(60):
            while not all(cid[len("container_"):] in name for name in await anyio.to_thread.run_sync(leftovers, probe)):
                await anyio.sleep(0.5)
        assert await anyio.to_thread.run_sync(leftovers, probe)
    finally:
        await anyio.to_thread.run_sync(remove_backend_installation, settings)  # the Lease too
        await no_leftovers(probe)
