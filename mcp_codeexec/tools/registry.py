"""The registry of upstream tools: which functions a principal's sandbox code may call, and the
host-side handler that runs them.

    async with ToolRegistry(load_tools_config(path), limits) as registry:
        tools = registry.for_principal("alice")     # CodeTools | None
        text, is_error = await tools.call("weather__get_forecast", {"city": "Paris"})

Each call is checked in this order, each failure an ``is_error`` result whose text says why:
the name is one of *this principal's* functions (another principal's upstream is simply unknown),
the arguments are within ``max_argument_bytes`` and valid against the upstream's ``inputSchema``,
the upstream is up; then the call runs, bounded by ``pending_timeout``, and a result above
``max_result_bytes`` is replaced by a statement of its size (and its first bytes).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio
from anyio.abc import TaskGroup

from ..backends.base import HOST_TIMEOUT_MARGIN, CodeTools, ToolFunction
from .config import ServerConfig, ToolsConfig, ToolsConfigError, function_name
from .upstreams import CallFailed, Upstream, UpstreamTool, result_text, validation_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)

class ToolLimits:
    max_in_flight: int = 16
    """Calls one container may have pending at once (enforced in the sandbox)."""
    pending_timeout: float = 270.0
    """Seconds a call may stay pending: the hosted ``TimeoutError`` is raised in the code after it."""
    max_argument_bytes: int = 1024 * 1024
    max_result_bytes: int = 1024 * 1024
    max_concurrent_per_upstream: int = 32
    """Calls in progress at one upstream session, across every container."""
    start_timeout: float = 30.0
    """Seconds the registry waits at start for each upstream's first connection."""


@dataclass(frozen=True)
class _Entry:
    function: ToolFunction
    upstream: Upstream
    tool: UpstreamTool


