"""Upstream MCP tools called from REPL code in a real sandbox (the sandbox side of the channel is
the REPL's; these tests skip until the docker backend has its ``code`` tool)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from mcp_codeexec import Sandbox
from mcp_codeexec.backends.sandbox import SandboxBackend
from mcp_codeexec.schemas import CodeInput
from mcp_codeexec.tools import ToolLimits, ToolRegistry, parse_tools_config

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not hasattr(SandboxBackend, "code"), reason="the docker backend has no code_execution REPL yet"),
]

UPSTREAM = str(Path(__file__).resolve().parents[1] / "support" / "upstream_server.py")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def registry():
    config = parse_tools_config({"mcpServers": {"t": {"command": sys.executable, "args": [UPSTREAM],
                                                      "allowed_tools": ["echo", "add", "weather.get-forecast", "hang"]}}},
                                environ={})
    async with ToolRegistry(config, ToolLimits(pending_timeout=3)) as reg:
        yield reg


async def test_code_in_the_sandbox_calls_upstream_tools_in_parallel(settings, registry: ToolRegistry) -> None:
    code = (
        "import asyncio, json\n"
        "echoes = await asyncio.gather(*(t__echo({'text': str(i)}) for i in range(20)))\n"
        "forecast = json.loads(await t__weather_get_forecast({'city': 'Oslo'}))\n"
        "print(','.join(echoes), forecast['summary'])\n"
    )
    async with Sandbox(settings, tools=registry.for_principal("local")) as sb:
        outcome = await sb._run_code(CodeInput(code=code))
    assert outcome.block.return_code == 0, outcome.block.stderr
    assert outcome.block.stdout == ",".join(str(i) for i in range(20)) + " sunny in Oslo for 1 day(s)\n"


async def test_failures_raise_inside_the_code_with_clear_messages(settings, registry: ToolRegistry) -> None:
    async with Sandbox(settings, tools=registry.for_principal("local")) as sb:
        hang = await sb._run_code(CodeInput(code="await t__hang({})"))
        invalid = await sb._run_code(CodeInput(code="await t__add({'a': 1, 'b': 'two'})"))
        disallowed = await sb._run_code(CodeInput(code="await t__crash({})"))
    assert hang.block.return_code != 0
    assert re.search(r"TimeoutError: Calling tool \['t__hang'\] timed out \(no response after 3(\.0)?s\)\.|"
                     r"did not answer 'hang' within 3s", hang.block.stderr)
    assert invalid.block.return_code != 0 and "invalid arguments for t__add: 'two' is not of type 'integer' at b" in invalid.block.stderr
    assert disallowed.block.return_code != 0
    # not defined in the REPL at all (or, if the REPL forwards unknown names, refused by the registry)
    assert ("NameError: name 't__crash' is not defined" in disallowed.block.stderr
            or "t__crash (t/crash) is not on the allowed_tools list of server 't'" in disallowed.block.stderr)


async def test_the_sandboxs_own_tools_reach_its_public_code_method(settings, registry: ToolRegistry) -> None:
    async with Sandbox(settings, tools=registry.for_principal("local")) as sb:
        block = await sb.code("print(await t__echo({'text': 'hi'}), [f['name'] for f in list_tools()][:1])")
    assert block.return_code == 0, block.stderr
    assert block.stdout == "hi ['t__add']\n"
