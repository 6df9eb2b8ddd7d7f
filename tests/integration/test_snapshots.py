"""Snapshots and forks of workspaces (issue 17 item 5): the files match (by hash), the new sandbox
has its own id, owner record and limits, a copy taken while the source writes is a clean ext4
image, snapshots outlive the reaper, and the CLI does the same."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import docker
import pytest

from mcp_codeexec import Sandbox
from mcp_codeexec.errors import InvalidToolInput
from mcp_codeexec.engines.docker import NAME_PREFIX, SandboxManager, connect
from mcp_codeexec.snapshots import SnapshotStore
from tests.integration.conftest import make_settings
from tests.support.servers import remove_installation, server_env

pytestmark = pytest.mark.anyio

HASHES = "(cd /workspace && find . -path ./.codeexec -prune -o -type f -print0 | sort -z | xargs -0 sha256sum)"
FILL = ("mkdir -p data/deep && head -c 3000000 /dev/urandom > data/blob.bin && echo hi > data/deep/note.txt "
        "&& ln -s blob.bin data/link && chmod 700 data/deep && cd data && export FROM_PARENT=yes")


@pytest.fixture
def loop_settings(tmp_path, docker_engine):
    settings = make_settings(tmp_path, memory_bytes=768 * 1024**2, disk_bytes=256 * 1024**2)
    if SandboxManager(settings, connect()).volumes.mode != "loop":
        pytest.skip("snapshots need loop workspaces (root beside a local engine)")
    yield settings
    remove_installation(settings)


def inspect(cid: str) -> dict:
    client = docker.from_env()
    try:
        return client.api.inspect_container(NAME_PREFIX + cid)
    finally:
        client.close()


async def test_a_fork_has_the_parents_files_by_hash_and_its_own_id_owner_record_and_limits(loop_settings):
    async with Sandbox(loop_settings) as parent:
        assert (await parent.bash(FILL)).return_code == 0
        before = (await parent.bash(HASHES)).stdout
        child_id = await parent.fork()
        assert child_id != parent.container_id and child_id.startswith("container_")
        async with Sandbox(loop_settings, container_id=child_id, keep=False) as child:
            assert (await child.bash(HASHES)).stdout == before
            assert "blob.bin" in before and "note.txt" in before
            kept = await child.bash("pwd; echo $FROM_PARENT; readlink /workspace/data/link; "
                                     "python3 -c 'import os; print(oct(os.stat(\"/workspace/data/deep\").st_mode)[-3:])'")
            assert kept.stdout == "/workspace/data\nyes\nblob.bin\n700\n"  # cwd, exports, links, modes
            await child.bash("echo child-only > /workspace/data/child.txt")
            assert (await parent.bash("test -e /workspace/data/child.txt; echo $?")).stdout == "1\n"  # own copy
        with pytest.raises(docker.errors.NotFound):
            inspect(child_id)  # removed with its block (keep=False)
        parent_info = inspect(parent.container_id)
        assert parent_info["Config"]["Labels"]["io.mcp-codeexec.id"] == parent.container_id


async def test_a_forked_sandbox_has_its_own_labels_and_the_configured_limits(loop_settings):
    async with Sandbox(loop_settings) as parent:
        child_id = await parent.fork()
        try:
            info = inspect(child_id)
            assert info["Config"]["Labels"]["io.mcp-codeexec.id"] == child_id
            assert info["HostConfig"]["Memory"] == loop_settings.memory_bytes
            assert info["HostConfig"]["PidsLimit"] == loop_settings.pids_limit
            manager = SandboxManager(loop_settings, connect())
            assert manager.owners.get(child_id) == "local"
            assert manager.volumes.paths(child_id)[0].resolve() != manager.volumes.paths(parent.container_id)[0].resolve()
        finally:
            SandboxManager(loop_settings, connect()).remove(child_id)


async def test_a_named_snapshot_starts_new_sandboxes_with_its_files_and_survives_the_reaper(loop_settings):
    store = SnapshotStore(loop_settings)
    async with Sandbox(loop_settings) as source:
        await source.bash(FILL)
        saved_hashes = (await source.bash(HASHES)).stdout
        snap = await source.snapshot("base")
        assert snap["name"] == "base" and snap["source"] == source.container_id and snap["owner"] == "local"
        await source.bash("echo later > /workspace/data/later.txt")  # after the snapshot: not in it
    manager = SandboxManager(loop_settings, connect())
    manager.orphan_grace = 0
    manager.reap()
    assert [s.name for s in store.list()] == ["base"]
    ids = set()
    for _ in range(2):
        async with Sandbox(loop_settings, snapshot="base") as sb:
            assert (await sb.bash(HASHES)).stdout == saved_hashes
            ids.add(sb.container_id)
    assert len(ids) == 2 and source.container_id not in ids
    with pytest.raises(InvalidToolInput, match="no snapshot named"):
        async with Sandbox(loop_settings, snapshot="nope"):
            pass
    store.remove("base")
    assert store.list() == [] and not list((loop_settings.data_dir / "snapshots").glob("*.img"))


async def test_a_snapshot_taken_while_a_service_writes_is_a_clean_filesystem(loop_settings):
    async with Sandbox(loop_settings) as sb:
        await sb.start_service("writer", "i=0; while :; do echo $i >> /workspace/log.txt; i=$((i+1)); done")
        time.sleep(1)
        SnapshotStore(loop_settings).save(SandboxManager(loop_settings, connect()), sb.container_id, "busy", "local")
        image = loop_settings.data_dir / "snapshots" / "busy.img"
        fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True, timeout=120)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        # An unfrozen copy of a busy workspace needs journal recovery (e2fsck -n warns it skips it).
        assert "journal recovery" not in fsck.stdout + fsck.stderr, fsck.stdout + fsck.stderr
        assert (await sb.service_logs("writer")) == ""  # still writing: the freeze only paused it
        assert (await sb.services())[0]["status"] == "running"


async def test_snapshots_are_capped_per_principal_and_names_are_checked(tmp_path, docker_engine):
    settings = make_settings(tmp_path, disk_bytes=64 * 1024**2, max_snapshots_per_principal=1)
    try:
        if SandboxManager(settings, connect()).volumes.mode != "loop":
            pytest.skip("snapshots need loop workspaces")
        async with Sandbox(settings) as sb:
            await sb.snapshot("one")
            with pytest.raises(InvalidToolInput, match="exists"):
                await sb.snapshot("one")
            await sb.snapshot("one", replace=True)
            with pytest.raises(InvalidToolInput, match="most it may keep"):
                await sb.snapshot("two")
            for bad in ("../x", ".hidden", "a/b", "x" * 65, ""):
                with pytest.raises(InvalidToolInput, match="snapshot name"):
                    await sb.snapshot(bad)
    finally:
        remove_installation(settings)


def test_the_cli_saves_lists_starts_forks_and_removes_snapshots(loop_settings):
    env = server_env(loop_settings)

    def cli(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "mcp_codeexec", *args], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    manager = SandboxManager(loop_settings, connect())
    record, _ = manager.create("local")
    saved = cli("snapshots", "save", record.id, "cli-snap")
    assert saved.startswith("saved cli-snap from " + record.id)
    [row] = json.loads(cli("snapshots", "ls", "--json"))
    assert row["name"] == "cli-snap" and row["source"] == record.id and row["size_bytes"] > loop_settings.disk_bytes
    assert "cli-snap" in cli("snapshots", "ls")
    started = cli("snapshots", "start", "cli-snap").strip()
    forked = cli("snapshots", "fork", record.id).strip()
    assert len({record.id, started, forked}) == 3
    assert all(manager.find(cid)[0].owner == "local" for cid in (started, forked))
    assert cli("snapshots", "rm", "cli-snap") == "removed cli-snap\n"
    assert cli("snapshots", "ls") == "no snapshots\n"


async def test_mcp_clients_fork_and_snapshot_their_sandbox_and_work_in_the_copy_by_container_id(loop_settings):
    from tests.support.servers import mcp_client

    settings = loop_settings.model_copy(update={"snapshots": True})
    async with mcp_client("memory", settings) as client:
        assert "snapshots" in [t.name for t in (await client.list_tools()).tools]
        first = await client.call_tool("bash_code_execution", {"command": FILL + " && " + HASHES})
        parent = first.meta["container"]["id"]
        forked = await client.call_tool("snapshots", {"action": "fork"})
        assert not forked.is_error, forked.content
        child = forked.structured_content["container_id"]
        assert child != parent and forked.structured_content["source"] == parent
        again = await client.call_tool("bash_code_execution", {"command": HASHES, "container_id": child})
        assert again.structured_content["stdout"] == first.structured_content["stdout"]
        assert again.meta["container"]["id"] == child

        saved = await client.call_tool("snapshots", {"action": "save", "name": "mcp-snap"})
        assert saved.structured_content["snapshot"]["source"] == parent
        listed = await client.call_tool("snapshots", {"action": "list"})
        assert [s["name"] for s in listed.structured_content["snapshots"]] == ["mcp-snap"]
        started = await client.call_tool("snapshots", {"action": "start", "name": "mcp-snap"})
        third = started.structured_content["container_id"]
        ran = await client.call_tool("bash_code_execution", {"command": HASHES, "container_id": third})
        assert ran.structured_content["stdout"] == first.structured_content["stdout"]
        bad = await client.call_tool("snapshots", {"action": "start", "name": "missing"})
        assert bad.is_error and bad.structured_content["error_code"] == "invalid_tool_input"
        removed = await client.call_tool("snapshots", {"action": "remove", "name": "mcp-snap"})
        assert removed.structured_content == {"type": "snapshots_result", "removed": "mcp-snap"}


def test_one_http_principal_cannot_see_start_or_remove_anothers_snapshot_nor_fork_its_sandbox(loop_settings):
    import anyio

    from tests.support.servers import http_server, mcp_client

    settings = loop_settings.model_copy(update={"snapshots": True})

    async def scenario(base: str) -> None:
        async with mcp_client("http", settings, base_url=base, token="tok-alice-0123456789abcdef") as alice:
            made = await alice.call_tool("bash_code_execution", {"command": "echo secret > s.txt"})
            alice_cid = made.meta["container"]["id"]
            assert not (await alice.call_tool("snapshots", {"action": "save", "name": "alice-snap"})).is_error
        async with mcp_client("http", settings, base_url=base, token="tok-bob-0123456789abcdef00") as bob:
            assert (await bob.call_tool("snapshots", {"action": "list"})).structured_content["snapshots"] == []
            for arguments in ({"action": "start", "name": "alice-snap"}, {"action": "remove", "name": "alice-snap"},
                              {"action": "fork", "container_id": alice_cid},
                              {"action": "save", "name": "steal", "container_id": alice_cid}):
                result = await bob.call_tool("snapshots", arguments)
                assert result.is_error, arguments
                assert "alice" not in result.content[0].text.replace("alice-snap", ""), result.content

    with http_server(settings, token="alice:tok-alice-0123456789abcdef,bob:tok-bob-0123456789abcdef00") as base:
        anyio.run(scenario, base)
    assert [s.name for s in SnapshotStore(settings).list()] == ["alice-snap"]


async def test_a_sandbox_started_from_a_smaller_snapshot_gets_its_own_larger_disk_limit(tmp_path, docker_engine):
    small = make_settings(tmp_path, disk_bytes=64 * 1024**2)
    big = small.model_copy(update={"disk_bytes": 256 * 1024**2})
    try:
        if SandboxManager(small, connect()).volumes.mode != "loop":
            pytest.skip("snapshots need loop workspaces")
        async with Sandbox(small) as sb:
            await sb.bash("echo kept > /workspace/k.txt")
            await sb.snapshot("small")
            size_small = int((await sb.bash("df -B1 --output=size /workspace | tail -1")).stdout)
        async with Sandbox(big, snapshot="small") as grown:
            ran = await grown.bash("cat /workspace/k.txt; df -B1 --output=size /workspace | tail -1")
            text, size = ran.stdout.split()
            assert text == "kept" and int(size) > 3 * size_small, (size_small, size)
            assert (await grown.bash("head -c 150000000 /dev/zero > /workspace/f && echo ok")).stdout == "ok\n"
    finally:
        remove_installation(small)


# --------------------------------------------------------------------------- named-volume workspaces (quota = none)


@pytest.fixture
def volume_settings(tmp_path, docker_engine):
    import os

    if (os.environ.get("MCP_CODEEXEC_RUNTIME") or "runc") == "runsc":
        pytest.skip("gVisor 2022 build: named-volume mounts fail with EINVAL on this host (stat of the mount point)")
    settings = make_settings(tmp_path, quota="none", memory_bytes=768 * 1024**2)
    yield settings
    remove_installation(settings)


def snapshot_volumes(settings) -> list[str]:
    from mcp_codeexec.engines.docker import installation_label
    from mcp_codeexec.volume_snapshots import L_SNAPSHOT_INSTALL

    client = docker.from_env()
    try:
        found = client.volumes.list(filters={"label": f"{L_SNAPSHOT_INSTALL}={installation_label(settings.data_dir)}"})
        return sorted(v.name for v in found)
    finally:
        client.close()


async def test_a_volume_workspace_forks_with_the_parents_files_owners_and_shell_state_and_its_own_id(volume_settings):
    async with Sandbox(volume_settings) as parent:
        assert (await parent.bash(FILL)).return_code == 0
        before = (await parent.bash(HASHES)).stdout
        started = time.monotonic()
        child_id = await parent.fork()
        took = time.monotonic() - started
        assert child_id != parent.container_id
        async with Sandbox(volume_settings, container_id=child_id, keep=False) as child:
            assert (await child.bash(HASHES)).stdout == before and "blob.bin" in before
            kept = await child.bash("pwd; echo $FROM_PARENT; readlink /workspace/data/link; "
                                     "stat -c '%a %u' /workspace/data/deep /workspace/data/blob.bin")
            assert kept.stdout == "/workspace/data\nyes\nblob.bin\n700 1000\n644 1000\n", kept.stdout
            await child.bash("echo child-only > /workspace/data/child.txt")
            assert (await parent.bash("test -e /workspace/data/child.txt; echo $?")).stdout == "1\n"
            info = inspect(child_id)
            assert info["HostConfig"]["Memory"] == volume_settings.memory_bytes
            assert [m["Name"] for m in info["Mounts"] if m["Destination"] == "/workspace"] == [NAME_PREFIX + child_id]
        assert inspect(parent.container_id)["State"]["Paused"] is False  # resumed after the copy
        assert took < 30, took
    helpers = docker.from_env().containers.list(all=True, filters={"label": "io.mcp-codeexec.copy-helper"})
    assert not [c for c in helpers if c.labels.get("io.mcp-codeexec.copy-helper") == SandboxManager(volume_settings, connect()).install]


async def test_mcp_clients_snapshot_a_volume_workspace_and_start_sandboxes_from_it_that_outlive_prune(volume_settings):
    from tests.support.servers import mcp_client

    settings = volume_settings.model_copy(update={"snapshots": True})
    async with mcp_client("memory", settings) as client:
        first = await client.call_tool("bash_code_execution", {"command": FILL + " && " + HASHES})
        saved = await client.call_tool("snapshots", {"action": "save", "name": "vol-snap"})
        assert not saved.is_error, saved.content
        snap = saved.structured_content["snapshot"]
        assert snap["source"] == first.meta["container"]["id"] and snap["disk_bytes"] >= 3_000_000
        assert snap["volume"] in snapshot_volumes(settings)
        await client.call_tool("bash_code_execution", {"command": "echo later > /workspace/data/later.txt"})
    manager = SandboxManager(settings, connect())
    manager.orphan_grace = 0
    manager.reap()
    manager.remove_installation()  # `containers prune --all`: sandboxes go, snapshots stay
    assert snapshot_volumes(settings) == [snap["volume"]]
    async with mcp_client("memory", settings) as client:
        ids = set()
        for _ in range(2):
            started = await client.call_tool("snapshots", {"action": "start", "name": "vol-snap"})
            assert not started.is_error, started.content
            cid = started.structured_content["container_id"]
            ran = await client.call_tool("bash_code_execution", {"command": HASHES, "container_id": cid})
            assert ran.structured_content["stdout"] == first.structured_content["stdout"]  # not later.txt
            ids.add(cid)
        assert len(ids) == 2
        replaced = await client.call_tool("snapshots", {"action": "save", "name": "vol-snap", "replace": True,
                                                        "container_id": cid})
        assert replaced.structured_content["snapshot"]["volume"] != snap["volume"]
        assert snapshot_volumes(settings) == [replaced.structured_content["snapshot"]["volume"]]  # the old one went
        removed = await client.call_tool("snapshots", {"action": "remove", "name": "vol-snap"})
        assert removed.structured_content == {"type": "snapshots_result", "removed": "vol-snap"}
    assert snapshot_volumes(settings) == []


async def test_a_snapshot_volume_removed_behind_the_servers_back_is_reported_and_its_record_still_removable(volume_settings):
    from mcp_codeexec.errors import Unavailable

    store = SnapshotStore(volume_settings)
    async with Sandbox(volume_settings) as sb:
        await sb.bash("echo x > x.txt")
        snap = await sb.snapshot("gone")
    client = docker.from_env()
    try:
        client.volumes.get(snap["volume"]).remove(force=True)
        with pytest.raises(Unavailable, match="is gone"):
            store.start(SandboxManager(volume_settings, client), "gone", "local")
        store.remove("gone", client=client)
    finally:
        client.close()
    assert store.list() == [] and snapshot_volumes(volume_settings) == []
