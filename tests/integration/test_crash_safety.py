"""Crash safety (ADVERSARIAL.md 23-25): the server SIGKILLed mid-command, the Docker engine
restarted, a container killed or removed behind the server's back. Each ends with a clear answer
in bounded time, no file lost and no duplicate container.

Documented outcomes:
- server SIGKILLed: the client's pending call fails (the stdio stream closes); the command in the
  sandbox runs on under the agent's own time limit; a new server reattaches by ``container_id``.
- engine restart (``live-restore`` on): calls while it is down answer ``unavailable`` within
  seconds; afterwards the same container (kept running by live-restore) answers, files intact.
- container killed or stopped: the call on the dead stream gets ``unavailable``; the next call
  starts the same container again, workspace intact.
- container removed (``docker rm -f``, or ``docker container prune`` taking an idle-stopped one):
  the next call rebuilds it around its surviving workspace — same id, same files, same owner and
  expiry. Only when the workspace is gone too does a session continue in a fresh container and
  naming the id answer ``unavailable`` (``container_expired``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import anyio
import docker
import psutil
import pytest

from mcp_codeexec.engines.docker import L_INSTALL, NAME_PREFIX, SandboxManager, connect, installation_label
from tests.conftest import IN_CI
from tests.integration.conftest import make_settings
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import mcp_client, remove_installation

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]


async def bash(client, command: str, **extra):
    result = await client.call_tool("bash_code_execution", {"command": command, **extra})
    assert_hosted_shape(result.structured_content, "bash_code_execution")
    return result


def our_containers(settings) -> list:
    return docker.from_env().containers.list(ignore_removed=True, all=True, filters={"label": f"{L_INSTALL}={installation_label(settings.data_dir)}"})


def stdio_server_pids() -> set[int]:
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if "mcp_codeexec" in cmdline and "serve" in cmdline:
            found.add(child.pid)
    return found


# --- 23. the server SIGKILLed in the middle of a command ------------------------------------------------


async def test_server_sigkilled_mid_command_then_a_new_server_finds_the_container(tmp_path, docker_engine: None) -> None:
    settings = make_settings(tmp_path, call_timeout=6.0)
    try:
        before = stdio_server_pids()
        async with mcp_client("stdio", settings) as client:
            first = await bash(client, "echo data > /workspace/f.txt; echo ok")
            cid = first.meta["container"]["id"]
            (server_pid,) = stdio_server_pids() - before
            outcome: dict[str, object] = {}

            async def long_call() -> None:
                try:
                    result = await bash(client, "sleep 3; echo late > /workspace/late.txt; sleep 100")
                    outcome["result"] = result
                except Exception as exc:  # noqa: BLE001 - any error is the expected outcome
                    outcome["error"] = exc

            started = time.monotonic()
            with anyio.fail_after(30):  # the client must not hang
                async with anyio.create_task_group() as tg:
                    tg.start_soon(long_call)
                    await anyio.sleep(1.0)
                    os.kill(server_pid, signal.SIGKILL)
            assert time.monotonic() - started < 15
            if "result" in outcome:  # some SDK versions answer the pending request with an error result
                assert outcome["result"].is_error
            else:
                assert "error" in outcome
        # A new server finds the same container and its files; nothing was duplicated.
        async with mcp_client("stdio", settings) as client:
            with anyio.fail_after(60):
                again = await bash(client, "cat /workspace/f.txt; cat /workspace/late.txt; ps -eo comm= | grep -c sleep || true",
                                   container_id=cid)
            # The orphaned command ran on under the agent's own time limit (T = 6 s): it wrote
            # late.txt at 3 s and was killed at 6 s; this call waited for it in the agent's queue.
            assert again.structured_content["stdout"] == "data\nlate\n0\n", again.structured_content
            assert again.meta["container"]["id"] == cid
            assert len(our_containers(settings)) == 1
    finally:
        remove_installation(settings)


# --- 25. the container killed, stopped or removed behind the server's back --------------------------------


@pytest.mark.parametrize("how", ["kill", "stop", "kill-agent-from-the-host"])
async def test_a_container_killed_behind_the_servers_back_is_started_again_with_its_files(settings, how: str) -> None:
    async with mcp_client("memory", settings) as client:
        first = await bash(client, "echo kept > /workspace/k.txt")
        cid = first.meta["container"]["id"]
        container = docker.from_env().containers.get(NAME_PREFIX + cid)
        if how == "kill":
            container.kill()
        elif how == "stop":
            container.stop(timeout=1)
        else:
            os.kill(container.attrs["State"]["Pid"], signal.SIGKILL)  # PID 1 (runc) / the sandbox (runsc)
        started = time.monotonic()
        with anyio.fail_after(60):
            result = await bash(client, "cat /workspace/k.txt")
            if result.is_error:  # the call that meets the dead stream
                assert result.structured_content["error_code"] == "unavailable"
                assert cid in result.content[0].text
                result = await bash(client, "cat /workspace/k.txt")
        assert result.structured_content["stdout"] == "kept\n"
        assert result.meta["container"]["id"] == cid
        assert time.monotonic() - started < 30
        assert len(our_containers(settings)) == 1


async def test_a_container_killed_during_a_call_ends_that_call_at_once(settings) -> None:
    async with mcp_client("memory", settings) as client:
        first = await bash(client, "echo kept > /workspace/k.txt")
        cid = first.meta["container"]["id"]
        container = docker.from_env().containers.get(NAME_PREFIX + cid)
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: anyio.to_thread.run_sync(lambda: (time.sleep(1), container.kill())))
            with anyio.fail_after(20):
                inflight = await bash(client, "sleep 15")
        assert inflight.structured_content == {"type": "bash_code_execution_tool_result_error", "error_code": "unavailable"}
        assert time.monotonic() - started < 10, "the call waited for its deadline instead of noticing the dead container"
        again = await bash(client, "cat /workspace/k.txt")
        assert again.structured_content["stdout"] == "kept\n" and again.meta["container"]["id"] == cid


@pytest.mark.parametrize("quota", ["auto", "none"], ids=["loop-image", "docker-volume"])
async def test_a_container_removed_behind_the_servers_back_is_rebuilt_with_its_files(tmp_path, docker_engine, quota: str) -> None:
    settings = make_settings(tmp_path, quota=quota)
    try:
        await _removed_and_rebuilt(settings)
    finally:
        remove_installation(settings)


async def _removed_and_rebuilt(settings) -> None:
    async with mcp_client("memory", settings) as client:
        first = await bash(client, "echo kept > /workspace/g.txt; cd /workspace && export MARK=1")
        cid = first.meta["container"]["id"]
        docker.from_env().containers.get(NAME_PREFIX + cid).remove(force=True)
        with anyio.fail_after(60):
            result = await bash(client, "cat /workspace/g.txt")
            if result.is_error:  # the call that met the dead stream
                assert result.structured_content["error_code"] == "unavailable"
                result = await bash(client, "cat /workspace/g.txt")
        assert result.structured_content["stdout"] == "kept\n" and result.meta["container"]["id"] == cid
        assert result.meta["container"]["expires_at"] == first.meta["container"]["expires_at"]
        assert len(our_containers(settings)) == 1
        # A reap in between keeps a rebuildable workspace (its sandbox is handed out and unexpired).
        manager = SandboxManager(settings, connect())
        docker.from_env().containers.get(NAME_PREFIX + cid).remove(force=True)
        manager.orphan_grace = 0.0  # only its unexpired owner record may keep the workspace
        assert cid not in manager.reap()
        named = await bash(client, "cat /workspace/g.txt", container_id=cid)
        if named.is_error:
            named = await bash(client, "cat /workspace/g.txt", container_id=cid)
        assert named.structured_content["stdout"] == "kept\n" and named.meta["container"]["id"] == cid


async def test_idle_stopped_containers_survive_docker_container_prune(settings) -> None:
    """`docker container prune` removes every stopped container, so it takes sandboxes stopped for
    idleness; their workspaces, and so the user's files, must survive it."""
    async with mcp_client("memory", settings) as client:
        first = await bash(client, "echo precious > /workspace/p.txt")
        cid = first.meta["container"]["id"]
        engine = docker.from_env()
        engine.containers.get(NAME_PREFIX + cid).stop(timeout=2)  # what the idle stop does
        engine.containers.prune(filters={"label": f"{L_INSTALL}={installation_label(settings.data_dir)}"})
        with anyio.fail_after(60):
            result = await bash(client, "cat /workspace/p.txt")
            if result.is_error:
                assert result.structured_content["error_code"] == "unavailable"
                result = await bash(client, "cat /workspace/p.txt")
        assert result.structured_content["stdout"] == "precious\n" and result.meta["container"]["id"] == cid


