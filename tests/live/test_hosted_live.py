"""Opt-in: the hosted backend against the real Anthropic API (runs only when ANTHROPIC_API_KEY is set).

Costs a few cents of tokens and container time. Model and tool version come from the usual
settings (``MCP_CODEEXEC_HOSTED_MODEL``, ``MCP_CODEEXEC_HOSTED_TOOL_VERSION``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mcp_codeexec.backends.base import CallContext
from mcp_codeexec.backends.hosted import HostedBackend
from mcp_codeexec.config import load_settings
from mcp_codeexec.files import FileStore
from mcp_codeexec.schemas import BashInput, EditorInput
from tests.support.oracle import assert_hosted_shape

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.live,
    pytest.mark.skipif(not os.environ.get("ANTHROPIC_API_KEY"), reason="set ANTHROPIC_API_KEY to run live tests"),
]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def backend(tmp_path: Path):
    with FileStore(tmp_path / "files") as store:
        async with HostedBackend(load_settings(data_dir=str(tmp_path)), store) as b:
            yield b


async def test_a_live_session_runs_bash_and_the_editor_in_one_reused_hosted_container(backend):
    ctx = CallContext(principal="local", session_key="live")

    first = await backend.bash(BashInput(command="python3 --version"), ctx)
    assert_hosted_shape(first.block.model_dump(exclude_none=True), "bash_code_execution")
    assert first.block.return_code == 0 and "Python 3" in first.block.stdout
    assert first.container is not None
    assert first.meta["usage"]["input_tokens"] > 0 and first.meta["hosted"]["duration_ms"] > 0

    created = await backend.editor(EditorInput(command="create", path="live_check.txt", file_text="alpha\nbeta\n"), ctx)
    assert_hosted_shape(created.block.model_dump(exclude_none=True), "text_editor_code_execution")
    replaced = await backend.editor(
        EditorInput(command="str_replace", path="live_check.txt", old_str="beta", new_str="gamma"), ctx
    )
    assert_hosted_shape(replaced.block.model_dump(exclude_none=True), "text_editor_code_execution")
    viewed = await backend.editor(EditorInput(command="view", path="live_check.txt"), ctx)
    assert_hosted_shape(viewed.block.model_dump(exclude_none=True), "text_editor_code_execution")
    assert "gamma" in viewed.block.content
    assert {o.container.id for o in (first, created, replaced, viewed)} == {first.container.id}


async def test_a_live_output_file_is_downloadable_by_its_hosted_id(backend):
    ctx = CallContext(principal="local", session_key="live-files")

    outcome = await backend.bash(BashInput(command="printf 'x,y\\n1,2\\n' > \"$OUTPUT_DIR/live.csv\""), ctx)

    assert_hosted_shape(outcome.block.model_dump(exclude_none=True), "bash_code_execution")
    (produced,) = outcome.files
    record = await backend.fetch_file(produced.file_id)
    assert record.id == produced.file_id
    assert backend.store.blob_path(record.id).read_bytes() == b"x,y\n1,2\n"
