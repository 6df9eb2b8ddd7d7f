"""Idle checkpoints with memory under gVisor (issue 12 item 5): an idle runsc sandbox whose Python
interpreter holds state is checkpointed and stopped; its next call (bash, editor or code) restores
it with the interpreter's variables; a restore that fails starts it afresh, files intact, and says
so. These tests force runsc whatever MCP_CODEEXEC_RUNTIME says (so they run in both CI passes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import docker
import pytest

from mcp_codeexec.checkpoint import DOCKER_CONTAINERS, Checkpointer, runsc_root
from mcp_codeexec.engines.docker import NAME_PREFIX
from tests.conftest import IN_CI
from tests.integration.conftest import make_settings
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import mcp_client, remove_installation, server_env

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkpoint_settings(tmp_path, docker_engine):
    client = docker.from_env()
    info = client.info()
    problems = []
    if "runsc" not in (info.get("Runtimes") or {}):
        problems.append("the Docker engine has no runsc runtime")
    if not info.get("ExperimentalBuild"):
        problems.append("the engine runs without experimental features (.ci/start-docker.sh turns them on)")
    if runsc_root() is None:
        problems.append("this test cannot write runsc's state directory (run as root on the engine host)")
    if problems:
        if IN_CI:
            pytest.fail("CI checkpoints runsc sandboxes: " + "; ".join(problems))
        pytest.skip("; ".join(problems))
    settings = make_settings(tmp_path, runtime="runsc", idle_stop_seconds=1.0, reap_interval_seconds=0.3)
    yield settings
    remove_installation(settings)


async def call(client, tool: str, **arguments):
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.structured_content
    assert_hosted_shape(result.structured_content, tool)
    return result


def checkpoints(cid: str) -> list[str]:
    client = docker.from_env()
    return Checkpointer(client, enabled=False).names(client.containers.get(NAME_PREFIX + cid).id)


async def checkpointed(cid: str) -> list[str]:
    """Wait for the reaper to checkpoint the idle sandbox; its checkpoint names."""
    container = docker.from_env().containers.get(NAME_PREFIX + cid)
    with anyio.fail_after(60):
        while True:
            container.reload()
            names = checkpoints(cid)
            if container.status == "exited" and names:
                return names
            assert container.status in ("running", "paused"), container.status  # never stopped without one
            await anyio.sleep(0.2)


async def test_an_idle_runsc_sandbox_comes_back_from_its_checkpoint_with_its_variables_each_time(checkpoint_settings):
    async with mcp_client("memory", checkpoint_settings) as client:
        first = await call(client, "code_execution", code="x = 41\nimport json\ndef twice(v):\n    return 2 * v\n"
                                                            "open('/workspace/kept.txt', 'w').write('files too')")
        cid = first.meta["container"]["id"]
        # 1: bash wakes it; the interpreter was not restarted (no stderr line), the file is there.
        await checkpointed(cid)
        listed = await anyio.run_process([sys.executable, "-m", "mcp_codeexec", "containers", "ls", "--json"],
                                         env=server_env(checkpoint_settings))
        [row] = [r for r in json.loads(listed.stdout) if r["id"] == cid]
        assert row["status"] == "exited" and row["checkpointed"] is True
        woke = await call(client, "bash_code_execution", command="cat /workspace/kept.txt")
        assert woke.structured_content["stdout"] == "files too" and woke.meta["container"]["id"] == cid
        again = await call(client, "code_execution", code="x += 1\nprint(x, twice(x), json.dumps([x]))")
        assert again.structured_content["stdout"] == "42 84 [42]\n" and again.structured_content["stderr"] == ""
        assert checkpoints(cid) == []  # a used checkpoint is deleted
        # 2: a restored sandbox is checkpointed again (runsc 2022 needs the repair); the editor wakes it.
        await checkpointed(cid)
        viewed = await call(client, "text_editor_code_execution", command="view", path="/workspace/kept.txt")
        assert "files too" in viewed.structured_content["content"]
        assert (await call(client, "code_execution", code="print(x)")).structured_content["stdout"] == "42\n"
        # 3: and a cell wakes it directly.
        await checkpointed(cid)
        third = await call(client, "code_execution", code="x += 1\nprint(x)")
        assert third.structured_content["stdout"] == "43\n" and third.structured_content["stderr"] == ""


async def test_a_checkpoint_that_fails_to_restore_starts_the_sandbox_afresh_with_its_files_and_says_so(checkpoint_settings):
    async with mcp_client("memory", checkpoint_settings) as client:
        first = await call(client, "code_execution", code="x = 1\nopen('/workspace/kept.txt', 'w').write('kept')")
        cid = first.meta["container"]["id"]
        [name] = await checkpointed(cid)
        container_id = docker.from_env().containers.get(NAME_PREFIX + cid).id
        image = DOCKER_CONTAINERS / container_id / "checkpoints" / name / "checkpoint.img"
        assert image.is_file() and image.stat().st_size > 0
        image.write_bytes(os.urandom(4096))  # a corrupt checkpoint: runsc cannot restore it
        after = await call(client, "code_execution", code="print('x' in globals(), open('/workspace/kept.txt').read())")
        sc = after.structured_content
        assert sc["stdout"] == "False kept\n" and after.meta["container"]["id"] == cid
        assert sc["stderr"].startswith("[the Python interpreter was restarted: the container was stopped (idle for ")
        assert "no memory checkpoint could be restored" in sc["stderr"]
        assert checkpoints(cid) == []
        shell = await call(client, "bash_code_execution", command="cat /workspace/kept.txt")
        assert shell.structured_content["stdout"] == "kept"



def test_the_checkpoint_bench_smoke_run_reports_every_figure_and_leaves_no_container(checkpoint_settings):
    proc = subprocess.run([sys.executable, "-m", "bench.checkpoint", "--smoke", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=280, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("checkpoint_0mib_s", "checkpoint_0mib_mib", "restore_first_result_0mib_ms", "cold_first_result_ms",
                "warm_cell_ms"):
        assert isinstance(results[key], (int, float)) and results[key] > 0, (key, results)
    left = docker.from_env().containers.list(all=True, filters={"label": f"io.mcp-codeexec.install={results['installation']}"},
                                             ignore_removed=True)
    assert left == []


async def test_a_checkpoint_older_than_the_containers_last_start_is_never_restored(checkpoint_settings):
    async with mcp_client("memory", checkpoint_settings) as client:
        first = await call(client, "code_execution", code="x = 1")
        cid = first.meta["container"]["id"]
        await checkpointed(cid)
        container = docker.from_env().containers.get(NAME_PREFIX + cid)
        # Something else starts it plainly (its files may then change) and stops it again.
        with anyio.fail_after(30):
            while True:
                try:
                    container.start()
                    break
                except docker.errors.APIError:  # the engine is still cleaning up after the checkpoint
                    await anyio.sleep(0.3)
        # Written past the server (not by a call): a call would make it the server's live sandbox again,
        # whose idle checkpoint (1 s here) would then race this stop.
        wrote = container.exec_run(["sh", "-c", "echo newer > /workspace/late.txt"], user="1000:1000")
        assert wrote.exit_code == 0, wrote.output
        container.stop(timeout=2)
        assert checkpoints(cid)  # still there: the engine keeps it with the container
        cell = "print('x' in globals(), open('/workspace/late.txt').read())"
        after = await client.call_tool("code_execution", {"code": cell})
        if after.is_error:  # the call on the stream the stop closed; the next one reconnects
            assert after.structured_content["error_code"] == "unavailable"
            after = await call(client, "code_execution", code=cell)
        assert after.structured_content["stdout"] == "False newer\n\n"
        assert after.structured_content["stderr"].startswith("[the Python interpreter was restarted")
        assert checkpoints(cid) == []


async def test_a_sandbox_checkpointed_by_one_server_is_restored_by_the_next(checkpoint_settings):
    async with mcp_client("memory", checkpoint_settings) as client:
        first = await call(client, "code_execution", code="kept = {'a': [1, 2, 3]}")
        cid = first.meta["container"]["id"]
        await checkpointed(cid)
    async with mcp_client("memory", checkpoint_settings) as client:
        again = await call(client, "code_execution", code="print(kept['a'])", container_id=cid)
        assert again.structured_content["stdout"] == "[1, 2, 3]\n" and again.structured_content["stderr"] == ""


async def test_a_sandbox_using_more_memory_than_the_checkpoint_cap_keeps_running_instead(checkpoint_settings):
    settings = checkpoint_settings.model_copy(update={"checkpoint_max_bytes": 1, "repl_idle_stop_seconds": 3600.0})
    async with mcp_client("memory", settings) as client:
        first = await call(client, "code_execution", code="kept = 'alive'")
        cid = first.meta["container"]["id"]
        await anyio.sleep(3)  # ten reaper rounds past the idle limit
        assert docker.from_env().containers.get(NAME_PREFIX + cid).status == "running" and checkpoints(cid) == []
        assert (await call(client, "code_execution", code="print(kept)")).structured_content["stdout"] == "alive\n"
