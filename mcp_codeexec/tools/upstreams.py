"""One persistent MCP client session per upstream server, restarted when it dies.

``Upstream.supervise`` runs for the life of the registry: it connects (``mcp.Client`` over the
bounded stdio transport or streamable HTTP), lists the tools, keeps the session open until it
breaks (the stdio process exits or misbehaves, a call finds the connection closed), then
reconnects after a back-off (0.5 s doubling to 30 s, reset by a good connection). While it is down
a call waits a little for it (``READY_WAIT``) and otherwise gets an error result that says why.

While connected it follows the upstream's tool list: ``notifications/tools/list_changed`` (on a
2026-07-28 connection through a ``subscriptions/listen`` stream, on older ones as a plain
notification) re-lists the tools, so names, schemas and the allow-list applied to them are those of
the latest listing; the registry reads them on every call, so the next cell's functions and
``list_tools()`` follow.

Everything shown outside (errors, logs) goes through the config's ``Redactor``: the upstream's
``env`` and ``headers`` values never leave this module.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import mcp_types as types
from jsonschema import SchemaError
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ListenNotSupportedError, SubscriptionLost
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from .config import ServerConfig
from .transport import StdioFailure, bounded_stdio

log = logging.getLogger(__name__)

READY_WAIT = 10.0
"""Seconds a call waits for an upstream that is (re)connecting before it is answered 'down'."""
CONNECT_TIMEOUT = 30.0
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
LIST_CHANGED = "notifications/tools/list_changed"


@dataclass(frozen=True)
class UpstreamTool:
    """An allowed tool of a connected upstream."""

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    validator: Any | None
    """A jsonschema validator of ``input_schema`` (None: the upstream's schema is itself invalid)."""


class CallFailed(Exception):
    """A call that did not reach a result; ``str()`` is the (redacted) text the code sees."""


class Upstream:
    connect_mode = "auto"
    """``mcp.Client``'s protocol negotiation: discover a 2026-07-28 server, else the initialize handshake."""

    def __init__(
        self,
        name: str,
        config: ServerConfig,
        *,
        redact: Callable[[str], str],
        max_message_bytes: int,
        ready_wait: float = READY_WAIT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.name = name
        self.config = config
        self._redact = redact
        self.max_message_bytes = max_message_bytes
        self.ready_wait = ready_wait
        self.connect_timeout = connect_timeout
        self.tools: dict[str, UpstreamTool] = {}
        """The allowed tools, as of the latest connection."""
        self.listed: set[str] = set()
        """Every tool name the upstream listed (allowed or not)."""
        self.failure: str | None = None
        """Why the upstream is down (None while connected or before the first attempt ends)."""
        self.connections = 0
        self.relists = 0
        """Tool listings taken after a list_changed (not counting those of each connection)."""
        self.on_change: Callable[[], Awaitable[None]] | None = None
        """Awaited when the allowed tools' names, descriptions or schemas change (the server tells its clients)."""
        self._changed = anyio.Event()
        self._client: Client | None = None
        self._broken = anyio.Event()
        self._ready = anyio.Event()
        self._attempted = anyio.Event()
        self._status = StdioFailure()
        self._closing = False

    # --- the session ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def first_attempt(self) -> None:
        """Wait until the first connection attempt has succeeded or failed."""
        await self._attempted.wait()

    def close(self) -> None:
        self._closing = True
        self._broken.set()

    async def supervise(self) -> None:
        delay = BACKOFF_FIRST
        while not self._closing:
            try:
                async with self._session() as client:
                    with anyio.fail_after(self.connect_timeout):
                        await self._load_tools(client)
                    if self._broken.is_set():  # lost while listing its tools
                        raise ConnectionError("the connection ended while listing tools")
                    self._client, self.failure = client, None
                    self.connections += 1
                    self._ready.set()
                    self._attempted.set()
                    delay = BACKOFF_FIRST
                    log.info("upstream %s connected (%d allowed tools)", self.name, len(self.tools))
                    async with anyio.create_task_group() as followers:
                        followers.start_soon(self._follow_changes, client)
                        await self._broken.wait()
                        followers.cancel_scope.cancel()
            except Exception as exc:  # noqa: BLE001 - any failure of an upstream is its down-state, said in calls
                self.failure = self._describe(exc)
            finally:
                self._client = None
                if self._ready.is_set():  # callers arriving now wait for the next connection
                    self._ready = anyio.Event()
                self._broken = anyio.Event()
            if self._closing:
                return
            self.failure = self.failure or self._describe(None)
            self._attempted.set()
            log.warning("upstream %s is down: %s; reconnecting in %.1fs", self.name, self.failure, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _lost(self) -> None:
        """The transport ended: new calls wait for the restart instead of using the dead session."""
        self._client = None
        if self._ready.is_set():
            self._ready = anyio.Event()
        self._broken.set()

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[Client]:
        self._status = StdioFailure(on_end=self._lost)
        cfg = self.config
        if cfg.command is not None:
            transport = bounded_stdio(
                cfg.command, cfg.args, cfg.env, cfg.cwd, max_line_bytes=self.max_message_bytes, status=self._status
            )
            async with Client(transport, mode=self.connect_mode, message_handler=self._on_message) as client:
                yield client
        else:
            assert cfg.url is not None
            async with (
                create_mcp_http_client(headers=dict(cfg.headers) or None) as http,
                Client(streamable_http_client(cfg.url, http_client=http), mode=self.connect_mode,
                       message_handler=self._on_message) as client,
            ):
                yield client

    # --- following the tool list ---------------------------------------------------------------

    async def _on_message(self, message: Any) -> None:
        """Handshake-era connections: ``notifications/tools/list_changed`` arrives here."""
        inner = getattr(message, "root", message)
        if isinstance(inner, types.ToolListChangedNotification) or getattr(inner, "method", None) == LIST_CHANGED:
            self._changed.set()
        await anyio.lowlevel.checkpoint()

    async def _follow_changes(self, client: Client) -> None:
        """Re-list the tools on each change the upstream announces, for this connection's life."""
        try:
            async with client.listen(tools_list_changed=True) as subscription:
                if subscription.honored is not None and subscription.honored.tools_list_changed:
                    async for _event in subscription:
                        await self._relist(client)
                    return
        except ListenNotSupportedError:
            pass  # an older protocol: the plain notification (``_on_message``) says when
        except (MCPError, SubscriptionLost, TimeoutError) as exc:
            log.info("upstream %s offers no tool-change stream (%s); its tools are re-listed on reconnect",
                     self.name, self._redact(_exc_text(exc)))
            return
        while True:
            await self._changed.wait()
            self._changed = anyio.Event()
            await self._relist(client)

    async def _relist(self, client: Client) -> None:
        before = set(self.tools)
        try:
            with anyio.fail_after(self.connect_timeout):
                await self._load_tools(client)
        except (MCPError, TimeoutError, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            log.warning("upstream %s announced new tools but re-listing failed: %s", self.name, self._redact(_exc_text(exc)))
            return
        self.relists += 1
        added, removed = sorted(set(self.tools) - before), sorted(before - set(self.tools))
        log.info("upstream %s tools changed: %d allowed (added %s, removed %s)", self.name, len(self.tools),
                 added or "none", removed or "none")

    async def _load_tools(self, client: Client) -> None:
        listed: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(100):  # a paginator that never ends cannot hang the connection
            page = await client.list_tools(cursor=cursor)
            listed.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        allowed = self.config.allowed_tools
        self.listed = {t.name for t in listed}
        if allowed is not None:
            missing = sorted(set(allowed) - self.listed)
            if missing:
                log.warning("upstream %s does not list allowed tools %s", self.name, missing)
        before = _signature(self.tools)
        self.tools = {
            t.name: _tool(t, self.name) for t in listed if allowed is None or t.name in allowed
        }
        if self.on_change is not None and _signature(self.tools) != before:
            await self.on_change()

    def _describe(self, exc: BaseException | None) -> str:
        parts: list[str] = []
        if self._status.reason:
            parts.append(self._status.reason)
        if exc is not None:
            parts.append(_exc_text(exc))
        if self._status.returncode is not None and self.config.command is not None:
            parts.append(f"exit status {self._status.returncode}")
        tail = self._status.stderr_tail()
        if tail:
            parts.append(f"stderr: {tail}")
        return self._redact("; ".join(parts) or "the connection ended")

    # --- calls ------------------------------------------------------------------------------

    async def call(self, tool: str, arguments: dict[str, Any], timeout: float) -> types.CallToolResult:
        """Call ``tool``; raises ``CallFailed`` (with the text to show) when there is no result."""
        deadline = anyio.current_time() + timeout
        client = self._client
        if client is None:
            with anyio.move_on_after(min(self.ready_wait, timeout)):
                await self._ready.wait()
            client = self._client
        if client is None:
            raise CallFailed(f"upstream MCP server {self.name!r} is down ({self.failure or 'connecting'}); retry later")
        remaining = max(0.0, deadline - anyio.current_time())
        try:
            with anyio.fail_after(remaining if math.isfinite(remaining) else None):
                return await client.call_tool(tool, arguments)
        except TimeoutError:
            raise CallFailed(f"upstream MCP server {self.name!r} did not answer {tool!r} within {timeout:g}s") from None
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                if self._client is client:  # not a late failure of a session already replaced
                    self._broken.set()
                raise CallFailed(
                    f"upstream MCP server {self.name!r} went away during {tool!r} ({self._describe(None)}); "
                    "it is being restarted"
                ) from None
            raise CallFailed(self._redact(f"upstream MCP server {self.name!r} answered error {exc.code}: {exc}")) from None
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            if self._client is client:
                self._broken.set()
            raise CallFailed(f"upstream MCP server {self.name!r} failed: {self._redact(_exc_text(exc))}") from None
        except (ValidationError, RuntimeError) as exc:
            # The SDK's checks of the result: not the protocol's shape, structured content not
            # matching the tool's outputSchema, input requests past the round limit.
            raise CallFailed(
                self._redact(f"upstream MCP server {self.name!r} returned an unusable result for {tool!r}: {_exc_text(exc)[:500]}")
            ) from None


def _signature(tools: dict[str, UpstreamTool]) -> list[tuple[str, str, str, str]]:
    """What the code_execution tool's description and ``list_tools()`` show of ``tools``."""
    return sorted((t.name, t.description, json.dumps(t.input_schema, sort_keys=True),
                   json.dumps(t.output_schema, sort_keys=True)) for t in tools.values())


def _exc_text(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_exc_text(e) for e in exc.exceptions)
    if isinstance(exc, TimeoutError):
        return "no answer within the connect timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _tool(tool: types.Tool, server: str) -> UpstreamTool:
    schema = tool.input_schema if isinstance(tool.input_schema, dict) else {"type": "object"}
    validator: Any | None
    try:
        cls = validator_for(schema)
        cls.check_schema(schema)
        validator = cls(schema)
    except SchemaError as exc:
        log.warning("upstream %s tool %s has an invalid inputSchema (%s); arguments are not checked", server, tool.name, exc.message)
        validator = None
    description = (tool.description or tool.title or "").strip().splitlines()
    return UpstreamTool(
        name=tool.name,
        description=description[0][:200] if description else "",
        input_schema=schema,
        output_schema=tool.output_schema,
        validator=validator,
    )


def validation_error(tool: UpstreamTool, arguments: dict[str, Any]) -> str | None:
    """Why ``arguments`` do not match the tool's inputSchema (None: they do)."""
    if tool.validator is None:
        return None
    errors = list(tool.validator.iter_errors(arguments))
    if not errors:
        return None
    best = best_match(errors)
    where = "/".join(str(p) for p in best.absolute_path)
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{best.message}{f' at {where}' if where else ''}{more}"


def result_text(result: types.CallToolResult) -> str:
    """The text the sandbox code receives: ``structuredContent`` as JSON when present, else the
    text content (other content kinds are named, not inlined)."""
    if result.structured_content is not None and not result.is_error:
        return json.dumps(result.structured_content, ensure_ascii=False)
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, (types.ImageContent, types.AudioContent)):
            parts.append(f"[{block.type} {block.mime_type}, {len(block.data)} base64 characters not shown]")
        elif isinstance(block, types.EmbeddedResource):
            res = block.resource
            text = getattr(res, "text", None)
            parts.append(text if isinstance(text, str) else f"[resource {res.uri} ({res.mime_type or 'binary'}) not shown]")
        elif isinstance(block, types.ResourceLink):
            parts.append(f"[resource link {block.uri}]")
    return "\n".join(parts)
