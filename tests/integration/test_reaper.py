"""The reaper: it removes this project's expired sandboxes, their workspaces (loop images and
mounts, or Docker volumes) and pool leftovers of dead servers, at start-up and periodically, and
never touches anything else on the engine. 50 create/kill cycles leave zero orphans.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import docker
import psutil
import pytest

from mcp_codeexec.engines.docker import (
    L_CREATED,
    L_EXPIRES,
    L_ID,
    L_INSTALL,
    L_MANAGED,
    L_POOL,
    L_SERVER,
    NAME_PREFIX,
    SandboxManager,
    connect,
    installation_label,
    new_container_id,
)
from tests.integration.conftest import make_settings
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import mcp_client, remove_installation, server_env

pytestmark = pytest.mark.anyio


def image_of(settings) -> str:
    manager = SandboxManager(settings, connect())
    return manager.resolve_image()


@pytest.fixture
def foreign(settings) -> Iterator[dict[str, docker.models.containers.Container]]:
    """Containers that are not ours: unlabelled, look-alike labels, malformed labels, our name
    prefix without labels, and another installation's live and recently expired sandboxes. All must
    survive every reap."""
    client = docker.from_env()
    image = image_of(settings)
    tag = secrets.token_hex(4)
    past = f"{time.time() - 3600:.3f}"
    specs = {
        "unlabelled": {},
        "lookalike-keys": {"io.mcp-codeexec.managed.x": "1", "io.mcp-codeexec": "managed", L_EXPIRES + "x": past},
        "managed-not-1": {L_MANAGED: "true", L_ID: new_container_id(), L_CREATED: past, L_EXPIRES: past},
        "no-id": {L_MANAGED: "1", L_CREATED: past, L_EXPIRES: past},
        "malformed-times": {L_MANAGED: "1", L_ID: new_container_id(), L_CREATED: "yesterday", L_EXPIRES: "soon"},
        "other-installation-live": {L_MANAGED: "1", L_ID: new_container_id(), L_CREATED: past,
                                    L_EXPIRES: f"{time.time() + 3600:.3f}", L_INSTALL: "someone-else"},
        # Expired an hour ago: reaping it is that installation's job (its server may be about to).
        "other-installation-expired": {L_MANAGED: "1", L_ID: new_container_id(), L_CREATED: f"{time.time() - 7200:.3f}",
                                       L_EXPIRES: past, L_INSTALL: "someone-else"},
    }
    made = {}
    try:
        for name, labels in specs.items():
            made[name] = client.containers.run(
                image, entrypoint=["sleep", "600"], name=f"adv-foreign-{name}-{tag}", labels=labels, detach=True,
                network_mode="none", user="1000:1000",
            )
        lookalike_name = NAME_PREFIX + new_container_id()  # our naming scheme, none of our labels
        made["our-name-no-labels"] = client.containers.run(
            image, entrypoint=["sleep", "600"], name=lookalike_name, detach=True, network_mode="none", user="1000:1000"
        )
        yield made
    finally:
        for container in made.values():
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass


def assert_all_alive(foreign: dict) -> None:
    for name, container in foreign.items():
        container.reload()
        assert container.status == "running", f"the reaper touched a foreign container ({name})"


async def test_reap_removes_only_our_expired_sandboxes_and_their_workspaces(tmp_path, docker_engine, foreign) -> None:
    settings = make_settings(tmp_path, container_ttl_seconds=2.0)
    manager = SandboxManager(settings, connect())
    manager.resolve_image()
    try:
        expired, _ = manager.create("local")
        fresh_settings = make_settings(tmp_path, container_ttl_seconds=3600.0)
        fresh_manager = SandboxManager(fresh_settings, connect())
        fresh_manager.resolve_image()
        fresh, _ = fresh_manager.create("local")
        await anyio.sleep(2.5)
        removed = manager.reap()
        assert expired.id in removed and fresh.id not in removed
        client = docker.from_env()
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(NAME_PREFIX + expired.id)
        assert client.containers.get(NAME_PREFIX + fresh.id).status == "running"
        image, mnt = manager.volumes.paths(expired.id)
        assert not image.exists() and not os.path.ismount(mnt)
        assert not client.volumes.list(filters={"label": f"{L_ID}={expired.id}"})
        assert_all_alive(foreign)
        # The listing and the CLI survive the malformed look-alike too.
        assert all(record.id != foreign["malformed-times"].labels[L_ID] for record, _ in manager.list())
    finally:
        remove_installation(settings)
    assert_all_alive(foreign)


def test_another_installations_sandbox_is_reaped_only_a_day_after_it_expired(tmp_path, docker_engine) -> None:
    """A data directory that was deleted leaves sandboxes no server of its own will reap: any
    installation removes them once they are a day past their expiry, not before."""
    settings = make_settings(tmp_path)
    manager = SandboxManager(settings, connect())
    image = manager.resolve_image()
    client = docker.from_env()
    now = time.time()
    made = {}
    try:
        for name, expired_for in (("day-and-more", 86400 + 600), ("hours", 3 * 3600)):
            cid = new_container_id()
            made[name] = (cid, client.containers.run(
                image, entrypoint=["sleep", "600"], name=NAME_PREFIX + cid, detach=True, network_mode="none",
                user="1000:1000", labels={L_MANAGED: "1", L_ID: cid, L_CREATED: f"{now - 40 * 86400:.3f}",
                                          L_EXPIRES: f"{now - expired_for:.3f}", L_INSTALL: "a-deleted-data-dir"},
            ))
        removed = manager.reap()
        assert made["day-and-more"][0] in removed and made["hours"][0] not in removed
        with pytest.raises(docker.errors.NotFound):
            made["day-and-more"][1].reload()
        made["hours"][1].reload()
        assert made["hours"][1].status == "running"
    finally:
        for _, container in made.values():
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        remove_installation(settings)


async def gone_soon(client: docker.DockerClient, name: str, timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while True:
            try:
                await anyio.to_thread.run_sync(client.containers.get, name)
            except docker.errors.NotFound:
                return
            await anyio.sleep(0.2)


async def test_the_server_reaps_at_start_up_and_then_periodically(tmp_path, docker_engine, foreign) -> None:
    settings = make_settings(tmp_path, container_ttl_seconds=3.0, reap_interval_seconds=1.0)
    manager = SandboxManager(settings, connect())
    manager.resolve_image()
    client = docker.from_env()
    try:
        leftover, _ = manager.create("local")
        await anyio.sleep(3.5)
        # Start-up: the expired sandbox goes without any call (the start-up reap runs beside the
        # session, so initialize does not wait for it).
        async with mcp_client("memory", settings) as mcp:
            await gone_soon(client, NAME_PREFIX + leftover.id)
            first = await mcp.call_tool("bash_code_execution", {"command": "echo hi > /workspace/h.txt"})
            assert_hosted_shape(first.structured_content, "bash_code_execution")
            cid = first.meta["container"]["id"]
            # Periodically: once it expires (3 s), the reaper (every 1 s) removes it while serving:
            # the container first, then (a moment later, in the same pass) its workspace.
            image, mnt = manager.volumes.paths(cid)

            def container_gone() -> bool:
                try:
                    client.containers.get(NAME_PREFIX + cid)
                except docker.errors.NotFound:
                    return True
                return False

            with anyio.fail_after(20):
                while not (container_gone() and not image.exists() and not os.path.ismount(mnt)):
                    await anyio.sleep(0.3)
            named = await mcp.call_tool("bash_code_execution", {"command": "true", "container_id": cid})
            assert named.structured_content["error_code"] == "unavailable" and "container_expired" in named.content[0].text
        assert_all_alive(foreign)
    finally:
        remove_installation(settings)


async def test_pool_leftovers_of_a_dead_server_are_reaped(tmp_path, docker_engine, foreign) -> None:
    settings = make_settings(tmp_path, pool_size=1)
    client = docker.from_env()
    install = installation_label(settings.data_dir)
    env = server_env(settings, MCP_CODEEXEC_POOL_SIZE="1")
    proc = await anyio.to_thread.run_sync(lambda: subprocess.Popen(
        [sys.executable, "-m", "mcp_codeexec", "serve"], env=env, stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ))
    try:
        with anyio.fail_after(60):
            while not client.containers.list(ignore_removed=True, filters={"label": [f"{L_INSTALL}={install}", f"{L_POOL}=1"]}):
                await anyio.sleep(0.3)
        (pooled,) = client.containers.list(ignore_removed=True, filters={"label": [f"{L_INSTALL}={install}", f"{L_POOL}=1"]})
        assert pooled.labels[L_SERVER].split(":")[1] == str(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # Its pool container is nobody's now: the next server's start-up reap removes it.
        async with mcp_client("memory", make_settings(tmp_path, pool_size=0)) as mcp:
            await mcp.list_tools()
            await gone_soon(client, pooled.id)
            with anyio.fail_after(30):  # its workspace goes in the same reap, a moment later
                while list(settings.volumes_dir.glob(f"{pooled.labels[L_ID]}.*")):
                    await anyio.sleep(0.2)
        assert_all_alive(foreign)
    finally:
        if proc.poll() is None:
            proc.kill()
        remove_installation(settings)


def mounts_under(path: Path) -> list[str]:
    root = str(path.resolve())
    return [p.mountpoint for p in psutil.disk_partitions(all=True) if p.mountpoint.startswith(root)]


def loops_backed_by(path: Path) -> list[str]:
    out = subprocess.run(["losetup", "-a"], check=False, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(path.resolve()) in line]


@pytest.mark.parametrize("quota", ["auto", "none"], ids=["loop-images", "docker-volumes"])
async def test_fifty_create_kill_cycles_leave_no_orphans(tmp_path, docker_engine, quota: str) -> None:
    """Each cycle creates a sandbox and kills it a different way (docker kill, removal behind the
    server's back, a server-side remove, a create interrupted after the workspace was made, or an
    expiry); then the reaper runs. Nothing may be left: no container, no loop image, mount or loop
    device in the data dir, no Docker volume."""
    settings = make_settings(tmp_path, container_ttl_seconds=1.0, disk_bytes=256 * 1024**2, quota=quota)
    manager = SandboxManager(settings, connect())
    manager.resolve_image()
    client = docker.from_env()
    created = []
    try:
        for i in range(50):
            way = i % 5
            if way == 3:  # interrupted create: the workspace exists, the container never did
                cid = new_container_id()
                manager.volumes.create(cid, settings.disk_bytes)
                created.append(cid)
                continue
            record, container = manager.create("local")
            created.append(record.id)
            if way == 0:
                container.kill()
            elif way == 1:
                container.remove(force=True)  # behind the server's back: its workspace is orphaned
            elif way == 2:
                manager.remove(record.id)
            # way 4: left running until it expires
        # Time passes: every sandbox expires and every orphaned workspace ages past the guard.
        # (Back-dating the files would not do: a still-mounted image's journal moves its mtime.)
        manager.orphan_grace = 0.0
        await anyio.sleep(1.2)
        manager.reap()
        install = installation_label(settings.data_dir)
        assert client.containers.list(ignore_removed=True, all=True, filters={"label": f"{L_INSTALL}={install}"}) == []
        assert not settings.volumes_dir.exists() or [p.name for p in settings.volumes_dir.iterdir()] == []
        assert mounts_under(settings.data_dir) == []
        assert loops_backed_by(settings.data_dir) == []
        assert [v.name for v in client.volumes.list() if any(cid in v.name for cid in created)] == []
        assert client.volumes.list(filters={"label": f"{L_MANAGED}=1"}) == [] or all(
            v.attrs.get("Labels", {}).get(L_ID) not in created for v in client.volumes.list(filters={"label": f"{L_MANAGED}=1"})
        )
        assert list((settings.data_dir / "owners").glob("*.json")) == []
    finally:
        remove_installation(settings)
