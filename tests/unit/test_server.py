"""The MCP surface, through a real in-memory MCP client, with a backend that runs nothing."""

from __future__ import annotations

import base64
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


@pytest.mark.parametrize("blank", ["absent", None, ""])
async def test_absent_null_and_empty_optional_arguments_mean_the_same_everywhere(server, backend, blank):
    def args(base: dict, *names: str) -> dict:
        return base if blank == "absent" else {**base, **{n: blank for n in names}}

    async with Client(server) as client:
        bash = await client.call_tool("bash_code_execution", args({"command": "echo hi"}, "restart", "container_id"))
        await client.call_tool("text_editor_code_execution", {"command": "create", "path": "a.txt", "file_text": "x\n"})
        view = await client.call_tool(
            "text_editor_code_execution", args({"command": "view", "path": "a.txt"}, "view_range", "container_id")
        )
    for result in (bash, view):
        assert result.is_error is False, result.content[0].text
        assert result.meta["container"]["id"] == backend.info.id
    assert bash.structured_content["stdout"] == "echo hi" and view.structured_content["content"] == "x\n"


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


async def test_resources_list_pages_the_file_store_newest_first(tmp_path: Path, backend: DummyBackend):
    # A new stdio session must not receive every file of every earlier session in one answer.
    store = FileStore(tmp_path / "files")
    ids = [store.add_bytes(b"%d" % n, filename=f"f{n}.txt", origin="output", principal="local").id for n in range(250)]
    server = create_server(load_settings(data_dir=str(tmp_path)), backend=backend, store=store)
    pages = []
    async with Client(server) as client:
        cursor = None
        while True:
            page = await client.list_resources(cursor=cursor)
            pages.append([str(r.uri).removeprefix("codeexec://files/") for r in page.resources])
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        with pytest.raises(MCPError):
            await client.list_resources(cursor="not-a-cursor")
    assert [len(p) for p in pages] == [100, 100, 50]
    assert [fid for page in pages for fid in page] == ids[::-1]


class MediaBackend(DummyBackend):
    """Views of `*.png` / `*.pdf` answer the hosted image / pdf view block (base64 content)."""

    PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 5000
    PDF = b"%PDF-1.4\n" + b"x" * 3000

    async def editor(self, request, ctx):
        from mcp_codeexec.backends.base import Outcome
        from mcp_codeexec.schemas import ViewResult

        for suffix, kind, data in ((".png", "image", self.PNG), (".pdf", "pdf", self.PDF)):
            if request.path.endswith(suffix):
                return Outcome(ViewResult(file_type=kind, content=base64.b64encode(data).decode()), self.info)
        return await super().editor(request, ctx)


@pytest.mark.parametrize(("path", "kind", "mime"), [("chart.png", "image", "image/png"), ("report.pdf", "pdf", "application/pdf")])
async def test_an_image_or_pdf_view_keeps_base64_out_of_the_text_and_attaches_the_file(tmp_path: Path, path, kind, mime):
    backend = MediaBackend()
    server = create_server(load_settings(data_dir=str(tmp_path)), backend=backend, store=FileStore(tmp_path / "files"))
    async with Client(server) as client:
        result = await client.call_tool("text_editor_code_execution", {"command": "view", "path": path})
    data = backend.PNG if kind == "image" else backend.PDF
    b64 = base64.b64encode(data).decode()
    assert result.structured_content == {"type": "text_editor_code_execution_view_result", "file_type": kind, "content": b64}
    text = result.content[0]
    assert text.type == "text" and b64[:40] not in text.text and len(text.text) < 300
    assert path in text.text and mime in text.text and f"{len(data)} bytes" in text.text
    attached = result.content[1]
    if kind == "image":
        assert attached.type == "image" and attached.mime_type == mime and attached.data == b64
    else:
        assert attached.type == "resource" and attached.resource.mime_type == mime and attached.resource.blob == b64
    assert len(result.content) == 2


