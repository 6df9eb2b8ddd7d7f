"""``parity``: the report pairs the two backends' results step by step and diffs what must agree.

The docker side is a small in-memory stand-in; the hosted side is the real HostedBackend talking to
the fake API, whose "model" makes exactly the requested call and answers from the same stand-in.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mcp_codeexec.backends.base import CallContext, ContainerInfo, Outcome, ProducedFile
from mcp_codeexec.backends.hosted import HostedBackend
from mcp_codeexec.config import load_settings
from mcp_codeexec.errors import FileNotFound, InvalidToolInput, Unavailable
from mcp_codeexec.parity import SCRIPT, register_cli, run_parity
from mcp_codeexec.schemas import (
    BashInput,
    BashOutputBlock,
    BashResult,
    CodeInput,
    CodeOutputBlock,
    CodeResult,
    CreateResult,
    EditorInput,
    StrReplaceResult,
    ViewResult,
)
from tests.fakes import fake_anthropic as fa

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class MiniSandbox:
    """Just enough of a sandbox to answer the parity script."""

    def __init__(self, python: str = "Python 3.11.12") -> None:
        self.python = python
        self.files: dict[str, str] = {}

    def bash(self, command: str) -> tuple[str, str, int, list[tuple[str, bytes]]]:
        if command.startswith("python3 --version"):
            return f"{self.python}\nx86_64\n", "", 0, []
        if "undefined_variable" in command:
            return (
                "",
                "Traceback (most recent call last):\nNameError: name 'undefined_variable' is not defined\n",
                1,
                [],
            )
        if "$OUTPUT_DIR" in command:
            return "written\n", "", 0, [("parity.csv", b"x,y\n1,2\n")]
        if command == "python3 parity/hello.py":
            return self.files["parity/hello.py"].replace("print('", "").replace("')", ""), "", 0, []
        return f"ran {len(command)} characters\n", "", 0, []

    def code(self, code: str) -> tuple[str, str, int, list[tuple[str, bytes]]]:
        """A tiny REPL: the parity cells run for real in one namespace; the long sleep is the
        interrupted result the cell limit gives."""
        import contextlib
        import io
        import traceback

        if "time.sleep(" in code:
            return "sleeping\n", "KeyboardInterrupt\n\ndetection_timeout: interrupted\n", 1, []
        namespace = self.__dict__.setdefault("namespace", {})
        out, err = io.StringIO(), io.StringIO()
        outdir = self.__dict__.setdefault("outdir", Path(__import__("tempfile").mkdtemp()))
        code = code.replace("os.environ['OUTPUT_DIR']", repr(str(outdir)))
        rc = 0
        with contextlib.redirect_stdout(out):
            try:
                exec(compile(code, "<cell>", "exec"), namespace)
            except Exception:  # noqa: BLE001 - the mini REPL reports it like the real one
                err.write(traceback.format_exc())
                rc = 1
        files = [(p.name, p.read_bytes()) for p in outdir.iterdir()]
        for p in outdir.iterdir():
            p.unlink()
        return out.getvalue(), err.getvalue(), rc, files

    def editor(self, request: dict[str, Any]) -> dict[str, Any]:
        path, command = request["path"], request["command"]
        if command == "create":
            existed = path in self.files
            self.files[path] = request["file_text"]
            return CreateResult(is_file_update=existed).model_dump()
        if path not in self.files:
            raise FileNotFound(f"{path}: no such file")
        text = self.files[path]
        if command == "view":
            n = len(text.splitlines())
            return ViewResult(file_type="text", content=text, num_lines=n, start_line=1, total_lines=n).model_dump()
        if text.count(request["old_str"]) != 1:
            raise InvalidToolInput(f"old_str not found in {path}")
        lines = text.splitlines()
        index = next(i for i, line in enumerate(lines) if request["old_str"] in line)
        self.files[path] = text.replace(request["old_str"], request["new_str"])
        new_line = lines[index].replace(request["old_str"], request["new_str"])
        return StrReplaceResult(
            old_start=index + 1,
            old_lines=1,
            new_start=index + 1,
            new_lines=1,
            lines=[f"-{lines[index]}", f"+{new_line}"],
        ).model_dump()


class MiniBackend:
    """The docker side of the test: the Backend protocol over a MiniSandbox."""

    name = "docker"

    def __init__(self, sandbox: MiniSandbox) -> None:
        self.sandbox = sandbox
        self.info = ContainerInfo("mini", datetime.now(UTC) + timedelta(days=30))
        self.closed = False

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        self.closed = True

    async def end_session(self, session_key: str) -> None:
        pass

    async def attach_file(self, file_id: str, container_id: str, principal: str) -> str:
        raise NotImplementedError

    async def bash(self, request: BashInput, ctx: CallContext) -> Outcome:
        stdout, stderr, rc, files = self.sandbox.bash(request.command)
        produced = [ProducedFile(f"file_local{i}", name, len(data), "text/csv") for i, (name, data) in enumerate(files)]
        block = BashResult(
            stdout=stdout, stderr=stderr, return_code=rc, content=[BashOutputBlock(file_id=p.file_id) for p in produced]
        )
        return Outcome(block, self.info, produced)

    async def code(self, request: CodeInput, ctx: CallContext, tools: Any = None) -> Outcome:
        stdout, stderr, rc, files = self.sandbox.code(request.code)
        produced = [ProducedFile(f"file_repl{i}", name, len(data), "text/plain") for i, (name, data) in enumerate(files)]
        block = CodeResult(
            stdout=stdout, stderr=stderr, return_code=rc, content=[CodeOutputBlock(file_id=p.file_id) for p in produced]
        )
        return Outcome(block, self.info, produced)

    async def editor(self, request: EditorInput, ctx: CallContext) -> Outcome:
        data = self.sandbox.editor(request.model_dump(exclude_none=True))
        model = {
            "text_editor_code_execution_create_result": CreateResult,
            "text_editor_code_execution_view_result": ViewResult,
        }.get(data["type"], StrReplaceResult)
        return Outcome(model.model_validate(data), self.info)


def hosted_executor(api: fa.FakeAnthropic, sandbox: MiniSandbox):
    def execute(tool: str, tool_input: dict[str, Any]) -> dict[str, Any]:
        if tool == "bash_code_execution":
            stdout, stderr, rc, files = sandbox.bash(tool_input["command"])
            ids = [api.add_file(data, name, "text/csv") for name, data in files]
            return fa.bash_result(stdout, stderr, rc, ids)
        if tool == "code_execution":
            stdout, stderr, rc, files = sandbox.code(tool_input["code"])
            ids = [api.add_file(data, name, "text/plain") for name, data in files]
            return fa.code_result(stdout, stderr, rc, ids)
        try:
            return sandbox.editor(tool_input)
        except FileNotFound as exc:
            return fa.editor_error("file_not_found", exc.message)
        except InvalidToolInput as exc:
            return fa.editor_error("invalid_tool_input", exc.message)

    return execute


@pytest.fixture
def api():
    with fa.FakeAnthropic() as server:
        yield server


def settings_for(tmp_path: Path, api: fa.FakeAnthropic):
    return load_settings(
        data_dir=str(tmp_path), ANTHROPIC_API_KEY="k", anthropic_base_url=api.base_url, progress_interval=0
    )


def factory(docker: MiniSandbox | Exception):
    def make(settings, store):
        if settings.backend == "hosted":
            return HostedBackend(settings, store)
        if isinstance(docker, Exception):
            raise docker
        return MiniBackend(docker)

    return make


async def test_identical_backends_agree_on_every_step(tmp_path, api):
    api.fallback = fa.executor(hosted_executor(api, MiniSandbox()))
    settings = settings_for(tmp_path, api)

    report = await run_parity(settings, settings, backend_factory=factory(MiniSandbox()))

    assert report.unavailable == {}
    assert [r.step.name for r in report.differences] == []
    assert report.exit_code == 0
    assert len(api.message_requests) == len(SCRIPT)
    output_row = next(r for r in report.rows if r.step.name == "an $OUTPUT_DIR file")
    assert output_row.hosted.value["files"] == output_row.docker.value["files"] == [["parity.csv", 8]]
    text = report.to_text(width=100)
    assert text.splitlines()[0].startswith("docker") and "| hosted" in text.splitlines()[0]
    assert f"{len(SCRIPT)} of {len(SCRIPT)} steps agree" in text
    assert "input tokens" in text


async def test_a_different_python_version_is_shown_side_by_side_as_the_only_difference(tmp_path, api):
    api.fallback = fa.executor(hosted_executor(api, MiniSandbox(python="Python 3.11.12")))
    settings = settings_for(tmp_path, api)

    report = await run_parity(settings, settings, backend_factory=factory(MiniSandbox(python="Python 3.11.7")))

    assert [r.step.name for r in report.differences] == ["python version"]
    assert report.exit_code == 1
    text = report.to_text(width=100, only_differences=True)
    assert "== python version [DIFFERENT]" in text
    assert "library versions" not in text
    line = next(line for line in text.splitlines() if "3.11.7" in line)
    assert line.index("3.11.7") < line.index("|") < line.index("3.11.12")
    data = report.to_dict()
    assert data["agree"] == len(SCRIPT) - 1
    json.dumps(data)


async def test_a_backend_that_cannot_start_is_reported_and_the_other_still_runs(tmp_path, api):
    api.fallback = fa.executor(hosted_executor(api, MiniSandbox()))
    settings = settings_for(tmp_path, api)

    report = await run_parity(settings, settings, backend_factory=factory(Unavailable("no Docker engine")))

    assert report.unavailable == {"docker": "no Docker engine"}
    assert report.exit_code == 2
    assert all(r.docker is None and r.hosted is not None for r in report.rows)
    assert report.differences == []
    text = report.to_text()
    assert "docker backend unavailable: no Docker engine" in text
    assert "== python version [not compared]" in text
    assert f"{len(SCRIPT)} steps could not be compared" in text


async def test_a_hosted_side_without_a_key_is_reported_as_unavailable(tmp_path, api, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    settings = load_settings(data_dir=str(tmp_path), anthropic_base_url=api.base_url)

    report = await run_parity(settings, settings, backend_factory=factory(MiniSandbox()))

    assert "ANTHROPIC_API_KEY" in report.unavailable["hosted"]
    assert api.requests == []


def test_the_parity_subcommand_is_registered_with_its_options():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    register_cli(sub, load_settings)

    args = parser.parse_args(["parity", "--json", "--only-differences", "--model", "claude-x"])

    assert callable(args.func) and args.json and args.only_differences and args.model == "claude-x"
