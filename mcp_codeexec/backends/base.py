"""The Backend protocol: what the MCP server needs from anything that executes the three tools.

A backend returns the hosted result block (or the hosted error block for failures that happen
inside a known container, such as ``file_not_found``) wrapped in an ``Outcome`` that also says
which container ran it and which stored files it produced. Failures before a container is known
are raised as ``errors.CodeExecError``; the server maps them in one place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from ..schemas import BashInput, CodeInput, EditorInput, ResultBlock

ProgressFn = Callable[[float, str], Awaitable[None]]
"""``await progress(elapsed_seconds, message)`` — message is a short text (output so far, capped)."""

ToolHandler = Callable[[str, dict[str, Any]], Awaitable[tuple[str, bool]]]
"""``await call(name, input)`` -> (result text, is_error): runs a tool that sandbox code called."""


@dataclass(frozen=True)
class ToolFunction:
    """A function the sandbox code may call (an async global of the REPL, ``await name(input)``)."""

    name: str
    """A Python identifier, e.g. ``weather__get_forecast``."""
    description: str
    """One line."""
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema,
                "output_schema": self.output_schema}


HOST_TIMEOUT_MARGIN = 2.0
"""Seconds a host-side tool call may run past ``CodeTools.pending_timeout``: the code's own timer
fires first and raises the hosted ``TimeoutError`` text there; the host's bound only reclaims the call."""


@dataclass
class CodeTools:
    """The tools a ``code_execution`` call's code may call, and the host-side handler that runs them."""

    functions: list[ToolFunction]
    call: ToolHandler
    max_in_flight: int = 16
    """Tool calls from the code waiting for their result at once (per container)."""
    pending_timeout: float = 270.0
    """Seconds a call waits; then ``TimeoutError("Calling tool ['<name>'] timed out ...")`` in the code."""


@dataclass(frozen=True)
class CallContext:
    principal: str
    """Who is calling: ``"local"`` over stdio, the token's principal over HTTP."""
    session_key: str
    """Identity of the MCP session; its first call lazily gets a container of its own."""
    progress: ProgressFn | None = None
    paced: bool = False
    """A token holder's call to a shared HTTP server: per-principal pacing applies."""
    skills: tuple[Any, ...] | None = None
    """Skills selected for a container this call creates (``skills.SkillRef`` or its dict form);
    None: the default set (folder skills plus the principal's uploads). A container that exists
    already keeps its own set: naming a different one is an error, never a silent change."""
    mounts: Any = None
    """The operator-declared named mounts the request's ``_meta`` selects (mount_choice.py), as sent."""


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    expires_at: datetime
    skills: tuple[dict[str, str], ...] = ()
    """The loaded skills as the hosted ``container.skills``: ``{skill_id, type, version}``."""

    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"id": self.id, "expires_at": self.expires_at.isoformat().replace("+00:00", "Z")}
        if self.skills:
            meta["skills"] = [dict(s) for s in self.skills]
        return meta


@dataclass(frozen=True)
class ProducedFile:
    """A file a call produced, already in the file store."""

    file_id: str
    filename: str
    size: int
    mime_type: str


@dataclass
class Outcome:
    block: ResultBlock
    container: ContainerInfo | None = None
    files: list[ProducedFile] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    """Extra ``_meta`` entries (e.g. token usage for the hosted backend)."""
    partial_output: str | None = None
    """For a timed-out call: what the command printed before it was stopped (shown to humans only)."""


class Backend(Protocol):
    name: str

    async def start(self) -> None:
        """Connect, reconcile state left by an earlier server, start background work (pool, reaper)."""

    async def bash(self, request: BashInput, ctx: CallContext) -> Outcome: ...

    async def editor(self, request: EditorInput, ctx: CallContext) -> Outcome: ...

    async def code(self, request: CodeInput, ctx: CallContext, tools: CodeTools | None = None) -> Outcome:
        """Run a cell in the container's persistent Python interpreter (``code_execution``)."""
        ...

    async def attach_file(self, file_id: str, container_id: str, principal: str) -> str:
        """Place a stored upload inside the container; return its path there."""
        ...

    async def end_session(self, session_key: str) -> None:
        """The MCP session is gone. Its container is kept (until expiry) for reuse by id."""

    async def aclose(self) -> None: ...
