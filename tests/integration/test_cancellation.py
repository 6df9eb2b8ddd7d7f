"""A client that gives up on a call (``notifications/cancelled``: its own timeout, or a cancelled
task) gets the command's whole process group killed within a second, and the container is ready
for the next call at once, over every transport, through the real ``mcp`` client."""

from __future__ import annotations

import time

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from tests.support.servers import mcp_client

pytestmark = pytest.mark.anyio

BASH = "bash_code_execution"
# A process group of its own (setsid) and a background child: all of it must go.
SLOW = "rm -f /workspace/late; (sleep 30; touch /workspace/late) & setsid sleep 31 & sleep 32; touch /workspace/late"


async def assert_ready_and_swept(client, cancelled_at: float) -> None:
    with anyio.fail_after(10):
        ready = await client.call_tool(BASH, {"command": "ps -eo args | grep -c '[s]leep 3' || true; test -e /workspace/late && echo late-exists || echo late-absent"})
    waited = time.monotonic() - cancelled_at
    stdout = ready.structured_content["stdout"]
    assert stdout.splitlines()[0] == "0", stdout  # no sleep of the cancelled call is left
    assert "late-absent" in stdout  # (`test -e`, not `ls`: runsc 2022 answers statx EINVAL)
    assert waited < 2.5, f"the next call waited {waited:.1f} s behind the cancelled one"
    return None


async def test_a_client_timeout_cancels_the_command_and_frees_the_terminal(transport, settings, http_base):
    base_url, token = http_base
    async with mcp_client(transport, settings, base_url=base_url, token=token) as client:
        await client.call_tool(BASH, {"command": "true"})  # the container is up
        started = time.monotonic()
        with pytest.raises(MCPError):
            await client.call_tool(BASH, {"command": SLOW}, read_timeout_seconds=2)  # sends notifications/cancelled
        assert time.monotonic() - started < 5
        await assert_ready_and_swept(client, time.monotonic())


async def test_a_cancelled_client_task_cancels_the_command(transport, settings, http_base):
    base_url, token = http_base
    async with mcp_client(transport, settings, base_url=base_url, token=token) as client:
        await client.call_tool(BASH, {"command": "true"})
        with anyio.move_on_after(2):
            await client.call_tool(BASH, {"command": SLOW})
        await assert_ready_and_swept(client, time.monotonic())


OPENAI_AGENTS = r"""
import asyncio, json, os, sys, time
from agents.mcp import MCPServerStdio

def server():
    # The SDK's default client_session_timeout_seconds is 5: a longer call times out.
    return MCPServerStdio(params={"command": sys.argv[1], "args": ["-m", "mcp_codeexec", "serve"], "env": dict(os.environ)})

async def main():
    out = {}
    s = server()
    await s.connect()
    first = await s.call_tool("bash_code_execution", {"command": "true"})
    out["first_id"] = first.meta["container"]["id"]
    started = time.monotonic()
    try:
        await s.call_tool("bash_code_execution", {"command": os.environ["SLOW"]})
        out["timed_out"] = False
    except Exception as exc:
        out["timed_out"] = True
        out["after"] = round(time.monotonic() - started, 1)
        out["error"] = str(exc)[:200]
    gave_up = time.monotonic()
    try:
        await s.cleanup()  # what the SDK's Agent run does with a server whose call failed
    except Exception:
        pass
    s = server()  # the next turn: a new session (this server resumes the same sandbox)
    await s.connect()
    result = await s.call_tool("bash_code_execution", {"command": "ps -eo args | grep -c '[s]leep 3' || true; test -e /workspace/late && echo late-exists || echo late-absent"})
    out["next_after"] = round(time.monotonic() - gave_up, 1)
    out["next_id"] = result.meta["container"]["id"]
    out["next"] = getattr(result, "structured_content", None) or result.structuredContent
    await s.cleanup()
    print(json.dumps(out))

asyncio.run(main())
"""


async def test_openai_agents_giving_up_after_its_5_s_timeout_leaves_nothing_running(tmp_path, docker_engine):
    from tests.integration.conftest import make_settings
    from tests.support.pyclients import client_python, run_client
    from tests.support.servers import remove_installation, server_env

    python = await anyio.to_thread.run_sync(lambda: client_python("openai-agents", "openai-agents==0.24.0"))
    settings = make_settings(tmp_path, pool_size=0)
    try:
        env = server_env(settings, SLOW=SLOW)
        out = await anyio.to_thread.run_sync(lambda: run_client(python, OPENAI_AGENTS, env))
        assert out["timed_out"] and 4 < out["after"] < 8, out
        assert out["next_id"] == out["first_id"]  # the same sandbox (resumed by the new session)
        next_stdout = out["next"]["stdout"]
        assert next_stdout.splitlines()[0] == "0", out  # the command's whole process group was killed
        assert "late-absent" in next_stdout
        assert out["next_after"] < 25, out  # well under the 32 s command: it did not wait behind it (start-up included)
    finally:
        remove_installation(settings)


async def test_an_http_session_ending_mid_call_kills_the_command_within_a_second(settings):
    import subprocess

    import httpx2

    from tests.support.http_probe import rpc_payload
    from tests.support.servers import http_server

    init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}

    def call(id_: int, command: str) -> dict:
        return {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": {"name": BASH, "arguments": {"command": command}}}

    with http_server(settings) as url:
        async with httpx2.AsyncClient(base_url=url, timeout=60) as http:
            opened = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}, headers=headers)
            headers |= {"Mcp-Session-Id": opened.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-06-18"}
            await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
            first = await http.post("/mcp", json=call(2, "true"), headers=headers)
            data = rpc_payload(first)
            name = "mcp-codeexec-" + data["result"]["_meta"]["container"]["id"]

            def sleeps() -> str:
                return subprocess.run(["docker", "exec", name, "sh", "-c", "ps -eo args | grep -c '[s]leep 40' || true"],
                                      capture_output=True, text=True, timeout=30).stdout.strip()

            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: http.post("/mcp", json=call(3, "sleep 40"), headers=headers))
                with anyio.fail_after(10):
                    while await anyio.to_thread.run_sync(sleeps) != "1":
                        await anyio.sleep(0.1)
                assert (await http.delete("/mcp", headers=headers)).status_code == 200  # the session ends
                ended = time.monotonic()
                while await anyio.to_thread.run_sync(sleeps) != "0":
                    # 1 s for the kill plus one `docker exec` (~0.1-0.5 s on a loaded host); measured 0.13 s.
                    assert time.monotonic() - ended < 1.5, "the command outlived its session by a second"
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