async def test_a_removed_container_whose_workspace_is_gone_too_continues_in_a_fresh_one(settings) -> None:
    async with mcp_client("memory", settings) as client:
        first = await bash(client, "echo gone > /workspace/g.txt")
        cid = first.meta["container"]["id"]
        manager = SandboxManager(settings, connect())
        docker.from_env().containers.get(NAME_PREFIX + cid).remove(force=True)
        await anyio.to_thread.run_sync(manager.remove, cid)  # the workspace and record go as well
        with anyio.fail_after(60):
            result = await bash(client, "find /workspace -maxdepth 1")  # (not `ls PATH`: old runsc rejects its statx)
            if result.is_error:
                assert result.structured_content["error_code"] == "unavailable"
                result = await bash(client, "find /workspace -maxdepth 1")
            assert result.meta["container"]["id"] != cid
            assert "g.txt" not in result.structured_content["stdout"]
            named = await bash(client, "true", container_id=cid)
        assert named.structured_content == {"type": "bash_code_execution_tool_result_error", "error_code": "unavailable"}
        assert "container_expired" in named.content[0].text
        assert len(our_containers(settings)) == 1


# --- 24. the Docker engine restarted ------------------------------------------------------------------------


def engine_up() -> bool:
    return subprocess.run(["docker", "info"], check=False, capture_output=True, timeout=20).returncode == 0