class ToolRegistry:
    def __init__(self, config: ToolsConfig, limits: ToolLimits | None = None) -> None:
        self.config = config
        self.limits = limits or ToolLimits()
        self.redact = config.redactor()
        # A message carries at most one argument or result plus its JSON-RPC envelope.
        max_message = 2 * max(self.limits.max_result_bytes, self.limits.max_argument_bytes) + 64 * 1024
        self.upstreams: dict[str, Upstream] = {
            name: Upstream(name, server, redact=self.redact, max_message_bytes=max_message)
            for name, server in config.servers.items()
        }
        self._limiters = {name: anyio.CapacityLimiter(self.limits.max_concurrent_per_upstream) for name in self.upstreams}
        self._tg: TaskGroup | None = None
        self._rejected: set[tuple[str, str]] = set()
        self._listeners: list[Callable[[], Awaitable[None]]] = []
        for upstream in self.upstreams.values():
            upstream.on_change = self._changed

    def on_change(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Await ``listener`` whenever an upstream's allowed tools change (after the first listing too)."""
        self._listeners.append(listener)

    async def _changed(self) -> None:
        for listener in list(self._listeners):
            await listener()

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            for upstream in self.upstreams.values():
                tg.start_soon(upstream.supervise, name=f"upstream {upstream.name}")
            with anyio.move_on_after(self.limits.start_timeout):
                async with anyio.create_task_group() as waiters:
                    for upstream in self.upstreams.values():
                        waiters.start_soon(upstream.first_attempt)
            for upstream in self.upstreams.values():
                if not upstream.connected:
                    log.warning("upstream %s is not up at start: %s", upstream.name, upstream.failure or "still connecting")
            self._check_collisions()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        tg, self._tg = self._tg, None
        if tg is None:
            return
        for upstream in self.upstreams.values():
            upstream.close()
        tg.cancel_scope.cancel()
        await tg.__aexit__(None, None, None)

    def _check_collisions(self) -> None:
        owners: dict[str, str] = {}
        for upstream in self.upstreams.values():
            for tool in upstream.tools:
                fname = function_name(upstream.name, tool)
                if fname in owners:
                    raise ToolsConfigError(
                        f"{self.config.source}: {owners[fname]} and {upstream.name}/{tool} are both `{fname}` "
                        "in the sandbox; rename a server or leave one tool out of allowed_tools"
                    )
                owners[fname] = f"{upstream.name}/{tool}"

    # --- what a principal sees ----------------------------------------------------------------

    def visible(self, principal: str) -> list[Upstream]:
        return [u for u in self.upstreams.values() if u.config.allows(principal)]

    def _entries(self, principal: str) -> dict[str, _Entry]:
        entries: dict[str, _Entry] = {}
        for upstream in self.visible(principal):
            for tool in upstream.tools.values():
                fname = function_name(upstream.name, tool.name)
                if fname in entries:  # a collision that appeared after start (a late upstream)
                    if (upstream.name, tool.name) not in self._rejected:
                        self._rejected.add((upstream.name, tool.name))
                        log.error("%s/%s collides with another function as %s; left out", upstream.name, tool.name, fname)
                    continue
                entries[fname] = _Entry(
                    ToolFunction(fname, tool.description, tool.input_schema, tool.output_schema), upstream, tool
                )
        return entries

    def functions_for(self, principal: str) -> list[ToolFunction]:
        return sorted((e.function for e in self._entries(principal).values()), key=lambda f: f.name)

    def for_principal(self, principal: str) -> CodeTools | None:
        """The functions ``principal``'s code may call (None when no upstream is configured for it)."""
        if not self.visible(principal):
            return None

        async def call(name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
            return await self.call(principal, name, arguments)

        return CodeTools(
            functions=self.functions_for(principal),
            call=call,
            max_in_flight=self.limits.max_in_flight,
            pending_timeout=self.limits.pending_timeout,
        )

    # --- a call -------------------------------------------------------------------------------

    async def call(self, principal: str, name: str, arguments: Any) -> tuple[str, bool]:
        entry = self._entries(principal).get(name)
        if entry is None:
            return self._unknown(principal, name), True
        if not isinstance(arguments, dict):
            return f"{name} takes one dict argument, got {type(arguments).__name__}", True
        try:
            encoded = json.dumps(arguments, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            return f"arguments of {name} are not JSON-serialisable: {exc}", True
        size = len(encoded.encode())
        if size > self.limits.max_argument_bytes:
            return (
                f"arguments of {name} are {size} bytes, above the {self.limits.max_argument_bytes}-byte limit; "
                "send less per call"
            ), True
        problem = validation_error(entry.tool, arguments)
        if problem is not None:
            return f"invalid arguments for {name}: {problem}", True
        upstream = entry.upstream
        log.debug("principal %s calls %s/%s (%d argument bytes)", principal, upstream.name, entry.tool.name, size)
        try:
            async with self._limiters[upstream.name]:
                result = await upstream.call(entry.tool.name, arguments, self.limits.pending_timeout + HOST_TIMEOUT_MARGIN)
        except CallFailed as exc:
            return str(exc), True
        text = self.redact(result_text(result))
        is_error = bool(result.is_error)
        size = len(text.encode())
        if size > self.limits.max_result_bytes:
            head = text.encode()[:1000].decode("utf-8", "ignore")
            return (
                f"the result of {name} is {size} bytes, above the {self.limits.max_result_bytes}-byte limit, and was "
                f"not delivered; ask for less. It began: {head}"
            ), True
        return text, is_error

    def _unknown(self, principal: str, name: str) -> str:
        for upstream in self.visible(principal):
            for tool in upstream.listed - set(upstream.tools):
                if function_name(upstream.name, tool) == name:
                    return f"{name} ({upstream.name}/{tool}) is not on the allowed_tools list of server {upstream.name!r}"
        for upstream in self.visible(principal):
            if name.startswith(f"{function_name(upstream.name, '')}") and not upstream.connected:
                return f"{name}: upstream MCP server {upstream.name!r} is down ({upstream.failure or 'connecting'})"
        return f"no tool function named {name!r}; the code_execution tool description lists the available ones"


def server_summary(name: str, server: ServerConfig, redact: Callable[[str], str]) -> str:
    """A log/doctor line for a server, without credentials."""
    where = f"{server.command} {' '.join(server.args)}".strip() if server.command else server.display_url()
    who = "everyone" if server.principals is None else ", ".join(server.principals)
    where = redact(where or "")
    return f"{name}: {server.transport} {where} (tools: {'all' if server.allowed_tools is None else len(server.allowed_tools)}; principals: {who})"


def limits_from(settings: Any) -> ToolLimits:
    """The registry limits of a ``Settings``."""
    return ToolLimits(
        max_in_flight=settings.tools_max_in_flight,
        pending_timeout=settings.tools_pending_timeout,
        max_argument_bytes=settings.tools_max_argument_bytes,
        max_result_bytes=settings.tools_max_result_bytes,
    )


def registry_from_settings(settings: Any) -> ToolRegistry:
    """The registry of ``settings.tools_config`` (an empty one without it), to ``async with``;
    raises ``ToolsConfigError`` for a file that cannot be used."""
    from .config import load_tools_config

    return ToolRegistry(load_tools_config(settings.tools_config), limits_from(settings))
