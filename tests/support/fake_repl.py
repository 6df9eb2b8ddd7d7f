"""A stand-in for the sandbox's Python REPL, run on the host: for testing the host side of
programmatic tool calling without Docker (the real REPL runs in the container).

``FakeReplBackend.code`` executes the cell with top-level ``await`` in a namespace that persists
across calls, with each ``CodeTools`` function bound as ``async def name(input: dict) -> str``,
the way the sandbox exposes them: a call waits at most ``pending_timeout`` (then the hosted
``TimeoutError`` text), an error result raises ``ToolError``. Never use it for untrusted code.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import traceback
from typing import Any

from mcp_codeexec.backends.base import CallContext, CodeTools, Outcome
from mcp_codeexec.schemas import CodeResult
from tests.support.dummy_backend import DummyBackend


class ToolError(Exception):
    pass


class FakeReplBackend(DummyBackend):
    name = "fake-repl"

    def __init__(self) -> None:
        super().__init__()
        self.namespace: dict[str, Any] = {"__name__": "__main__"}
        self.cells: list[str] = []

    async def code(self, request: Any, ctx: CallContext, tools: CodeTools | None = None) -> Outcome:
        self.cells.append(request.code)
        namespace = self.namespace
        for function in tools.functions if tools else []:
            namespace[function.name] = _bind(function.name, tools)  # type: ignore[arg-type]
        stdout, stderr = io.StringIO(), io.StringIO()
        return_code = 0
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                compiled = compile(request.code, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                result = eval(compiled, namespace)  # test-only stand-in: runs the tests' own cells
                if asyncio.iscoroutine(result):
                    await result
            except BaseException:  # noqa: BLE001 - the cell's failure is its stderr and return code
                traceback.print_exc(limit=-1)
                return_code = 1
        return Outcome(CodeResult(stdout=stdout.getvalue(), stderr=stderr.getvalue(), return_code=return_code), self.info)


def _bind(name: str, tools: CodeTools) -> Any:
    async def function(input: dict[str, Any]) -> str:
        try:
            text, is_error = await asyncio.wait_for(tools.call(name, input), tools.pending_timeout)
        except TimeoutError:
            raise TimeoutError(
                f"Calling tool [{name!r}] timed out (no response after {tools.pending_timeout:g}s)."
            ) from None
        if is_error:
            raise ToolError(text)
        return text

    function.__name__ = name
    return function