class FloodBackend(DummyBackend):
    """A bash block as the agent makes it for a flood: head, the spill marker, tail; stderr full of
    control characters, which JSON escapes to six characters each."""

    MARKER = "\n[... 2900000 bytes omitted; full output saved to /workspace/.codeexec/spill/7.stdout ...]\n"

    async def bash(self, request, ctx):
        from mcp_codeexec.backends.base import Outcome
        from mcp_codeexec.schemas import BashResult

        stdout = "H" * 50_000 + self.MARKER + "T" * 50_000
        return Outcome(BashResult(stdout=stdout, stderr="\x01" * 30_000, return_code=0), self.info)


def _js_length(value) -> int:
    """What Claude Code measures: JSON.stringify(structuredContent).length (UTF-16 code units)."""
    import json

    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-16-le")) // 2


async def test_a_flood_fits_the_budget_claude_code_is_told_keeping_head_tail_marker_and_spill_path(tmp_path: Path):
    import re

    settings = load_settings(data_dir=str(tmp_path))
    server = create_server(settings, backend=FloodBackend(), store=FileStore(tmp_path / "files"))
    async with Client(server) as client:
        tools = (await client.list_tools()).tools
        result = await client.call_tool("bash_code_execution", {"command": "flood"})
    budget = settings.max_result_chars
    assert 50_000 < budget <= 500_000  # Claude Code: 50,000 for undeclared tools; declared values capped at 500,000
    for tool in tools:  # Claude Code reads the budget from the tool definition
        assert tool.meta["anthropic/maxResultSizeChars"] == budget
    assert result.meta["anthropic/maxResultSizeChars"] == budget
    sc = result.structured_content
    assert_hosted_shape(sc, "bash_code_execution")
    assert _js_length(sc) <= budget and len(result.content[0].text) <= budget
    marker = re.search(r"\n\[\.\.\. (\d+) bytes omitted; full output saved to (\S+) \.\.\.\]\n", sc["stdout"])
    assert marker and marker.group(2) == "/workspace/.codeexec/spill/7.stdout"
    head, tail = sc["stdout"].split(marker.group(0))
    assert head and set(head) == {"H"} and tail and set(tail) == {"T"}
    assert int(marker.group(1)) == 2_900_000 + (50_000 - len(head)) + (50_000 - len(tail))  # the count stays true
    assert "omitted" in sc["stderr"] and sc["stderr"].startswith("\x01")


class EscapedViewBackend(DummyBackend):
    """A view of a file of NULs: 20,000 bytes, but 120,000 characters of JSON (each NUL is \\u0000)."""

    async def editor(self, request, ctx):
        from mcp_codeexec.backends.base import Outcome
        from mcp_codeexec.schemas import ViewResult

        content = ("\x00" * 99 + "\n") * 200
        return Outcome(ViewResult(file_type="text", content=content, num_lines=200, start_line=1, total_lines=200), self.info)


async def test_a_view_whose_json_is_over_the_budget_shows_the_lines_that_fit(tmp_path: Path):
    settings = load_settings(data_dir=str(tmp_path))
    server = create_server(settings, backend=EscapedViewBackend(), store=FileStore(tmp_path / "files"))
    async with Client(server) as client:
        result = await client.call_tool("text_editor_code_execution", {"command": "view", "path": "nul.bin"})
    sc = result.structured_content
    assert_hosted_shape(sc, "text_editor_code_execution")
    assert _js_length(sc) <= settings.max_result_chars
    assert sc["content"] == ("\x00" * 99 + "\n") * sc["num_lines"] and 100 < sc["num_lines"] < 200
    assert sc["total_lines"] == 200 and "omitted" not in sc["content"]  # file text is never mixed with a marker


async def test_many_calls_at_once_all_come_back(server):
    results = []
    async with Client(server) as client:

        async def one(i: int) -> None:
            results.append(await client.call_tool("bash_code_execution", {"command": f"echo {i}"}))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
    assert len(results) == 50 and not any(r.is_error for r in results)
