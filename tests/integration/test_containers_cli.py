"""`mcp-codeexec containers` and `doctor` against a real engine, as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import anyio
import pytest

from mcp_codeexec import Sandbox
from tests.support.servers import server_env

pytestmark = pytest.mark.anyio


def cli(settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcp_codeexec", *args], env=server_env(settings),
                          capture_output=True, text=True, timeout=timeout)


async def make_sandbox(settings, **overrides) -> str:
    async with Sandbox(settings, keep=True, **overrides) as sb:
        await sb.bash("head -c 2000000 /dev/zero > /workspace/two-megabytes; echo done > $OUTPUT_DIR/out.txt")
        assert sb.container_id is not None
        return sb.container_id


async def test_ls_shows_owner_age_expiry_status_runtime_and_disk_use(settings) -> None:
    first = await make_sandbox(settings)
    second = await make_sandbox(settings)
    listed = cli(settings, "containers", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {first, second}  # only this data dir's sandboxes
    row = rows[first]
    assert row["owner"] == "local" and row["status"] == "running" and row["expired"] is False
    assert row["runtime"] == (settings.runtime or "runc")
    assert 0 <= row["age_seconds"] < 600 and 29 * 86400 < row["expires_in_seconds"] <= 30 * 86400
    assert row["disk_used_bytes"] is None or row["disk_used_bytes"] >= 2_000_000
    if row["quota"] == "loop":
        assert row["disk_limit_bytes"] == settings.disk_bytes

    table = cli(settings, "containers", "ls")
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["ID", "OWNER", "AGE", "EXPIRES", "IN", "STATUS", "RUNTIME", "DISK", "USED"]
    assert sorted(line.split()[0] for line in lines) == sorted([first, second])
    everywhere = cli(settings, "containers", "ls", "--all-data-dirs", "--json")
    assert {first, second} <= {row["id"] for row in json.loads(everywhere.stdout)}


async def test_inspect_gives_limits_and_the_files_a_sandbox_produced(settings) -> None:
    cid = await make_sandbox(settings)
    shown = cli(settings, "containers", "inspect", cid)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["id"] == cid and data["this_data_dir"] is True
    assert data["limits"]["network"] == "none" and data["limits"]["read_only_root"] is True
    assert data["limits"]["pids"] == settings.pids_limit and data["limits"]["cap_drop"] == ["ALL"]
    assert [f["filename"] for f in data["files"]] == ["out.txt"]
    missing = cli(settings, "containers", "inspect", "container_" + "e" * 24)
    assert missing.returncode == 1 and "no such sandbox" in missing.stderr


async def test_rm_removes_a_sandbox_and_reports_unknown_ids(settings) -> None:
    cid = await make_sandbox(settings)
    removed = cli(settings, "containers", "rm", cid, "container_" + "d" * 24)
    assert removed.returncode == 1
    assert removed.stdout.strip() == f"removed {cid}" and "no such sandbox" in removed.stderr
    assert json.loads(cli(settings, "containers", "ls", "--json").stdout) == []


async def test_stop_stops_a_sandbox_keeping_its_files_and_its_next_call_starts_it_again(settings) -> None:
    cid = await make_sandbox(settings)
    stopped = cli(settings, "containers", "stop", cid, "container_" + "d" * 24)
    assert stopped.returncode == 1 and stopped.stdout == f"stopped {cid}\n" and "no such sandbox" in stopped.stderr
    [row] = json.loads(cli(settings, "containers", "ls", "--json").stdout)
    assert row["id"] == cid and row["status"] == "exited"
    async with Sandbox(settings, cid) as sb:
        assert (await sb.bash("wc -c < /workspace/two-megabytes")).stdout == "2000000\n"
    assert cli(settings, "containers", "rm", cid).returncode == 0


async def test_a_sandbox_whose_container_was_removed_is_listed_detached_until_rm(settings) -> None:
    """After `docker rm` behind the server's back the workspace is kept (the next call rebuilds the
    container); `ls` shows it as detached so the user knows it still holds files, and `rm` frees it."""
    import docker

    from mcp_codeexec.engines.docker import NAME_PREFIX

    cid = await make_sandbox(settings)
    docker.from_env().containers.get(NAME_PREFIX + cid).remove(force=True)
    [row] = json.loads(cli(settings, "containers", "ls", "--json").stdout)
    assert row["id"] == cid and row["status"] == "detached" and row["expired"] is False and row["owner"] == "local"
    if row["quota"] == "loop":
        assert row["disk_used_bytes"] >= 2_000_000  # the two megabytes make_sandbox wrote are there
    assert "detached" in cli(settings, "containers", "ls").stdout
    shown = json.loads(cli(settings, "containers", "inspect", cid).stdout)
    assert shown["status"] == "detached" and [f["filename"] for f in shown["files"]] == ["out.txt"]
    removed = cli(settings, "containers", "rm", cid)
    assert removed.returncode == 0 and removed.stdout.strip() == f"removed {cid}", removed.stderr
    assert json.loads(cli(settings, "containers", "ls", "--json").stdout) == []


async def test_prune_reaps_expired_sandboxes_and_prune_all_needs_yes(settings) -> None:
    alive = await make_sandbox(settings)
    expired = await make_sandbox(settings, container_ttl_seconds=0.001)
    rows = {row["id"]: row for row in json.loads(cli(settings, "containers", "ls", "--json").stdout)}
    assert rows[expired]["expired"] is True and rows[alive]["expired"] is False
    assert "expired" in cli(settings, "containers", "ls").stdout

    pruned = cli(settings, "containers", "prune")
    assert pruned.returncode == 0 and f"removed {expired}" in pruned.stdout.splitlines()
    assert [row["id"] for row in json.loads(cli(settings, "containers", "ls", "--json").stdout)] == [alive]

    refused = cli(settings, "containers", "prune", "--all")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    everything = cli(settings, "containers", "prune", "--all", "--yes")
    assert everything.returncode == 0 and everything.stdout.splitlines() == [f"removed {alive}"]
    assert json.loads(cli(settings, "containers", "ls", "--json").stdout) == []


def test_doctor_passes_on_a_working_engine_quickly_and_can_start_a_sandbox(settings) -> None:
    started = time.monotonic()
    run = cli(settings, "doctor", "--json", "--start")
    elapsed = time.monotonic() - started
    report = json.loads(run.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert run.returncode == 0 and report["ok"] is True, run.stdout
    for name in ("config", "engine", "engine version", "runtime", "file store", "sandbox"):
        assert checks[name]["status"] == "OK", checks[name]
    assert checks["image"]["status"] in ("OK", "WARN")  # WARN: only the minimal image is built
    assert checks["disk quota"]["status"] in ("OK", "WARN")
    assert f"({settings.runtime or 'runc'}," in checks["sandbox"]["message"]
    assert json.loads(cli(settings, "containers", "ls", "--json").stdout) == []  # the probe sandbox is gone
    assert elapsed < 20, elapsed


def test_doctor_with_the_engine_unreachable_fails_fast_with_the_fix(settings) -> None:
    env = server_env(settings, DOCKER_HOST="unix:///nonexistent/docker.sock")
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "mcp_codeexec", "doctor"], env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert run.returncode == 1
    assert "FAIL  engine" in run.stdout and "fix:" in run.stdout
    assert elapsed < 15, elapsed


async def test_ls_shows_each_running_sandboxs_services_with_status_pid_and_uptime(tmp_path, docker_engine) -> None:
    """Started through a real MCP client; `ls` (another process) reads what the server recorded,
    never attaching to the sandbox, so the session goes on undisturbed."""
    from tests.integration.conftest import make_settings
    from tests.support.servers import mcp_client, remove_installation

    settings = make_settings(tmp_path, services=True)
    try:
        async with mcp_client("memory", settings) as client:
            started = await client.call_tool("services", {"action": "start", "name": "web", "command": "sleep 600"})
            assert not started.is_error, started.content
            await client.call_tool("services", {"action": "start", "name": "job", "command": "exit 4"})
            cid = started.meta["container"]["id"]
            await anyio.sleep(1.2)
            await client.call_tool("services", {"action": "list"})
            listed = cli(settings, "containers", "ls", "--json")
            assert listed.returncode == 0, listed.stderr
            [row] = json.loads(listed.stdout)
            assert row["id"] == cid and row["services_as_of_seconds"] >= 0
            by_name = {s["name"]: s for s in row["services"]}
            assert by_name["web"]["status"] == "running" and by_name["web"]["pid"] > 1
            assert by_name["web"]["uptime_seconds"] >= 1.0 and by_name["web"]["command"] == "sleep 600"
            assert by_name["job"]["status"] == "exited" and by_name["job"]["exit_code"] == 4

            table = cli(settings, "containers", "ls").stdout.splitlines()
            [web] = [line for line in table if line.startswith("  service web: running, pid ")]
            assert re.search(r", up \d+s, as of \d+s ago: sleep 600$", web), table
            assert any(line.startswith("  service job: exited (4)") for line in table), table

            still = await client.call_tool("bash_code_execution", {"command": "echo still here"})
            assert still.structured_content["stdout"] == "still here\n"  # the session was not disturbed
            await client.call_tool("services", {"action": "stop", "name": "web"})
        [row] = json.loads(cli(settings, "containers", "ls", "--json").stdout)
        assert [s["name"] for s in row["services"]] == ["job"]  # stopped services are dropped
        shown = json.loads(cli(settings, "containers", "inspect", cid).stdout)
        assert [s["name"] for s in shown["services"]] == ["job"]
    finally:
        remove_installation(settings)
