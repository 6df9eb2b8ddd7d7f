"""The Python interpreter across container lifecycle events: a longer idle limit while it holds
state (reported in ``containers ls``), and an idle stop that loses it is reported, never silent.

Both backends (``backend_name``); each case needs what the local cluster's emptyDir pods do not have
(``@docker_only`` says what). The interpreter's state across cells and server restarts on pods is in
test_code_execution.py."""

from __future__ import annotations

import json
import subprocess
import sys

import anyio
import docker
import pytest

from mcp_codeexec.engines.docker import NAME_PREFIX
from tests.support.backends import backend_settings, docker_only, remove_backend_installation
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import mcp_client, server_env

pytestmark = pytest.mark.anyio


async def code(client, source: str, **extra):
    result = await client.call_tool("code_execution", {"code": source, **extra})
    assert_hosted_shape(result.structured_content, "code_execution")
    return result


def status(cid: str) -> str:
    return docker.from_env().containers.get(NAME_PREFIX + cid).status


@docker_only("idle stop: a pod is stopped (deleted, its workspace claim kept) only with k8s_storage_class; the emptyDir pods of this suite are never stopped idle, as that would lose their files")
async def test_a_container_with_repl_state_outlives_the_normal_idle_stop_and_ls_says_so(tmp_path, docker_engine, backend_name):
    settings = backend_settings(backend_name, tmp_path, idle_stop_seconds=1.0, repl_idle_stop_seconds=3600.0, reap_interval_seconds=0.3,
                             checkpoint_idle=False)  # the behaviour without checkpoints (runc; under runsc: off)
    try:
        async with mcp_client("memory", settings) as client:
            first = await code(client, "kept = 'alive'")
            cid = first.meta["container"]["id"]
            await anyio.sleep(3)  # ten reaper rounds past the normal idle limit
            assert status(cid) == "running"
            listed = subprocess.run([sys.executable, "-m", "mcp_codeexec", "containers", "ls", "--json"],
                                    env=server_env(settings), capture_output=True, text=True, timeout=60)
            [row] = [r for r in json.loads(listed.stdout) if r["id"] == cid]
            assert row["repl_state"] is True and row["idle_stop_seconds"] == 3600.0
            table = subprocess.run([sys.executable, "-m", "mcp_codeexec", "containers", "ls"],
                                   env=server_env(settings), capture_output=True, text=True, timeout=60)
            assert "running +repl" in table.stdout
            assert (await code(client, "print(kept)")).structured_content["stdout"] == "alive\n"
    finally:
        remove_backend_installation(settings)


@docker_only("idle stop: a pod is stopped (deleted, its workspace claim kept) only with k8s_storage_class; the emptyDir pods of this suite are never stopped idle, as that would lose their files")
async def test_an_idle_stop_that_loses_the_interpreter_is_reported_in_the_next_calls_stderr(tmp_path, docker_engine, backend_name):
    settings = backend_settings(backend_name, tmp_path, idle_stop_seconds=1.0, repl_idle_stop_seconds=1.0, reap_interval_seconds=0.3,
                             checkpoint_idle=False)
    try:
        async with mcp_client("memory", settings) as client:
            first = await code(client, "kept = 'alive'")
            cid = first.meta["container"]["id"]
            with anyio.fail_after(30):
                while status(cid) != "exited":
                    await anyio.sleep(0.2)
            again = await code(client, "print('kept' in globals())")
            sc = again.structured_content
            assert sc["stdout"] == "False\n" and again.meta["container"]["id"] == cid
            assert sc["stderr"].startswith("[the Python interpreter was restarted: the container was stopped (idle for ")
    finally:
        remove_backend_installation(settings)


@docker_only("a sandbox rebuilt around its workspace after its container is removed: a pod only with a workspace claim (k8s_storage_class); without one the id expires (tests/k8s/test_faults.py)")
async def test_a_rebuilt_container_says_its_interpreter_state_is_gone(tmp_path, docker_engine, backend_name):
    settings = backend_settings(backend_name, tmp_path)
    try:
        async with mcp_client("memory", settings) as client:
            first = await code(client, "kept = 'alive'")
            cid = first.meta["container"]["id"]
            docker.from_env().containers.get(NAME_PREFIX + cid).remove(force=True)
            again = await client.call_tool("code_execution", {"code": "print('kept' in globals())"})
            if again.is_error:  # the call in flight on the dead stream; the session then moves on
                assert again.structured_content["error_code"] == "unavailable"
                again = await code(client, "print('kept' in globals())")
            sc = again.structured_content
            assert again.meta["container"]["id"] == cid  # rebuilt around its workspace
            assert sc["stdout"] == "False\n"
            assert sc["stderr"].startswith(
                "[the Python interpreter was restarted: the container was restarted or rebuilt since the last cell;"
            )
    finally:
        remove_backend_installation(settings)
