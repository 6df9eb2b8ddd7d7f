"""``parity`` end to end on a real Docker engine.

The docker side is the real SandboxBackend. The hosted side is the real HostedBackend and the real
anthropic SDK talking to the fake API, whose "model" makes exactly the requested call and runs it
in a second real sandbox (output files go through the fake Files API). Both sides therefore run
the same image, so every step of the parity script must agree: this checks the whole plumbing
(input relay, result passthrough, container reuse, output files, error mapping) on real results.
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal

from mcp_codeexec.backends.base import CallContext
from mcp_codeexec.backends.sandbox import SandboxBackend
from mcp_codeexec.config import Settings, load_settings
from mcp_codeexec.errors import CodeExecError, error_block
from mcp_codeexec.files import FileStore
from mcp_codeexec.parity import SCRIPT, run_parity
from mcp_codeexec.schemas import BashInput, CodeInput, EditorInput
from tests.fakes import fake_anthropic as fa
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import remove_installation

pytestmark = pytest.mark.anyio


def sandbox_settings(data_dir: Path, **overrides: Any) -> Settings:
    return load_settings(
        data_dir=str(data_dir),
        pool_size=0,
        call_timeout=30.0,
        reap_interval_seconds=3600.0,
        runtime=os.environ.get("MCP_CODEEXEC_RUNTIME") or None,
        **overrides,
    )


async def test_docker_and_a_hosted_stand_in_running_the_same_sandbox_agree_on_every_step(tmp_path, docker_engine):
    os.environ.setdefault("MCP_CODEEXEC_CONFIG", str(tmp_path / "no-config.toml"))
    # A small cell limit on both sides: the parity script's over-the-limit cell is interrupted in seconds.
    stand_in = sandbox_settings(tmp_path / "stand-in", code_cell_timeout=2.0)
    docker_side = sandbox_settings(tmp_path / "docker", code_cell_timeout=2.0)
    try:
        with fa.FakeAnthropic() as api, FileStore(stand_in.files_dir) as stand_in_store:
            async with SandboxBackend(stand_in, stand_in_store) as sandbox, BlockingPortal() as portal:
                ctx = CallContext(principal="local", session_key="hosted-stand-in")

                def execute(tool: str, tool_input: dict[str, Any]) -> dict[str, Any]:
                    """Runs in the fake API's thread; the sandbox lives on the test's event loop."""
                    try:
                        if tool == "bash_code_execution":
                            outcome = portal.call(sandbox.bash, BashInput(**tool_input), ctx)
                        elif tool == "code_execution":
                            outcome = portal.call(sandbox.code, CodeInput(**tool_input), ctx)
                        else:
                            outcome = portal.call(sandbox.editor, EditorInput(**tool_input), ctx)
                    except CodeExecError as exc:
                        return error_block(tool, exc).model_dump(exclude_none=True)
                    content = outcome.block.model_dump(exclude_none=True)
                    if content["type"] in ("bash_code_execution_result", "code_execution_result"):
                        content["content"] = [
                            {
                                "type": content["type"].replace("_result", "_output"),
                                "file_id": api.add_file(
                                    stand_in_store.blob_path(f.file_id).read_bytes(),
                                    f.filename,
                                    f.mime_type or mimetypes.guess_type(f.filename)[0] or "",
                                ),
                            }
                            for f in outcome.files
                        ]
                    return content

                api.fallback = fa.executor(execute)
                hosted_side = load_settings(
                    data_dir=str(tmp_path / "hosted"),
                    ANTHROPIC_API_KEY="sk-test",
                    anthropic_base_url=api.base_url,
                )
                report = await run_parity(docker_side, hosted_side)

        assert report.unavailable == {}
        assert [(r.step.name, r.docker.value, r.hosted.value) for r in report.differences] == []
        assert report.exit_code == 0
        python = report.rows[0].docker.value["stdout"]
        assert python.startswith("Python 3.11")
        files = next(r for r in report.rows if r.step.name == "an $OUTPUT_DIR file").hosted.value["files"]
        assert files == [["parity.csv", 8]]
        requests = api.message_requests
        assert len(requests) == len(SCRIPT)
        assert "container" not in requests[0] and all(r["container"] == fa.DEFAULT_CONTAINER for r in requests[1:])
        for row in report.rows:  # whatever came back through the hosted path is schema-identical
            value = row.hosted.value
            if "result" in value:
                assert_hosted_shape(value["result"], row.step.tool)
    finally:
        remove_installation(stand_in)
        remove_installation(docker_side)
