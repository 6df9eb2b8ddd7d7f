"""Container lifecycle: idle sandboxes stop and come back intact; a session outlives its container.

Both backends (``backend_name``); ``@docker_only`` names what the Kubernetes case needs that the
local cluster's emptyDir pods do not have."""

from __future__ import annotations

import time

import anyio
import docker
import pytest

from mcp_codeexec.engines.docker import NAME_PREFIX
from tests.support.backends import backend_settings, docker_only, remove_backend_installation
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import mcp_client

pytestmark = pytest.mark.anyio


async def bash(client, command: str, **extra):
    result = await client.call_tool("bash_code_execution", {"command": command, **extra})
    assert_hosted_shape(result.structured_content, "bash_code_execution")
    return result


async def wait_for_status(name: str, status: str | None, timeout: float = 30) -> None:
    """Until the container has ``status`` (None: is gone)."""
    client = docker.from_env()
    with anyio.fail_after(timeout):
        while True:
            try:
                if client.containers.get(name).status == status:
                    return
            except docker.errors.NotFound:
                if status is None:
                    return
            await anyio.sleep(0.2)


@docker_only("idle stop: a pod is stopped (deleted, its workspace claim kept) only with k8s_storage_class; the emptyDir pods of this suite are never stopped idle, as that would lose their files")
@pytest.mark.parametrize("pool_size", [0, 1], ids=["created", "from-the-pool"])
async def test_an_idle_sandbox_is_stopped_and_its_next_call_finds_files_and_shell_state_intact(tmp_path, docker_engine, backend_name,
                                                                                                pool_size):
    settings = backend_settings(backend_name, tmp_path, idle_stop_seconds=1.0, reap_interval_seconds=0.5, pool_size=pool_size)
    try:
        async with mcp_client("memory", settings) as client:
            first = await bash(client, "echo data > /workspace/d.txt; mkdir -p /workspace/w; cd /workspace/w; export KEEP=1")
            cid = first.meta["container"]["id"]
            # A pool-born container is removed by the engine when it stops (AutoRemove); its next
            # call rebuilds it around the workspace, like any stopped one is started again.
            await wait_for_status(NAME_PREFIX + cid, "exited" if pool_size == 0 else None)
            started = time.monotonic()
            again = await bash(client, "cat /workspace/d.txt; pwd; echo $KEEP")
            assert again.structured_content["stdout"] == "data\n/workspace/w\n1\n"
            assert again.meta["container"]["id"] == cid
            assert time.monotonic() - started < 30
    finally:
        remove_backend_installation(settings)


@docker_only("a sandbox rebuilt around its workspace after its container is removed: a pod only with a workspace claim (k8s_storage_class); without one the id expires (tests/k8s/test_faults.py)")
async def test_a_session_whose_container_was_removed_continues_in_it_rebuilt(any_settings):
    settings = any_settings
    async with mcp_client("memory", settings) as client:
        first = await bash(client, "echo hi > /workspace/hi.txt; mkdir -p /workspace/sub; cd /workspace/sub; export KEPT=yes")
        cid = first.meta["container"]["id"]
        docker.from_env().containers.get(NAME_PREFIX + cid).remove(force=True)
        again = await bash(client, "cat /workspace/hi.txt")
        # The call that was in flight on the dead stream may fail; the session then moves on.
        if again.is_error:
            assert again.structured_content["error_code"] == "unavailable"
            again = await bash(client, "cat /workspace/hi.txt")
        assert again.structured_content["stdout"] == "hi\n"
        assert again.meta["container"]["id"] == cid  # rebuilt around its workspace, not replaced
        # The live shell's state (on the old container's tmpfs) was saved where the rebuild finds it.
        state = await bash(client, "pwd; echo $KEPT")
        assert state.structured_content["stdout"] == "/workspace/sub\nyes\n"


async def test_a_new_workspace_shows_no_lost_and_found(any_settings):
    async with mcp_client("memory", any_settings) as client:
        listing = await bash(client, "ls -A /workspace")
        assert "lost+found" not in listing.structured_content["stdout"]
        view = await client.call_tool("text_editor_code_execution", {"command": "view", "path": "/workspace"})
        assert "lost+found" not in view.structured_content["content"]


@docker_only("loop-device workspace images")
async def test_a_workspace_image_named_the_old_way_is_still_found_and_removed(any_settings):
    """Images made before they were named by a random token are plain ``<id>.img`` files."""
    settings = any_settings
    import os
    import subprocess

    from mcp_codeexec.engines.docker import SandboxManager, connect

    manager = SandboxManager(settings, connect())
    if manager.volumes.mode != "loop":
        pytest.skip("workspaces are Docker volumes here (no loop images)")
    async with mcp_client("memory", settings) as client:
        cid = (await bash(client, "echo old > /workspace/old.txt")).meta["container"]["id"]
    link, mnt = manager.volumes.paths(cid)
    token_image = link.parent / os.readlink(link)
    manager.stop(cid)
    subprocess.run(["umount", str(mnt)], check=True)
    link.unlink()
    token_image.rename(link)  # the old layout: the image itself under the container's id
    async with mcp_client("memory", settings) as client:
        again = await bash(client, "cat /workspace/old.txt", container_id=cid)
        assert again.structured_content["stdout"] == "old\n"
    manager.remove(cid)
    assert not link.exists() and not mnt.exists() and not list(link.parent.glob("ws_*.img"))
