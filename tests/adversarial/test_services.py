"""Services against hostile use: only what was started as a service survives a call's sweep
(nohup, setsid, double forks still die), the cap cannot be dodged by a leader that exits early,
an output flood stays within its ring buffer, and the services' own memory cap holds."""

from __future__ import annotations

import time

import anyio

import pytest

from mcp_codeexec import Sandbox
from mcp_codeexec.errors import InvalidToolInput
from tests.integration.conftest import make_settings

pytestmark = pytest.mark.anyio

# Every process but PID 1, with its command line: what a sweep left.
PROCS = (
    "for p in /proc/[0-9]*; do n=${p#/proc/}; [ \"$n\" = 1 ] || [ \"$n\" = $$ ] && continue; "
    "c=$(tr '\\0' ' ' < $p/cmdline 2>/dev/null); [ -n \"$c\" ] && echo \"$c\"; done; true"
)


@pytest.fixture
async def sb(tmp_path, docker_engine):
    settings = make_settings(tmp_path, services_max=2, services_log_bytes=64 * 1024,
                             services_max_memory_bytes=96 * 1024 * 1024)
    async with Sandbox(settings) as sandbox:
        yield sandbox


async def test_processes_a_call_leaves_behind_die_even_while_a_service_is_spared(sb):
    await sb.start_service("keeper", "sleep 701 & sleep 702")  # a service's children are spared too
    escape = ("nohup sleep 601 >/dev/null 2>&1 & setsid sleep 602 & "
              "( ( sleep 603 & ) & ) ; bash -c 'trap \"\" TERM HUP; exec -a sleep604 sleep 604' & disown -a; true")
    assert (await sb.bash(escape)).return_code == 0
    left = (await sb.bash(PROCS)).stdout
    assert "sleep 701" in left and "sleep 702" in left, left
    for n in ("601", "602", "603", "604"):
        assert n not in left, left
    [keeper] = await sb.services()
    assert keeper["status"] == "running" and keeper["processes"] == 3  # bash, both sleeps


async def test_a_service_leader_that_exits_early_still_counts_against_the_cap_until_its_session_is_gone(sb):
    await sb.start_service("daemon", "sleep 800 & exit 0")  # the leader exits, its child runs on
    await sb.start_service("other", "sleep 801")
    await anyio.sleep(0.3)
    [daemon] = [s for s in await sb.services() if s["name"] == "daemon"]
    assert daemon["status"] == "running" and daemon["exit_code"] == 0 and daemon["processes"] == 1
    with pytest.raises(InvalidToolInput, match="at most 2"):
        await sb.start_service("third", "sleep 802")
    await sb.stop_service("daemon")  # stop reaches the leader's orphaned child through its session
    assert "sleep 800" not in (await sb.bash(PROCS)).stdout
    await sb.start_service("third", "sleep 802")


async def test_an_output_flood_stays_within_the_ring_buffer_and_the_agent_stays_responsive(sb):
    await sb.start_service("flood", "yes 'flood flood flood flood flood flood flood flood'")
    await anyio.sleep(2)
    began = time.monotonic()
    ran = await sb.bash("echo still-here; ps -o rss= -p 1")
    assert ran.stdout.startswith("still-here\n") and time.monotonic() - began < 5
    assert int(ran.stdout.split()[1]) < 64 * 1024  # the agent's RSS in KiB: no unbounded buffer
    [flood] = await sb.services()
    assert flood["output_bytes"] > 10 * 64 * 1024  # far more was written than is kept
    tail = await sb.service_logs("flood", tail=10**9)
    assert 0 < len(tail.encode()) <= 64 * 1024 and tail.startswith("flood")  # cut to a line start
    *whole, last = tail.split()  # the newest bytes; the last line may still be being written
    assert set(whole) == {"flood"} and "flood".startswith(last)
    await sb.stop_service("flood")


async def test_services_over_their_own_memory_cap_are_stopped_and_say_why(sb):
    hog = "python3 -c \"import time; b = bytearray(200 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); time.sleep(600)\""
    await sb.start_service("hog", hog)
    for _ in range(60):
        [entry] = await sb.services()
        if entry["status"] == "exited":
            break
        await anyio.sleep(0.25)
    assert entry["status"] == "exited" and entry["stopped_by"] == "memory cap", entry
    assert (await sb.bash("echo ok")).stdout == "ok\n"


async def test_a_service_cannot_be_started_by_code_in_the_sandbox_only_through_the_host(sb):
    # The op is the host's: code inside has no channel to the agent (PID 1's fds are not reachable).
    probe = await sb.bash("ls -l /proc/1/fd 2>&1 | head -3; cat /proc/1/environ 2>&1 | head -c 100; echo")
    assert "Permission denied" in probe.stdout or "cannot" in probe.stdout
    assert await sb.services() == []


def test_one_http_principal_cannot_list_read_or_stop_anothers_services(tmp_path, docker_engine):
    from tests.support.servers import http_server, mcp_client, remove_installation

    settings = make_settings(tmp_path, services=True)
    alice_token, bob_token = "tok-alice-svc-0123456789ab", "tok-bob-svc-0123456789abcd"

    async def scenario(base: str) -> None:
        async with mcp_client("http", settings, base_url=base, token=alice_token) as alice:
            started = await alice.call_tool("services", {"action": "start", "name": "secret", "command": "echo alice-output; sleep 600"})
            assert not started.is_error, started.content
            cid = started.meta["container"]["id"]
        async with mcp_client("http", settings, base_url=base, token=bob_token) as bob:
            assert (await bob.call_tool("services", {"action": "list"})).structured_content["services"] == []
            for arguments in ({"action": "list", "container_id": cid}, {"action": "logs", "name": "secret", "container_id": cid},
                              {"action": "stop", "name": "secret", "container_id": cid}):
                result = await bob.call_tool("services", arguments)
                assert result.is_error and "alice-output" not in str(result.structured_content), arguments
        async with mcp_client("http", settings, base_url=base, token=alice_token) as alice:
            [entry] = (await alice.call_tool("services", {"action": "list", "container_id": cid})).structured_content["services"]
            assert entry["status"] == "running"

    try:
        with http_server(settings, token=f"alice:{alice_token},bob:{bob_token}") as base:
            anyio.run(scenario, base)
    finally:
        remove_installation(settings)
