"""The MCP surface, through a real in-memory MCP client, with a backend that runs nothing."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from mcp_codeexec.config import load_settings
from mcp_codeexec.files import FileStore
from mcp_codeexec.server import create_server
from tests.support.dummy_backend import DummyBackend
from tests.support.oracle import assert_hosted_shape

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def backend():
    return DummyBackend()


@pytest.fixture
def server(tmp_path: Path, backend: DummyBackend):
    settings = load_settings(data_dir=str(tmp_path))
    return create_server(settings, backend=backend, store=FileStore(tmp_path / "files"))


async def test_tools_list_names_exactly_the_three_hosted_tools_with_output_schemas(server):
    async with Client(server) as client:
        tools = (await client.list_tools()).tools
    assert [t.name for t in tools] == ["bash_code_execution", "text_editor_code_execution", "code_execution"]
    for tool in tools:
        assert tool.output_schema["type"] == "object"
        assert "$OUTPUT_DIR" in tools[0].description and "/workspace" in tool.description
        assert "no network" in tool.description


async def test_a_bash_call_returns_the_hosted_block_as_structured_content_with_container_meta(server, backend):
    async with Client(server) as client:
        result = await client.call_tool("bash_code_execution", {"command": "echo hi"})
    assert_hosted_shape(result.structured_content, "bash_code_execution")
    assert result.is_error is False
    assert result.meta["container"]["id"] == backend.info.id
    assert result.meta["container"]["expires_at"].endswith("Z")
    assert result.content[0].type == "text"


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"command": 5},
        {"command": ""},
        {"command": "ls", "unknown": 1},
        {"command": "ls", "restart": "maybe"},
        {"command": "x" * 1_000_001},
    ],
)
async def test_malformed_bash_input_is_an_invalid_tool_input_error_block(server, arguments):
    async with Client(server) as client:
        result = await client.call_tool("bash_code_execution", arguments)
    assert result.is_error is True
    assert result.structured_content == {"type": "bash_code_execution_tool_result_error", "error_code": "invalid_tool_input"}


@pytest.mark.parametrize(
    "arguments",
    [
        {"command": "delete", "path": "a"},
        {"command": "view"},
        {"command": "create", "path": "a"},
        {"command": "str_replace", "path": "a", "old_str": "x"},
        {"command": "view", "path": "a", "view_range": [1]},
        {"command": "view", "path": "a", "view_range": "1-2"},
    ],
)
async def test_malformed_editor_input_is_an_invalid_tool_input_error_with_a_message(server, arguments):
    async with Client(server) as client:
        result = await client.call_tool("text_editor_code_execution", arguments)
    assert result.is_error is True
    block = assert_hosted_shape(result.structured_content, "text_editor_code_execution")
    assert block.error_code == "invalid_tool_input"
    assert block.error_message


async def test_an_editor_error_inside_a_container_still_names_the_container(server, backend):
    async with Client(server) as client:
        result = await client.call_tool("text_editor_code_execution", {"command": "view", "path": "nope.txt"})
    assert result.structured_content["error_code"] == "file_not_found"
    assert result.meta["container"]["id"] == backend.info.id


async def test_an_unknown_container_id_is_unavailable_with_container_expired_in_the_text(server):
    async with Client(server) as client:
        result = await client.call_tool("bash_code_execution", {"command": "ls", "container_id": "container_nope"})
    assert result.structured_content == {"type": "bash_code_execution_tool_result_error", "error_code": "unavailable"}
    assert "container_expired" in result.content[0].text


async def test_an_unknown_tool_is_a_protocol_error(server):
    async with Client(server) as client:
        with pytest.raises(MCPError):
            await client.call_tool("code_exec", {"command": "ls"})


async def test_progress_reaches_the_client_when_it_asks_for_it(server):
    updates = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, message))

    async with Client(server) as client:
        await client.call_tool("bash_code_execution", {"command": "sleep 1"}, progress_callback=on_progress)
    assert updates and updates[0][1] == "working"


async def test_unknown_resources_are_not_found(server):
    async with Client(server) as client:
        with pytest.raises(MCPError):
            await client.read_resource("codeexec://files/file_doesnotexist")
        templates = (await client.list_resource_templates()).resource_templates
    assert templates[0].uri_template == "codeexec://files/{file_id}"


async def test_many_calls_at_once_all_come_back(server):
    results = []
    async with Client(server) as client:

        async def one(i: int) -> None:
            results.append(await client.call_tool("bash_code_execution", {"command": f"echo {i}"}))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
    assert len(results) == 50 and not any(r.is_error for r in results)
