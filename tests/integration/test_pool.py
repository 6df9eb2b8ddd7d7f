"""The warm pool against real sandboxes: each pool container goes to exactly one session, the pool
refills in the background, dead pool containers are never handed out, a killed server's unassigned
pool containers remove themselves, and a handed-out one is never taken for a pool leftover."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import docker
import docker.errors
import pytest

from mcp_codeexec.backends.base import CallContext
from mcp_codeexec.backends.sandbox import SandboxBackend
from mcp_codeexec.config import Settings
from mcp_codeexec.engines.docker import L_ID, L_INSTALL, L_POOL, SandboxManager, connect, installation_label
from mcp_codeexec.files import FileStore
from mcp_codeexec.schemas import BashInput
from tests.integration.conftest import make_settings
from tests.support.servers import mcp_client, server_env

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def backend(settings: Settings, pool_size: int, **pool: object) -> AsyncIterator[SandboxBackend]:
    """A backend whose pool stays at ``pool_size`` unless ``pool`` (pool_max, ...) says otherwise."""
    s = settings.model_copy(update={"pool_size": pool_size, "pool_max": pool_size, **pool})
    async with SandboxBackend(s, FileStore(s.files_dir, 30)) as b:
        yield b


async def until(condition, timeout: float = 60) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.05)


def ctx(n: int) -> CallContext:
    return CallContext(principal="local", session_key=f"session-{n}")


def first_started(settings: Settings, cid: str) -> str:
    """When the container of ``cid`` was (last) started: a rebuilt or restarted one has a later time."""
    client = docker.from_env()
    try:
        return client.containers.get(f"mcp-codeexec-{cid}").attrs["State"]["StartedAt"]
    finally:
        client.close()


def pool_containers(settings: Settings, *, all_: bool = False) -> list[str]:
    """Containers born in the pool (running ones; ``all_``: stopped ones too)."""
    client = docker.from_env()
    try:
        labels = [f"{L_INSTALL}={installation_label(settings.data_dir)}", f"{L_POOL}=1"]
        return [c.labels[L_ID] for c in client.containers.list(ignore_removed=True, all=all_, filters={"label": labels})]
    finally:
        client.close()


async def test_each_pool_container_goes_to_exactly_one_session_and_the_pool_refills(settings):
    async with backend(settings, pool_size=2) as b:
        await until(lambda: len(b._pool) == 2)
        pooled = {s.record.id for s in b._pool}

        taken = {}

        async def take(n: int) -> None:
            taken[n] = (await b.sandbox_for(ctx(n), None)).record.id

        async with anyio.create_task_group() as tg:
            for n in range(5):
                tg.start_soon(take, n)

        ids = list(taken.values())
        assert len(set(ids)) == 5  # no container went to two sessions
        assert pooled <= set(ids)  # both warm containers were handed out, each once
        await until(lambda: len(b._pool) == 2)  # refilled in the background
        assert not {s.record.id for s in b._pool} & set(ids)
        for n, cid in taken.items():
            assert (await b.sandbox_for(ctx(n), None)).record.id == cid  # a session keeps its container


async def test_a_dead_pool_container_is_not_handed_out_and_is_removed(settings):
    async with backend(settings, pool_size=1) as b:
        await until(lambda: len(b._pool) == 1)
        dead = b._pool[0]
        client = docker.from_env()
        try:
            client.containers.get(dead.record.ref).kill()
            await until(lambda: dead.conn.closed.is_set())
            sandbox = await b.sandbox_for(ctx(1), None)
            assert sandbox.record.id != dead.record.id

            def removed() -> bool:
                try:
                    client.containers.get(dead.record.ref)
                except docker.errors.NotFound:
                    return True
                return False

            await until(removed)
        finally:
            client.close()


async def test_a_session_arriving_while_the_pool_fills_takes_the_container_being_started(settings):
    async with backend(settings, pool_size=1) as b:
        sandbox = await b.sandbox_for(ctx(1), None)  # the pool is still being filled at this point
        assert sandbox.record.id in pool_containers(settings)  # born in the pool
        assert not sandbox.record.pool and sandbox.record.owner == "local"  # and handed out
        await until(lambda: len(b._pool) == 1)
        assert b._pool[0].record.id != sandbox.record.id


async def test_a_pool_start_that_fails_is_retried_later_and_sessions_still_get_containers(settings, monkeypatch):
    create = SandboxManager.create

    def full_disk_for_the_pool(self, owner, *, pool=False, **kwargs):
        if pool:
            raise OSError(28, "No space left on device")
        return create(self, owner, pool=pool, **kwargs)

    monkeypatch.setattr(SandboxManager, "create", full_disk_for_the_pool)
    async with backend(settings, pool_size=1) as b:
        sandbox = await b.sandbox_for(ctx(1), None)
        assert not sandbox.record.pool
        assert (await b.bash(BashInput(command="echo ok"), ctx(1))).block.stdout == "ok\n"


async def test_a_killed_servers_pool_container_is_gone_within_90_s_without_another_server(settings, tmp_path: Path):
    s = settings.model_copy(update={"pool_size": 1})
    log = tmp_path / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_codeexec", "serve"], env=server_env(s, MCP_CODEEXEC_LOG_LEVEL="INFO"),
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
        )
    try:
        await until(lambda: "pool: 1/1 warm containers ready" in log.read_text(), timeout=120)
        assert len(pool_containers(s, all_=True)) == 1
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = time.monotonic()
    # No server starts (no reaper runs): the sandbox side notices its server is gone.
    await until(lambda: pool_containers(s, all_=True) == [], timeout=90)
    print(f"pool container gone {time.monotonic() - killed:.1f} s after kill -9")
    SandboxManager(s, connect()).remove_installation()


async def test_a_claimed_pool_container_survives_the_next_servers_reap_with_its_files_and_variables(settings, tmp_path):
    s = settings.model_copy(update={"pool_size": 1})
    async with mcp_client("stdio", s) as a:  # server A: its session takes the warm container
        first = await a.call_tool("bash_code_execution", {"command": "echo kept > /workspace/f.txt; export KEEP=yes"})
        cid = first.meta["container"]["id"]
        assert cid in pool_containers(s)  # it was born in the pool
        started = first_started(s, cid)
    # A has exited. A server of another data directory (whose owner records say nothing of it)
    # reaps, and so does server B of A's own: both must see a handed-out sandbox, not a pool leftover.
    other = make_settings(tmp_path / "other")
    assert await anyio.to_thread.run_sync(SandboxManager(other, connect()).reap) == []
    async with backend(settings, pool_size=0) as b:
        with anyio.fail_after(60):
            await b.first_reap_done.wait()  # B's start-up reap runs beside its sessions
        assert cid in pool_containers(s)  # still running: not reaped
        record, container = await anyio.to_thread.run_sync(b._manager.find, cid)
        assert not record.pool and record.owner == "local"
        assert container.attrs["State"]["StartedAt"] == started  # the same container, never restarted
        out = await b.bash(BashInput(command="cat /workspace/f.txt; echo $KEEP", container_id=cid), ctx(9))
        assert out.block.stdout == "kept\nyes\n"


@pytest.mark.parametrize("pool", [False, True], ids=["session-create", "pool-refill"])
async def test_a_create_whose_caller_gave_up_or_whose_server_closed_leaves_nothing(settings, pool, monkeypatch):
    """The create runs on in its worker thread after the await was cancelled: it must remove what it made."""
    run = SandboxManager._run

    def slow_run(self, *args, **kwargs):  # the container starts after the caller gave up, however fast the machine
        time.sleep(1.0)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(SandboxManager, "_run", slow_run)
    async with backend(settings, pool_size=1 if pool else 0) as b:
        if not pool:
            with anyio.move_on_after(0.3):  # mid-create: workspace made, container starting
                await b.sandbox_for(ctx(1), None)
    # The server closed (a refill may have been mid-create): its drain waited for the create threads.
    client = docker.from_env()
    try:
        labels = [f"{L_INSTALL}={installation_label(settings.data_dir)}"]
        await anyio.sleep(5)  # time for a create thread still running to finish (the drain should have waited)
        assert client.containers.list(ignore_removed=True, all=True, filters={"label": labels}) == []
    finally:
        client.close()
    assert not list(settings.volumes_dir.glob("*.img")) if settings.volumes_dir.exists() else True


def running_containers(settings: Settings) -> int:
    client = docker.from_env()
    try:
        return len(client.containers.list(ignore_removed=True, filters={"label": f"{L_INSTALL}={installation_label(settings.data_dir)}"}))
    finally:
        client.close()


async def test_the_pool_grows_after_a_burst_of_sessions_and_shrinks_back_when_idle(settings):
    async with backend(settings, pool_size=1, pool_max=3, pool_shrink_seconds=6) as b:
        await until(lambda: len(b._pool) == 1)
        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(b.sandbox_for, ctx(n), None)
        assert b.pool_target() == 3
        await until(lambda: len(b._pool) == 3)  # the next burst of 3 finds them warm
        await until(lambda: b.pool_target() == 1 and len(b._pool) == 1, timeout=30)  # idle: back to pool_size
        await until(lambda: running_containers(settings) == 3 + 1)  # the extra ones are removed, not leaked
        for n in range(3):  # the sessions kept theirs
            assert not (await b.sandbox_for(ctx(n), None)).conn.closed.is_set()


async def test_pool_containers_start_in_parallel_up_to_the_concurrency_setting(settings):
    async with backend(settings, pool_size=3, create_concurrency=3) as b:
        await until(lambda: b._pool_fills == 3, timeout=5)
        await until(lambda: len(b._pool) == 3)


async def test_a_burst_grows_the_pool_no_further_than_free_memory_allows(settings, monkeypatch):
    monkeypatch.setattr("mcp_codeexec.backends.sandbox.pool_memory_cap", lambda: 2)
    async with backend(settings, pool_size=1, pool_max=8) as b:
        for n in range(5):
            b._note_demand()
        assert b.pool_target() == 2
