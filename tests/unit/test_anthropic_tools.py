"""The Messages adapter and the Python API's surface, over a backend that runs nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from anthropic.types import Message, ToolParam

from mcp_codeexec import Sandbox
from mcp_codeexec.anthropic_tools import run_tool_use, tool_definitions, tool_results
from mcp_codeexec.config import load_settings
from mcp_codeexec.schemas import BashError, BashResult, CodeResult, EditorError
from tests.support.dummy_backend import DummyBackend
from tests.support.oracle import assert_hosted_shape

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(tmp_path / "none.toml"))
    return load_settings(data_dir=str(tmp_path / "data"))


def test_tool_definitions_are_the_three_hosted_tools_as_client_tool_params(settings) -> None:
    tools = tool_definitions(settings)
    assert [t["name"] for t in tools] == ["bash_code_execution", "text_editor_code_execution", "code_execution"]
    for tool in tools:
        assert set(tool) == set(ToolParam.__annotations__) & {"name", "description", "input_schema"}
        schema = tool["input_schema"]
        assert schema["type"] == "object" and "container_id" not in schema["properties"]
        assert ("code" if tool["name"] == "code_execution" else "command") in schema["required"]
        json.dumps(tool)  # plain JSON, sendable as is
    assert set(tools[0]["input_schema"]["properties"]) == {"command", "restart"}
    assert {"view", "create", "str_replace"} <= set(tools[1]["input_schema"]["properties"]["command"]["enum"])
    assert set(tools[2]["input_schema"]["properties"]) == {"code", "restart"}


async def test_a_code_execution_tool_use_runs_in_the_sandbox_and_answers_the_hosted_block(settings) -> None:
    async with Sandbox(settings, backend=DummyBackend()) as sb:
        result = await run_tool_use(sb, {"type": "tool_use", "id": "toolu_c", "name": "code_execution",
                                         "input": {"code": "print(1)"}})
        direct = await sb.code("x = 1")
    block = json.loads(result["content"][0]["text"])
    assert_hosted_shape(block, "code_execution")
    assert result["is_error"] is False and block["stdout"] == "print(1)"
    assert direct == CodeResult(stdout="x = 1", stderr="", return_code=0)


async def test_a_tool_use_becomes_a_tool_result_carrying_the_hosted_block(settings) -> None:
    backend = DummyBackend()
    async with Sandbox(settings, backend=backend) as sb:
        result = await run_tool_use(sb, {"type": "tool_use", "id": "toolu_1", "name": "bash_code_execution",
                                         "input": {"command": "echo hi"}})
        assert sb.container_id == backend.info.id  # known after the first call on lazy backends
    assert result["type"] == "tool_result" and result["tool_use_id"] == "toolu_1" and result["is_error"] is False
    [text] = result["content"]
    block = json.loads(text["text"])
    assert_hosted_shape(block, "bash_code_execution")
    assert block == {"type": "bash_code_execution_result", "stdout": "echo hi", "stderr": "", "return_code": 0, "content": []}


async def test_errors_come_back_as_error_blocks_flagged_is_error(settings) -> None:
    async with Sandbox(settings, backend=DummyBackend()) as sb:
        missing = await run_tool_use(sb, {"type": "tool_use", "id": "t1", "name": "text_editor_code_execution",
                                          "input": {"command": "view", "path": "nope.txt"}})
        bad = await run_tool_use(sb, {"type": "tool_use", "id": "t2", "name": "bash_code_execution", "input": {"cmd": "x"}})
        not_a_dict = await run_tool_use(sb, {"type": "tool_use", "id": "t3", "name": "bash_code_execution", "input": "ls"})
        unknown = await run_tool_use(sb, {"type": "tool_use", "id": "t4", "name": "web_search", "input": {}})
    assert missing["is_error"] and json.loads(missing["content"][0]["text"])["error_code"] == "file_not_found"
    assert_hosted_shape(json.loads(missing["content"][0]["text"]), "text_editor_code_execution")
    for result in (bad, not_a_dict):
        block = json.loads(result["content"][0]["text"])
        assert result["is_error"] and block == {"type": "bash_code_execution_tool_result_error", "error_code": "invalid_tool_input"}
    assert unknown["is_error"] and "unknown tool" in unknown["content"][0]["text"]


async def test_tool_results_answers_every_tool_use_of_an_sdk_message_in_order(settings) -> None:
    message = Message.model_validate({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test", "stop_reason": "tool_use",
        "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1},
        "content": [
            {"type": "text", "text": "Let me write and read a file."},
            {"type": "tool_use", "id": "toolu_a", "name": "text_editor_code_execution",
             "input": {"command": "create", "path": "a.txt", "file_text": "one\n"}},
            {"type": "tool_use", "id": "toolu_b", "name": "text_editor_code_execution",
             "input": {"command": "view", "path": "a.txt"}},
        ],
    })
    async with Sandbox(settings, backend=DummyBackend()) as sb:
        results = await tool_results(sb, message)
    assert [r["tool_use_id"] for r in results] == ["toolu_a", "toolu_b"]
    created, viewed = (json.loads(r["content"][0]["text"]) for r in results)
    assert created == {"type": "text_editor_code_execution_create_result", "is_file_update": False}
    assert viewed["content"] == "one\n" and viewed["num_lines"] == 1


async def test_the_python_api_returns_result_models_and_error_models_not_exceptions(settings) -> None:
    async with Sandbox(settings, backend=DummyBackend()) as sb:
        ran = await sb.bash("ls")
        empty = await sb.bash("   ")
        created = await sb.create("x.py", "print(1)\n")
        gone = await sb.view("missing.txt")
        with pytest.raises(ValueError):
            await sb.call_tool("web_search", {})
    assert isinstance(ran, BashResult) and ran.stdout == "ls"
    assert isinstance(empty, BashError) and empty.error_code == "invalid_tool_input"
    assert created.is_file_update is False
    assert isinstance(gone, EditorError) and gone.error_code == "file_not_found"


async def test_settings_overrides_are_validated_and_a_sandbox_never_keeps_a_pool(settings) -> None:
    sb = Sandbox(settings, backend=DummyBackend(), call_timeout=7, pool_size=3)
    assert sb.settings.call_timeout == 7 and sb.settings.pool_size == 3
    assert Sandbox(settings, backend=DummyBackend()).settings.pool_size == 0
    with pytest.raises(ValueError):
        Sandbox(settings, call_timeout=-1)
    with pytest.raises(RuntimeError):
        _ = Sandbox(settings).backend  # only inside `async with`


async def test_upload_stores_the_file_and_hands_it_to_the_backend(settings, tmp_path: Path) -> None:
    attached: list[tuple[str, str]] = []

    class Recording(DummyBackend):
        async def attach_file(self, file_id: str, container_id: str, principal: str) -> str:
            attached.append((file_id, container_id))
            return "/workspace/inputs/x"

    source = tmp_path / "data.csv"
    source.write_text("a,b\n")
    async with Sandbox(settings, backend=Recording()) as sb:
        from_bytes = await sb.upload(b"raw", filename="raw.bin")
        from_path = await sb.upload(source)
        assert await sb.download(from_bytes) == b"raw"
        assert await sb.download(from_path) == b"a,b\n"
        with pytest.raises(ValueError):
            await sb.upload(b"no name")
        with pytest.raises(FileNotFoundError):
            await sb.download("file_doesnotexist000000000")
        cid = sb.container_id
    assert attached == [(from_bytes, cid), (from_path, cid)]
