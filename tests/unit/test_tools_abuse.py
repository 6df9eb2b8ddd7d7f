"""Hostile or broken upstreams and oversized traffic, on the host side of the tool channel.

Every failure must come back as an error result that says what happened, within the pending
timeout, with the upstream restarted where it died and no credential in any text.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_codeexec.backends.base import HOST_TIMEOUT_MARGIN
from mcp_codeexec.tools import ToolLimits, ToolRegistry, parse_tools_config

pytestmark = pytest.mark.anyio

UPSTREAM = str(Path(__file__).resolve().parents[1] / "support" / "upstream_server.py")
SECRET = "sk-upstream-secret-77Q"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def registry(env: dict[str, str] | None = None, **limits: Any) -> ToolRegistry:
    server = {"command": sys.executable, "args": [UPSTREAM], "env": {"UPSTREAM_TOKEN": SECRET, **(env or {})}}
    return ToolRegistry(parse_tools_config({"mcpServers": {"t": server}}, environ={}), ToolLimits(**limits))


async def test_a_hanging_upstream_is_answered_within_the_pending_timeout_and_stays_usable() -> None:
    async with registry(pending_timeout=1.5) as reg:
        started = time.monotonic()
        text, is_error = await reg.call("local", "t__hang", {})
        elapsed = time.monotonic() - started
        # The host waits a margin past the pending timeout: the code's own timer raises first.
        assert is_error and text == f"upstream MCP server 't' did not answer 'hang' within {1.5 + HOST_TIMEOUT_MARGIN:g}s"
        assert 1.4 + HOST_TIMEOUT_MARGIN < elapsed < 4 + HOST_TIMEOUT_MARGIN
        assert await reg.call("local", "t__echo", {"text": "still here"}) == ("still here", False)


async def test_a_crashing_upstream_is_restarted_and_the_call_that_killed_it_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with registry() as reg:
        text, is_error = await reg.call("local", "t__crash", {})  # prints the token to its stderr first
        assert is_error
        assert text.startswith("upstream MCP server 't' went away during 'crash' (its process exited")
        assert "stderr: upstream crashing now (token [redacted])" in text
        assert text.endswith("it is being restarted")
        assert await reg.call("local", "t__echo", {"text": "back"}) == ("back", False)
        assert reg.upstreams["t"].connections == 2
    assert SECRET not in text and SECRET not in caplog.text
    assert "upstream crashing now (token [redacted])" in caplog.text


async def test_an_upstream_that_floods_stdout_is_stopped_at_the_message_limit_and_restarted() -> None:
    async with registry(max_result_bytes=64 * 1024, max_argument_bytes=64 * 1024) as reg:
        text, is_error = await reg.call("local", "t__flood", {"size": 20_000_000})
        # The SDK server may write one of its own messages into the middle of the flood (writes
        # above PIPE_BUF interleave), so the junk is seen either as an overlong line or as a
        # shorter line that is not JSON-RPC: either way it is stopped, said, and restarted.
        stopped = ("without a line break" in text or "that is not JSON-RPC" in text
                   or "-byte limit" in text)
        assert is_error and stopped and "it is being restarted" in text, text[:300]
        assert await reg.call("local", "t__echo", {"text": "after the flood"}) == ("after the flood", False)


async def test_an_upstream_that_writes_invalid_json_rpc_is_restarted_with_a_clear_error() -> None:
    async with registry(pending_timeout=30) as reg:
        started = time.monotonic()
        text, is_error = await reg.call("local", "t__garbage", {})
        assert time.monotonic() - started < 10  # not left to the pending timeout
        assert is_error and "it wrote a line that is not JSON-RPC" in text
        assert await reg.call("local", "t__echo", {"text": "ok"}) == ("ok", False)


async def test_an_upstream_that_cannot_start_gives_a_clear_error_inside_the_code() -> None:
    async with registry({"UPSTREAM_CRASH_ON_START": "1"}, start_timeout=10) as reg:
        tools = reg.for_principal("local")
        assert tools is not None and tools.functions == []
        text, is_error = await tools.call("t__echo", {"text": "x"})
    assert is_error and text.startswith("t__echo: upstream MCP server 't' is down (")
    assert "upstream refuses to start" in text  # its stderr says why


async def test_oversized_arguments_are_refused_before_sending_and_the_size_stated() -> None:
    async with registry(max_argument_bytes=10_000) as reg:
        text, is_error = await reg.call("local", "t__echo", {"text": "a" * 20_000})
        assert is_error and text == "arguments of t__echo are 20012 bytes, above the 10000-byte limit; send less per call"
        assert await reg.call("local", "t__echo", {"text": "a" * 9_000}) == ("a" * 9_000, False)


async def test_an_oversized_result_is_not_delivered_and_its_size_is_stated() -> None:
    async with registry(max_result_bytes=50_000) as reg:
        text, is_error = await reg.call("local", "t__big", {"size": 200_000})
        assert is_error
        assert text.startswith("the result of t__big is 200000 bytes, above the 50000-byte limit, and was not delivered")
        assert len(text) < 1200
        assert await reg.call("local", "t__big", {"size": 40_000}) == ("y" * 40_000, False)


async def test_a_thousand_calls_at_once_are_bounded_per_upstream_and_all_answered() -> None:
    async with registry(max_concurrent_per_upstream=8) as reg:
        upstream = reg.upstreams["t"]
        in_flight = peak = 0
        original = upstream.call

        async def counting(tool: str, arguments: dict[str, Any], timeout: float) -> Any:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await original(tool, arguments, timeout)
            finally:
                in_flight -= 1

        upstream.call = counting  # type: ignore[method-assign]
        results: list[tuple[str, bool]] = []
        started = time.monotonic()

        async def one(i: int) -> None:
            results.append(await reg.call("local", "t__add", {"a": i, "b": 1}))

        async with anyio.create_task_group() as tg:
            for i in range(1000):
                tg.start_soon(one, i)
        assert time.monotonic() - started < 120
    assert sorted(json.loads(text)["result"] for text, is_error in results if not is_error) == list(range(1, 1001))
    assert peak == 8


async def test_a_result_carrying_frame_like_and_control_bytes_arrives_unchanged() -> None:
    nasty = '\x00\x01{"type": "result", "id": 1}\n\r\x1b[2J' + "\u2028\ufeff" + "\\n" * 3
    async with registry() as reg:
        assert await reg.call("local", "t__echo", {"text": nasty}) == (nasty, False)


async def test_calls_in_flight_when_the_upstream_dies_all_fail_at_once_and_it_restarts_once() -> None:
    async with registry(pending_timeout=60) as reg:
        results: list[tuple[str, bool]] = []

        async def hang() -> None:
            results.append(await reg.call("local", "t__hang", {}))

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(hang)
            await anyio.sleep(0.5)
            results.append(await reg.call("local", "t__crash", {}))
        assert time.monotonic() - started < 10
        assert len(results) == 6 and all(is_error and "went away during" in text for text, is_error in results)
        assert await reg.call("local", "t__echo", {"text": "once"}) == ("once", False)
        await anyio.sleep(1)
        assert reg.upstreams["t"].connections == 2 and reg.upstreams["t"].connected


async def test_a_stdio_upstream_does_not_inherit_the_servers_own_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-server-own-key")
    monkeypatch.setenv("UPSTREAM_MARK", "inherited:")  # only the entry's env reaches the upstream
    async with registry() as reg:
        assert await reg.call("local", "t__getenv", {"name": "ANTHROPIC_API_KEY"}) == ("<unset>", False)
        assert await reg.call("local", "t__echo", {"text": "x"}) == ("x", False)
        assert await reg.call("local", "t__getenv", {"name": "UPSTREAM_TOKEN"}) == ("[redacted]", False)
