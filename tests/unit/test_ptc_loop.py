"""Programmatic tool calling run locally: the Messages adapter's loop, the example, and
``Sandbox(tools=...)``, against the loopback fake Messages API and a host-side stand-in REPL."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.lib.tools import beta_tool
from anthropic.types import beta

from mcp_codeexec import Sandbox
from mcp_codeexec.anthropic_tools import CODE_TOOL, ptc_tools, run_ptc_loop
from mcp_codeexec.config import load_settings
from mcp_codeexec.schemas import CodeInput
from tests.fakes import fake_anthropic as fa
from tests.support.fake_repl import FakeReplBackend

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ptc_loop.py"

CELL = """\
import asyncio, json
warehouses = json.loads(await list_warehouses({}))
temps = await asyncio.gather(*(get_temperature({"city": w["city"]}) for w in warehouses))
best = max((json.loads(t) for t in temps), key=lambda t: t["celsius"])
print(best["city"], best["celsius"])
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(tmp_path / "none.toml"))
    return load_settings(data_dir=str(tmp_path / "data"))


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch):
    with fa.FakeAnthropic() as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
        yield server


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("ptc_loop_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_turn(code: str) -> dict[str, Any]:
    return fa.message([fa.text("I'll compute it in code."), fa.client_tool_use(CODE_TOOL, {"code": code}, id="toolu_code1")],
                      stop_reason="tool_use")


async def test_the_example_loop_keeps_every_intermediate_tool_result_out_of_the_models_context(
    settings, api: fa.FakeAnthropic, capsys: pytest.CaptureFixture[str]
) -> None:
    example = load_example()
    api.push(code_turn(CELL), fa.message([fa.text("Lima is the warmest (24.0 °C).")]))
    backend = FakeReplBackend()
    answer = await example.main("Which warehouse is warmest?", Sandbox(settings, backend=backend))

    assert answer == "Lima is the warmest (24.0 °C)."
    first, second = api.message_requests
    # the code-only tools are not offered to the model as tools: they are functions of the code tool
    assert [t["name"] for t in first["tools"]] == [CODE_TOOL]
    description = first["tools"][0]["description"]
    assert "- await get_temperature({city: string}) -> str: Current temperature of a city." in description
    assert "- await list_warehouses({}) -> str: List the warehouses." in description
    assert first["tools"][0]["input_schema"]["required"] == ["code"]

    # the model gets the cell's output, in the hosted result block, and nothing else
    [result] = second["messages"][-1]["content"]
    assert result["tool_use_id"] == "toolu_code1" and result["is_error"] is False
    block = json.loads(result["content"][0]["text"])
    beta.BetaCodeExecutionResultBlock.model_validate(block)  # the hosted block, by the SDK's class
    assert block == {"type": "code_execution_result", "stdout": "Lima 24.0\n", "stderr": "", "return_code": 0, "content": []}
    everything_sent = json.dumps(api.message_requests)
    for intermediate in ("-3.5", "11.0", "\"w1\"", "Oslo", "Paris"):
        assert intermediate not in everything_sent
    assert not any(b.get("type") == "tool_use" and b["name"] != CODE_TOOL
                   for m in second["messages"] if isinstance(m["content"], list) for b in m["content"])
    assert backend.cells == [CELL]
    out = capsys.readouterr().out
    assert "[2 model requests; 4 tool calls made from code: ['list_warehouses', 'get_temperature', 'get_temperature', 'get_temperature']]" in out


async def test_a_tool_allowing_direct_and_code_callers_is_both_a_tool_and_a_function(settings, api: fa.FakeAnthropic) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def lookup(key: str) -> dict[str, Any]:
        calls.append(("lookup", {"key": key}))
        return {"key": key, "value": len(key)}

    tools = [{"name": "lookup", "description": "Look a key up.", "allowed_callers": ["direct", "code_execution_20260521"],
              "input_schema": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}}]
    api.push(
        fa.message([fa.client_tool_use("lookup", {"key": "abc"}, id="toolu_d1")], stop_reason="tool_use"),
        code_turn("import json\nprint(json.loads(await lookup({'key': 'hello'}))['value'])"),
        code_turn("await lookup({'key': 7})"),
        fa.message([fa.text("ok")]),
    )
    async with anthropic.AsyncAnthropic() as client, Sandbox(settings, backend=FakeReplBackend()) as sb:
        result = await run_ptc_loop(client, sb, model="claude-test",
                                    messages=[{"role": "user", "content": "go"}], tools=tools,
                                    implementations={"lookup": lookup})
    assert result.requests == 4 and result.code_calls == ["lookup", "lookup"]
    first, second, third, fourth = api.message_requests
    assert [t["name"] for t in first["tools"]] == [CODE_TOOL, "lookup"]
    assert "allowed_callers" not in first["tools"][1]
    assert "- await lookup({key: string}) -> str: Look a key up." in first["tools"][0]["description"]
    [direct] = second["messages"][-1]["content"]
    assert direct == {"type": "tool_result", "tool_use_id": "toolu_d1", "is_error": False,
                      "content": [{"type": "text", "text": '{"key": "abc", "value": 3}'}]}
    assert json.loads(third["messages"][-1]["content"][0]["content"][0]["text"])["stdout"] == "5\n"
    # invalid arguments raise inside the code, with the reason; the implementation never runs for them
    failed = json.loads(fourth["messages"][-1]["content"][0]["content"][0]["text"])
    assert failed["return_code"] == 1 and "invalid arguments for lookup: 7 is not of type 'string' at key" in failed["stderr"]
    assert calls == [("lookup", {"key": "abc"}), ("lookup", {"key": "hello"})]


async def test_sdk_beta_tools_with_allowed_callers_become_functions(settings) -> None:
    @beta_tool(allowed_callers=["code_execution_20260120"])
    def shout(text: str) -> str:
        """Upper-case a text."""
        return text.upper()

    split = ptc_tools([{"type": "code_execution_20260120", "name": "code_execution"}, shout])
    assert [t["name"] for t in split.api_tools] == [CODE_TOOL]
    assert split.code_tools is not None and [f.name for f in split.code_tools.functions] == ["shout"]
    assert await split.code_tools.call("shout", {"text": "hi"}) == ("HI", False)
    with pytest.raises(ValueError, match="has no implementation"):
        ptc_tools([{"name": "nope", "input_schema": {"type": "object"}, "allowed_callers": ["code_execution_20260120"]}])


async def test_sandbox_tools_are_python_callables_the_code_calls_and_per_call_tools_add_to_them(settings) -> None:
    async def fetch_rows(table: str, limit: int = 2) -> list[dict[str, Any]]:
        """Rows of a table."""
        return [{"table": table, "n": i} for i in range(limit)]

    def fail() -> str:
        raise RuntimeError("database is down")

    async with Sandbox(settings, backend=FakeReplBackend(), tools={"fetch_rows": fetch_rows, "fail": fail}) as sb:
        assert sb.code_tools is not None and [f.name for f in sb.code_tools.functions] == ["fetch_rows", "fail"]
        outcome = await sb._run_code(CodeInput(code="import json\nprint(len(json.loads(await fetch_rows({'table': 't', 'limit': '3'}))))"))
        assert outcome.block.stdout == "3\n"
        outcome = await sb._run_code(CodeInput(code="await fail({})"))
        assert outcome.block.return_code == 1 and "ToolError: RuntimeError: database is down" in outcome.block.stderr
        outcome = await sb._run_code(CodeInput(code="print(await extra({}), await fetch_rows({'table': 'x', 'limit': 0}))"),
                                     tools={"extra": lambda: "more"})
        assert outcome.block.stdout == "more []\n"
