"""The sandbox side of programmatic tool calling: host-side ``CodeTools`` called from REPL code.

A host ``CodeTools`` of plain Python callables (an echo tool); the code awaits ``echo({...})``; each
call travels REPL -> agent -> host as a ``tool_call`` frame and back as ``tool_result``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import pytest

from mcp_codeexec import Sandbox
from mcp_codeexec.backends.base import CodeTools, ToolFunction
from mcp_codeexec.schemas import CodeResult
from tests.support.oracle import assert_hosted_shape

pytestmark = pytest.mark.anyio

ECHO = ToolFunction(
    name="echo", description="Echo the input back as JSON.",
    input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
    output_schema={"type": "string"},
)
FAIL = ToolFunction(name="fail", description="Always fails.", input_schema={"type": "object"})
SLOW = ToolFunction(name="slow", description="Never answers in time.", input_schema={"type": "object"})


def echo_tools(**overrides: Any) -> tuple[CodeTools, list[tuple[str, dict]]]:
    seen: list[tuple[str, dict]] = []
    in_flight = {"now": 0, "most": 0}

    async def call(name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        seen.append((name, arguments))
        in_flight["now"] += 1
        in_flight["most"] = max(in_flight["most"], in_flight["now"])
        try:
            if name == "fail":
                return "Error: table lock exceeded 30 seconds", True
            if name == "slow":
                await anyio.sleep(3600)
            await anyio.sleep(0.05)
            return json.dumps(arguments), False
        finally:
            in_flight["now"] -= 1

    tools = CodeTools(functions=[ECHO, FAIL, SLOW], call=call, **overrides)
    tools.in_flight = in_flight  # type: ignore[attr-defined]
    return tools, seen


def hosted(block: CodeResult) -> CodeResult:
    assert_hosted_shape(block.model_dump(exclude_none=True), "code_execution")
    return block


async def test_twenty_gathered_calls_reach_the_host_and_return_their_text(settings) -> None:
    tools, seen = echo_tools(max_in_flight=8)
    async with Sandbox(settings) as sb:
        code = ("import asyncio, json\n"
                "r = await asyncio.gather(*(echo({'text': str(i)}) for i in range(20)))\n"
                "print([json.loads(x)['text'] for x in r] == [str(i) for i in range(20)], type(r[0]).__name__)")
        result = hosted(await sb.code(code, tools=tools))
    assert (result.stdout, result.stderr, result.return_code) == ("True str\n", "", 0)
    assert len(seen) == 20 and {name for name, _ in seen} == {"echo"}
    assert tools.in_flight["most"] <= 8  # type: ignore[attr-defined]


async def test_an_is_error_result_raises_in_the_code_and_list_tools_has_the_schemas(settings) -> None:
    tools, _ = echo_tools()
    async with Sandbox(settings) as sb:
        code = ("try:\n    await fail({})\nexcept Exception as e:\n    print(type(e).__name__, '|', e)\n"
                "print([t['name'] for t in list_tools()], list_tools()[0]['output_schema'])")
        result = hosted(await sb.code(code, tools=tools))
    assert result.stdout == "ToolCallError | Error: table lock exceeded 30 seconds\n['echo', 'fail', 'slow'] {'type': 'string'}\n"


async def test_a_pending_call_times_out_inside_the_code_and_the_interpreter_keeps_its_state(settings) -> None:
    tools, _ = echo_tools(pending_timeout=1.0)
    async with Sandbox(settings) as sb:
        await sb.code("kept = 7")
        started = time.monotonic()
        result = hosted(await sb.code("await slow({})", tools=tools))
        assert time.monotonic() - started < 10
        assert result.return_code == 1
        assert result.stderr.endswith("TimeoutError: Calling tool ['slow'] timed out (no response after 1s).\n")
        after = await sb.code("print(kept)")
        assert after.stdout == "7\n"


async def test_without_tools_a_forged_tool_call_fails_only_inside_the_code(settings) -> None:
    async with Sandbox(settings) as sb:
        code = ("import os, json, struct, socket\n"
                "print([n for n in ('echo', 'list_tools') if n in globals()])")
        result = hosted(await sb.code(code))
    assert result.stdout == "['list_tools']\n"


async def test_an_mcp_server_given_code_tools_exposes_them_to_code_execution(settings) -> None:
    from mcp import Client

    from mcp_codeexec.server import create_server

    tools, seen = echo_tools()
    async with Client(create_server(settings, code_tools=tools)) as client:
        result = await client.call_tool("code_execution", {"code": "print(await echo({'text': 'via mcp'}))"})
    assert_hosted_shape(result.structured_content, "code_execution")
    assert result.structured_content["stdout"] == '{"text": "via mcp"}\n'
    assert seen == [("echo", {"text": "via mcp"})]