def ensure_engine() -> None:
    """Start the engine again if it is down (run in `finally`: never leave the machine without it)."""
    for _ in range(3):
        if engine_up():
            return
        subprocess.run(["bash", str(REPO / ".ci" / "start-docker.sh")], check=False, capture_output=True, timeout=180)
    assert engine_up(), "could not restart the Docker engine"


def start_watchdog(after: float = 90.0) -> subprocess.Popen:
    """A detached process that starts the engine again in ``after`` seconds if it is still down:
    the machine gets its engine back even if this test process is killed mid-test."""
    script = f"sleep {after}; docker info >/dev/null 2>&1 || bash {REPO / '.ci' / 'start-docker.sh'} >/dev/null 2>&1"
    return subprocess.Popen(["bash", "-c", script], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_engine() -> None:
    pids = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "dockerd"]
    assert pids, "no dockerd process to restart (the engine is not a local dockerd)"
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while any(psutil.pid_exists(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)


RESTART_OPT_IN = "MCP_CODEEXEC_TEST_ENGINE_RESTART"


@pytest.mark.skipif(not Path("/var/run/docker.sock").exists(), reason="needs a local dockerd it may restart")
@pytest.mark.skipif(
    not (IN_CI or os.environ.get(RESTART_OPT_IN) == "1"),
    reason=f"restarts this machine's Docker engine under every other user of it: runs in CI (CI=true) or with {RESTART_OPT_IN}=1",
)
async def test_engine_restart_gives_unavailable_then_recovers_with_the_same_container(tmp_path, docker_engine: None) -> None:
    """Restarts the Docker engine of this machine (live-restore keeps containers running): the one
    test that does, and it restarts the engine even when it fails (in ``finally``, and through a
    detached watchdog should this process die)."""
    live_restore = docker.from_env().info().get("LiveRestoreEnabled")
    settings = make_settings(tmp_path, call_timeout=10.0)
    try:
        async with mcp_client("memory", settings) as client:
            first = await bash(client, "echo survives > /workspace/s.txt")
            cid = first.meta["container"]["id"]
            watchdog = start_watchdog()
            try:
                await anyio.to_thread.run_sync(stop_engine)
                for _ in range(2):  # the call on the old stream, then one that finds no engine
                    started = time.monotonic()
                    with anyio.fail_after(30):
                        down = await bash(client, "cat /workspace/s.txt")
                    assert down.structured_content == {"type": "bash_code_execution_tool_result_error", "error_code": "unavailable"}
                    assert time.monotonic() - started < 15
            finally:
                await anyio.to_thread.run_sync(ensure_engine)
                os.killpg(watchdog.pid, signal.SIGKILL)
                watchdog.wait()
            with anyio.fail_after(90):
                while True:
                    after = await bash(client, "cat /workspace/s.txt")
                    if not after.is_error:
                        break
                    await anyio.sleep(1)
            assert after.structured_content["stdout"] == "survives\n"
            if live_restore:
                assert after.meta["container"]["id"] == cid
            assert len(our_containers(settings)) == 1
    finally:
        ensure_engine()
        remove_installation(settings)
