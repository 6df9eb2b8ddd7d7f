"""A backend that runs nothing: for testing the MCP surface without Docker."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from mcp_codeexec.backends.base import CallContext, ContainerInfo, Outcome
from mcp_codeexec.errors import ContainerExpired, FileNotFound
from mcp_codeexec.schemas import BashInput, BashResult, CodeInput, CodeResult, CreateResult, EditorInput, ViewResult


class DummyBackend:
    name = "dummy"

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.calls: list[tuple[str, CallContext]] = []
        self.info = ContainerInfo("container_" + "0" * 24, datetime.now(timezone.utc) + timedelta(days=30))

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def end_session(self, session_key: str) -> None:
        pass

    async def attach_file(self, file_id: str, container_id: str, principal: str) -> str:
        return "/workspace/inputs/x"

    async def bash(self, request: BashInput, ctx: CallContext) -> Outcome:
        self.calls.append((request.command, ctx))
        if request.container_id and request.container_id != self.info.id:
            raise ContainerExpired(request.container_id)
        if ctx.progress is not None:
            await ctx.progress(1.0, "working")
        return Outcome(BashResult(stdout=request.command, stderr="", return_code=0), self.info)

    async def code(self, request: CodeInput, ctx: CallContext, tools=None) -> Outcome:
        self.calls.append((request.code, ctx))
        return Outcome(CodeResult(stdout=request.code, stderr="", return_code=0), self.info)

    async def editor(self, request: EditorInput, ctx: CallContext) -> Outcome:
        if request.command == "create":
            existed = request.path in self.files
            self.files[request.path] = request.file_text or ""
            return Outcome(CreateResult(is_file_update=existed), self.info)
        if request.path not in self.files:
            err = FileNotFound(f"{request.path}: no such file")
            err.container = self.info
            raise err
        text = self.files[request.path]
        n = len(text.splitlines())
        return Outcome(ViewResult(file_type="text", content=text, num_lines=n, start_line=1, total_lines=n), self.info)
