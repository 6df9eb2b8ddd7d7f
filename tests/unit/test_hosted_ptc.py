"""Passthrough of programmatic tool calling: the hosted code pauses for tools that this server
runs (upstream MCP servers through the registry), against the loopback fake Messages API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from mcp_codeexec.backends.hosted import (
    HostedBackend,
    _Turn,
    answer_code_calls,
    answer_code_pauses,
    pending_code_calls,
    ptc_tool_params,
)
from mcp_codeexec.config import load_settings
from mcp_codeexec.errors import Unavailable
from mcp_codeexec.files import FileStore
from mcp_codeexec.tools import ToolLimits, ToolRegistry, parse_tools_config
from tests.fakes import fake_anthropic as fa

pytestmark = pytest.mark.anyio

UPSTREAM = str(Path(__file__).resolve().parents[1] / "support" / "upstream_server.py")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def api():
    with fa.FakeAnthropic() as server:
        yield server


@pytest.fixture
async def backend(tmp_path: Path, api: fa.FakeAnthropic):
    settings = load_settings(data_dir=str(tmp_path), ANTHROPIC_API_KEY="sk-ant-test-key", anthropic_base_url=api.base_url,
                             hosted_max_retries=0, progress_interval=0)
    with FileStore(tmp_path / "files") as store:
        async with HostedBackend(settings, store) as b:
            yield b


@pytest.fixture
async def registry():
    config = parse_tools_config({"mcpServers": {"t": {"command": sys.executable, "args": [UPSTREAM],
                                                      "allowed_tools": ["add", "weather.get-forecast", "fails", "hang"]}}},
                                environ={})
    async with ToolRegistry(config, ToolLimits(pending_timeout=2)) as reg:
        yield reg


async def run_cell(backend: HostedBackend, code: str, tools: Any) -> tuple[list[dict[str, Any]], dict[str, Any], _Turn]:
    """One hosted code_execution request with the tools declared, answered through its pauses."""
    client = backend._ensure_client()
    params: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": [{"type": "text", "text": f"Run:\n{code}"}]}],
        "tools": [{"type": "code_execution_20260120", "name": "code_execution"}, *ptc_tool_params(tools)],
    }
    turn = _Turn(requests=1)
    data, _ = await backend._create(client, params, container_id=None)
    responses = await answer_code_pauses(backend, client, params, data, tools, turn)
    return responses, params, turn


def summary(results: list[dict[str, Any]]) -> str:
    return json.dumps([[r["content"], bool(r.get("is_error"))] for r in results])


async def test_a_multi_pause_hosted_cell_is_answered_by_upstream_tools_until_its_result(
    backend: HostedBackend, api: fa.FakeAnthropic, registry: ToolRegistry
) -> None:
    tools = registry.for_principal("local")
    script = fa.PTCScript(
        code="a, f = await asyncio.gather(t__add(...), t__weather_get_forecast(...)); await t__fails({})",
        pauses=[
            [("t__add", {"a": 2, "b": 3}), ("t__weather_get_forecast", {"city": "Oslo", "days": 2})],  # a parallel pair
            [("t__fails", {"reason": "on purpose"})],  # an error result
        ],
        finish=summary,
    )
    api.fallback = script
    responses, _params, turn = await run_cell(backend, script.code, tools)

    assert len(api.message_requests) == 3 and turn.requests == 3
    final = responses[-1]
    assert final["stop_reason"] == "end_turn"
    [result] = [b for b in final["content"] if b["type"] == "code_execution_tool_result"]
    assert result["tool_use_id"] == script.server_tool_use_id
    stdout = json.loads(result["content"]["stdout"])
    assert stdout[0] == ['{"result": 5}', False]
    assert json.loads(stdout[1][0]) == {"city": "Oslo", "days": 2, "summary": "sunny in Oslo for 2 day(s)"}
    assert stdout[2] == ["Error executing tool fails", True]

    first, second, third = api.message_requests
    declared = {t["name"]: t for t in first["tools"] if "allowed_callers" in t}
    assert set(declared) >= {"t__add", "t__weather_get_forecast", "t__fails"}
    assert all(t["allowed_callers"] == ["code_execution_20260120"] for t in declared.values())
    assert declared["t__add"]["input_schema"]["required"] == ["a", "b"]
    for later in (second, third):
        assert later["tools"] == first["tools"] and later["container"] == fa.DEFAULT_CONTAINER
        assert all(b["type"] == "tool_result" for b in later["messages"][-1]["content"])
    # the parallel pair is answered in one message, each result by its tool_use id
    pair = second["messages"][-1]["content"]
    assert [r["tool_use_id"] for r in pair] == [c["id"] for c in pending_code_calls(second["messages"][-2]["content"])]
    assert third["messages"][-1]["content"][0]["is_error"] is True


async def test_a_paused_response_without_a_container_id_ends_in_the_apis_400(
    backend: HostedBackend, api: fa.FakeAnthropic, registry: ToolRegistry
) -> None:
    script = fa.PTCScript(code="await t__add({'a': 1, 'b': 1})", pauses=[[("t__add", {"a": 1, "b": 1})]],
                          finish=summary, container_id=None)
    api.fallback = script
    with pytest.raises(Unavailable) as caught:
        await run_cell(backend, script.code, registry.for_principal("local"))
    assert "HTTP 400" in caught.value.message and fa.CONTAINER_REQUIRED in caught.value.message
    assert "container" not in api.message_requests[-1]


async def test_a_call_to_a_tool_not_configured_here_is_answered_as_an_error(registry: ToolRegistry) -> None:
    pause = fa.message([fa.server_tool_use("code_execution", {"code": "..."}, id="srvtoolu_9"),
                        fa.client_tool_use("other__x", {}, caller=fa.code_caller("srvtoolu_9"))],
                       stop_reason="tool_use")
    calls = pending_code_calls(pause["content"])
    for tools in (registry.for_principal("local"), None):
        assert await answer_code_calls(calls, tools) == [{
            "type": "tool_result", "tool_use_id": calls[0]["id"],
            "content": "tool 'other__x' is not configured on this mcp-codeexec server", "is_error": True}]


async def test_a_hanging_upstream_is_answered_within_the_pending_timeout_so_the_hosted_cell_resumes(
    backend: HostedBackend, api: fa.FakeAnthropic, registry: ToolRegistry
) -> None:
    script = fa.PTCScript(code="await t__hang({})", pauses=[[("t__hang", {})]], finish=summary)
    api.fallback = script
    responses, _, _ = await run_cell(backend, script.code, registry.for_principal("local"))
    stdout = json.loads(responses[-1]["content"][0]["content"]["stdout"])
    assert stdout == [["tool 't__hang' did not answer within 2s", True]]


def test_only_tool_use_blocks_made_by_the_code_are_pending_code_calls() -> None:
    content = [
        fa.text("x"),
        fa.server_tool_use("code_execution", {"code": ""}, id="srvtoolu_1"),
        fa.client_tool_use("direct_one", {}, caller={"type": "direct"}),
        fa.client_tool_use("plain", {}),
        fa.client_tool_use("from_code", {}, caller=fa.code_caller("srvtoolu_1")),
    ]
    assert [c["name"] for c in pending_code_calls(content)] == ["from_code"]
    assert ptc_tool_params(None) == []


async def test_an_mcp_code_execution_call_on_the_hosted_backend_is_answered_through_its_pauses(
    backend: HostedBackend, api: fa.FakeAnthropic, registry: ToolRegistry
) -> None:
    """The whole road: HostedBackend.code declares the registry's tools, answers each pause on
    them, and returns the one code_execution result the MCP client sees."""
    from mcp_codeexec.backends.base import CallContext
    from mcp_codeexec.schemas import CodeInput
    from tests.support.oracle import assert_hosted_shape

    script = fa.PTCScript(
        code="print(await t__add({'a': 2, 'b': 3}))",
        pauses=[[("t__add", {"a": 2, "b": 3})], [("t__fails", {})]],
        finish=summary,
    )
    api.fallback = script
    outcome = await backend.code(CodeInput(code=script.code), CallContext(principal="local", session_key="s"),
                                 registry.for_principal("local"))
    block = outcome.block.model_dump(mode="json", exclude_none=True)
    assert_hosted_shape(block, "code_execution")
    assert json.loads(block["stdout"]) == [['{"result": 5}', False], ["Error executing tool fails", True]]
    assert len(api.message_requests) == 3
    first = api.message_requests[0]
    assert "tool_choice" not in first
    assert {t["name"] for t in first["tools"] if "allowed_callers" in t} >= {"t__add", "t__fails"}
    assert outcome.container is not None and outcome.container.id == fa.DEFAULT_CONTAINER
