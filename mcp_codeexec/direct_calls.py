"""Hosted-tool calls answered by the stdio transport itself, past the SDK's per-request pipeline.

Through the SDK a warm ``tools/call`` costs the server ~0.7 ms of CPU before any sandbox work
(measured with a backend that runs nothing): the line is parsed into pydantic models, handed
through two memory streams to the dispatcher, validated three more times (surface, params, result
sieve), wrapped in per-request session, context and middleware objects, and dumped back — about
ten event-loop turns a call. A plain call of a hosted tool needs none of that to be answered
exactly: this module takes such a line before the SDK sees it, runs the same handler body
(``server.answer_call``), shapes the result with the SDK's own per-version serializer and writes
the JSON-RPC reply.

Only what is plainly a hosted-tool call of an accepted connection is taken; everything else goes
to the SDK unchanged, which therefore still owns every error reply, the handshake, the other
methods and notifications:

- the connection's era is known: a handshake-era one after the SDK accepted ``initialize`` (its
  reply named the version), a 2026-07-28 one when the first request carried the envelope (then
  each call's own envelope is checked by the SDK's inbound ladder);
- ``jsonrpc`` is ``"2.0"``, the id an int or a string not in flight here, the params those of
  ``tools/call`` by the SDK's own surface validation, the tool one of the hosted tools this server
  publishes, no ``progressToken`` (progress reporting stays with the SDK's session);
- no middleware beyond the SDK's default OpenTelemetry one, and no OpenTelemetry tracer
  configured (its spans would be skipped).

JSON-RPC semantics kept: ``notifications/cancelled`` for a call answered here cancels it (its
command is killed in the sandbox) and no reply is sent; a call cut short by the transport closing
is answered ``Connection closed`` like the SDK's; a handler failure becomes the SDK's own error
reply (``handler_exception_to_error_data``). At end of input the calls in flight are cancelled
(as the SDK cancels its own) before the SDK is told, so the sandbox is still there to clean up.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import InboundLadderRejection, classify_inbound_request
from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data
from mcp_types import methods as _methods
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from . import mount_choice
from .backends.base import CallContext

log = logging.getLogger(__name__)

PROTOCOL_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
CONNECTION_CLOSED = -32000
_CALL_KEYS = frozenset({"name", "arguments", "_meta"})
_MESSAGE_KEYS = frozenset({"jsonrpc", "id", "method", "params"})
_CLOSED = {"error": {"code": CONNECTION_CLOSED, "message": "Connection closed"}}

Write = Callable[[str], Awaitable[None]]


def available(server: Any) -> bool:
    """Whether answering past the SDK loses nothing on this server: only the SDK's default
    OpenTelemetry middleware, no tracer configured (its spans would be skipped), no cache hint
    on ``tools/call``."""
    if not getattr(server, "direct_tools", None) or getattr(server, "shutdown", None) is None:
        return False
    from mcp.server._otel import OpenTelemetryMiddleware
    from opentelemetry import trace

    if [type(m) for m in server.middleware] != [OpenTelemetryMiddleware]:
        return False
    if type(trace.get_tracer_provider()).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider"):
        return False
    return "tools/call" not in getattr(server, "cache_hints", {})


class DirectCalls:
    """One stdio connection's direct path: ``take`` each inbound line, ``saw`` each outbound one."""

    def __init__(self, server: Any, write: Write, tg: anyio.abc.TaskGroup) -> None:
        self._server = server
        self._write = write
        self._tg = tg
        self._era: str | None = None  # "legacy" | "modern" once known; "off" if never to be used
        self._version: str | None = None  # the handshake era's negotiated version
        self._init_id: Any = None
        self._opened = False  # the first request (which decides the SDK's era) went by
        self._in_flight: dict[Any, Call] = {}
        self.answered = 0

    # -- the connection's era, from the lines going by
    @property
    def watching_replies(self) -> bool:
        return self._era is None and self._init_id is not None

    def saw(self, line: str) -> None:
        """An outbound line, while the handshake's reply is awaited: it names the version."""
        if not self.watching_replies:
            return
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):  # deep nesting: the SDK parses it
            return
        if not isinstance(message, dict) or message.get("id") != self._init_id:
            return
        version = (message.get("result") or {}).get("protocolVersion") if isinstance(message.get("result"), dict) else None
        if isinstance(version, str) and version not in MODERN_PROTOCOL_VERSIONS:
            self._era, self._version = "legacy", version
        else:
            self._era = "off"  # refused, or a version this path does not know: the SDK serves all

    def _learn_era(self, message: dict[str, Any]) -> None:
        if "id" not in message or not isinstance(message.get("method"), str):
            return  # notifications before the first request do not decide the era
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if message["method"] == "initialize":
            if self._init_id is None:
                self._opened = True
                self._init_id = message["id"]
            else:
                self._era = "off"  # a second handshake before the first was answered: the SDK's to sort out
        elif not self._opened:
            # The SDK's rule: the first request decides; an enveloped one (not initialize) opens a
            # 2026-07-28 connection, anything else a handshake-era one, served once initialized.
            self._opened = True
            if isinstance(meta, dict) and PROTOCOL_VERSION_KEY in meta:
                self._era = "modern"

    # -- inbound lines
    def take(self, line: str) -> bool:
        """True when this line is answered here (the SDK must not see it)."""
        if self._era == "off":
            return False
        if self._era is None:
            if '"method"' in line:
                try:
                    message = json.loads(line)
                except (ValueError, RecursionError):
                    return False
                if isinstance(message, dict):
                    self._learn_era(message)
            return False
        if '"tools/call"' in line:
            return self._take_call(line)
        if '"notifications/cancelled"' in line and self._in_flight:
            return self._take_cancel(line)
        return False

    def _take_call(self, line: str) -> bool:
        message = _decode(line)
        if message is None or message.get("method") != "tools/call":
            return False
        rid = message.get("id")
        if not plain_id(rid) or rid in self._in_flight:
            return False
        if self._era == "modern":
            route = classify_inbound_request(message)
            if isinstance(route, InboundLadderRejection):
                return False
            version = route.protocol_version
        else:
            version = self._version
        call = hosted_call(self._server, message, version)
        if call is None:
            return False
        name, arguments, meta = call
        pending = Call(rid, version)
        self._in_flight[rid] = pending
        self._tg.start_soon(self._answer, pending, name, arguments, meta)
        return True

    def _take_cancel(self, line: str) -> bool:
        message = _decode(line)
        call = self._in_flight.get(cancelled_id(message)) if message is not None else None
        if call is None:
            return False
        call.cancelled = True
        call.scope.cancel()
        return True

    async def close(self) -> None:
        """End of input: cancel the calls in flight (the SDK does the same with its own) and wait
        until each has settled, while the sandbox is still there."""
        for call in list(self._in_flight.values()):
            call.scope.cancel()
        while self._in_flight:
            await anyio.sleep(0.01)
        log.debug("direct calls: %d answered past the SDK", self.answered)

    # -- answering
    async def _answer(self, call: Call, name: str, arguments: dict[str, Any], meta: dict[str, Any] | None) -> None:
        try:
            with call.scope:
                reply = await self._run(name, arguments, meta, call.version)
            if call.scope.cancelled_caught:  # by the peer (no reply), or by ``close``
                reply = _CLOSED
        except anyio.get_cancelled_exc_class():  # the transport is being torn down
            if not call.cancelled:
                await self._send(call.rid, _CLOSED)
            raise
        else:
            if not call.cancelled:
                await self._send(call.rid, reply)
        finally:
            self._in_flight.pop(call.rid, None)

    async def _run(self, name: str, arguments: dict[str, Any], meta: dict[str, Any] | None, version: str) -> dict[str, Any]:
        ctx = CallContext(principal="local", session_key="local:process", mounts=mount_choice.raw_selection(meta))
        return await answer(self._server, name, arguments, ctx, version)

    async def _send(self, rid: Any, reply: dict[str, Any]) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await self._write(_line(rid, reply))
            except BrokenPipeError:  # the client is gone; end of input follows
                log.debug("reply to %r not sent: the client closed its end", rid)
                return
            self.answered += 1


