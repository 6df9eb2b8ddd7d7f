"""The Python API against real sandboxes: hosted result models, errors as data, files, lifetime."""

from __future__ import annotations

import docker
import pytest

from mcp_codeexec import Sandbox
from mcp_codeexec.errors import Unavailable
from mcp_codeexec.schemas import BashError, BashResult, CreateResult, EditorError, StrReplaceResult, ViewResult
from tests.support.oracle import assert_hosted_shape

pytestmark = pytest.mark.anyio


def container_exists(cid: str) -> bool:
    client = docker.from_env()
    try:
        return bool(client.containers.list(ignore_removed=True, all=True, filters={"name": f"mcp-codeexec-{cid}"}))
    finally:
        client.close()


def hosted(block, tool: str):
    assert_hosted_shape(block.model_dump(exclude_none=True), tool)
    return block


async def test_bash_and_the_editor_return_the_hosted_result_models(settings) -> None:
    async with Sandbox(settings) as sb:
        assert sb.container_id and sb.container_id.startswith("container_")
        ran = hosted(await sb.bash("echo out; echo err >&2; cd /tmp; export X=1; exit 3"), "bash_code_execution")
        assert isinstance(ran, BashResult)
        assert (ran.stdout, ran.stderr, ran.return_code) == ("out\n", "err\n", 3)
        kept = await sb.bash("pwd; echo $X")
        assert kept.stdout == "/tmp\n1\n"

        created = hosted(await sb.create("src/app.py", "a = 1\nb = 2\n"), "text_editor_code_execution")
        assert isinstance(created, CreateResult) and created.is_file_update is False
        replaced = hosted(await sb.str_replace("src/app.py", "b = 2", "b = 3"), "text_editor_code_execution")
        assert isinstance(replaced, StrReplaceResult) and replaced.lines == ["-b = 2", "+b = 3"]
        viewed = hosted(await sb.view("/workspace/src/app.py", view_range=(2, -1)), "text_editor_code_execution")
        assert isinstance(viewed, ViewResult) and viewed.content == "b = 3\n" and viewed.start_line == 2


async def test_failures_are_hosted_error_models_not_exceptions(settings) -> None:
    async with Sandbox(settings, call_timeout=2) as sb:
        missing = hosted(await sb.view("no/such/file.txt"), "text_editor_code_execution")
        assert isinstance(missing, EditorError) and missing.error_code == "file_not_found"
        await sb.create("d.txt", "x\nx\n")
        ambiguous = await sb.str_replace("d.txt", "x", "y")
        assert isinstance(ambiguous, EditorError) and ambiguous.error_code == "invalid_tool_input"
        slow = hosted(await sb.bash("sleep 60"), "bash_code_execution")
        assert slow == BashError(error_code="execution_time_exceeded")
        after = await sb.bash("echo still usable")
        assert after.stdout == "still usable\n"


async def test_uploads_land_in_inputs_and_output_files_download_by_id(settings, tmp_path) -> None:
    local = tmp_path / "numbers.csv"
    local.write_text("n\n1\n2\n3\n")
    async with Sandbox(settings) as sb:
        by_path = await sb.upload(local)
        by_bytes = await sb.upload(b"\x00\x01binary", filename="blob.bin")
        assert by_path.startswith("file_") and by_bytes.startswith("file_")
        # os.listdir, not `ls PATH`: Debian's 2022 runsc answers statx with EINVAL (see SECURITY.md).
        listed = await sb.bash(
            "python3 -c \"import csv, os; print(*sorted(os.listdir('/workspace/inputs')), sep='\\n'); "
            "print(sum(int(r['n']) for r in csv.DictReader(open('inputs/numbers.csv'))))\""
        )
        assert listed.stdout == "blob.bin\nnumbers.csv\n6\n"
        made = await sb.bash("printf 'total,6\\n' > $OUTPUT_DIR/summary.csv")
        [output] = made.content
        assert await sb.download(output.file_id) == b"total,6\n"
        assert sb.last_outcome is not None and sb.last_outcome.files[0].filename == "summary.csv"
        assert await sb.download(by_bytes) == b"\x00\x01binary"


async def test_the_container_is_removed_at_the_end_unless_kept_and_can_be_reattached(settings) -> None:
    async with Sandbox(settings) as sb:
        temporary = sb.container_id
    assert not container_exists(temporary)

    async with Sandbox(settings, keep=True) as sb:
        await sb.create("notes.txt", "persisted\n")
        kept = sb.container_id
    assert container_exists(kept)
    async with Sandbox(settings, container_id=kept) as sb:
        assert sb.container_id == kept
        assert (await sb.view("notes.txt")).content == "persisted\n"
    assert container_exists(kept)  # attached containers are kept by default
    async with Sandbox(settings, container_id=kept, keep=False) as sb:
        pass
    assert not container_exists(kept)


async def test_an_unknown_container_or_a_missing_engine_raises_at_async_with(settings, monkeypatch) -> None:
    with pytest.raises(Unavailable, match="container_expired"):
        async with Sandbox(settings, container_id="container_" + "0" * 24):
            pass
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(Unavailable, match="not reachable"):
        async with Sandbox(settings):
            pass
