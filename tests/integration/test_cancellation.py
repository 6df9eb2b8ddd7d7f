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
        ready = await client.call_tool(BASH, {"command": "ps -eo args | grep -c '[s]leep 3' || true; ls /workspace/late 2>&1 || true"})
    waited = time.monotonic() - cancelled_at
    stdout = ready.structured_content["stdout"]
    assert stdout.splitlines()[0] == "0", stdout  # no sleep of the cancelled call is left
    assert "No such file" in stdout
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