class Call:
    __slots__ = ("rid", "version", "scope", "cancelled")

    def __init__(self, rid: Any, version: str) -> None:
        self.rid = rid
        self.version = version
        self.scope = anyio.CancelScope()
        self.cancelled = False  # by the peer: never answered


def _line(rid: Any, body: dict[str, Any]) -> str:
    return reply_text(rid, body) + "\n"


def _decode(line: str) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return message if isinstance(message, dict) else None


# -- shared with the HTTP transport's direct path (json_first.py)
def plain_id(rid: Any) -> bool:
    """A request id this path can answer under (JSON-RPC's int or string; never a bool)."""
    return not isinstance(rid, bool) and isinstance(rid, int | str)


def cancelled_id(message: dict[str, Any]) -> Any:
    """The request id a well-formed ``notifications/cancelled`` names (else None: a list or an
    object would not even be a dict key)."""
    params = message.get("params")
    if message.get("method") != "notifications/cancelled" or "id" in message or not isinstance(params, dict):
        return None
    rid = params.get("requestId")
    return rid if plain_id(rid) else None


def hosted_call(server: Any, message: dict[str, Any], version: str | None) -> tuple[str, dict[str, Any], dict[str, Any] | None] | None:
    """``(tool, arguments, _meta)`` when ``message`` is a plain hosted-tool call a direct path may
    answer at ``version`` exactly as the SDK would; None leaves it to the SDK (which then also
    answers whatever is wrong with it)."""
    if version is None or message.get("jsonrpc") != "2.0" or not message.keys() <= _MESSAGE_KEYS:
        return None
    params = message.get("params")
    if not isinstance(params, dict) or not params.keys() <= _CALL_KEYS:
        return None
    meta = params.get("_meta")
    if meta is not None and (not isinstance(meta, dict) or "progressToken" in meta):
        return None  # progress reporting stays with the SDK's session
    if version not in MODERN_PROTOCOL_VERSIONS and PROTOCOL_VERSION_KEY in (meta or {}):
        return None  # an envelope on a handshake-era connection: the SDK refuses it
    name = params.get("name")
    if name not in server.direct_tools or server.app_state is None:
        return None
    try:
        _methods.validate_client_request("tools/call", version, params)
    except (ValidationError, KeyError):
        return None
    arguments = params.get("arguments")
    if arguments is not None and not isinstance(arguments, dict):
        return None
    return name, arguments or {}, meta


async def answer(server: Any, name: str, arguments: dict[str, Any], ctx: CallContext, version: str) -> dict[str, Any]:
    """The JSON-RPC reply body (``result`` or ``error``) the SDK would give this call at ``version``."""
    from .server import answer_call

    try:
        result = await answer_call(server.app_state, server.shutdown, name, arguments, ctx)
    except MCPError as exc:
        return {"error": exc.error.model_dump(by_alias=True, mode="json", exclude_none=True)}
    except Exception as exc:  # the SDK's exception-to-wire mapping (its dispatcher's), applied here
        error = handler_exception_to_error_data(exc)
        if error is None:
            log.exception("tools/call %s raised", name)
            error = types.ErrorData(code=0, message=str(exc))
        return {"error": error.model_dump(by_alias=True, mode="json", exclude_none=True)}
    return {"result": _shape(server, result, version)}


def reply_text(rid: Any, body: dict[str, Any]) -> str:
    text = json.dumps({"jsonrpc": "2.0", "id": rid, **body}, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: kept as its JSON escape, the bytes stay valid UTF-8
        text = json.dumps({"jsonrpc": "2.0", "id": rid, **body}, separators=(",", ":"))
    return text


def _shape(server: Any, result: types.CallToolResult, version: str) -> dict[str, Any]:
    """The wire form the SDK's runner gives the same result (``ServerRunner._serialize``)."""
    dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    dumped = _methods.serialize_server_result("tools/call", version, dumped)
    if version in MODERN_PROTOCOL_VERSIONS:
        dumped.setdefault("resultType", "complete")
        meta = dumped.get("_meta")
        if meta is None:
            dumped["_meta"] = {SERVER_INFO_KEY: server.server_info_stamp}
        elif isinstance(meta, dict) and meta.get(SERVER_INFO_KEY) is None:
            dumped["_meta"] = {**meta, SERVER_INFO_KEY: server.server_info_stamp}
    return dumped
