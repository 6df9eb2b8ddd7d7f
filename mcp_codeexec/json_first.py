"""Handshake-era HTTP requests answered as plain JSON unless they need a stream.

The SDK answers every handshake-era (2025) POST that carries a request with an SSE stream: a
task group, a zero-buffer memory stream, sse-starlette's response with its ping and disconnect
tasks, and the event framing, even when all that ever goes down the stream is one response. For
a warm tool call that machinery is most of the server's CPU (bench/README.md, "HTTP").

The session-less (2026-07-28) path of the SDK already defers the choice: JSON if the handler
finishes before it emits anything, SSE from the first notification on. This transport makes the
same choice for the handshake era: it waits up to ``JSON_WINDOW_SECONDS`` for the request's first
message; a response goes back as ``application/json``, anything else (a progress notification,
or a call still running when the window ends, which then gets SSE's keep-alive pings) commits
the POST to the SSE stream the SDK would have used, starting with that message.

Both forms are what the client asked for (``Accept: application/json, text/event-stream``). What
it cannot do is used nowhere here: an event store (resumable streams) keeps the SDK's path.

A plain hosted-tool call of an initialized session goes further past the SDK (as over stdio,
direct_calls.py): the transport answers it itself with the handler body the SDK route runs, after
every check the SDK makes before dispatch (the session manager's owner check, the transport's
security, session and header checks) and with the session's idle clock held as for any request.
The session's negotiated version is read off its ``initialize`` response as it goes by; until one
went by (or after a second ``initialize``) every call takes the SDK's path. A call answered here
keeps the SDK's semantics: ``notifications/cancelled`` for it cancels it (answered
``Request cancelled``, as the SDK answers this era), ending the session cancels it (answered as
the SDK answers a request the session ended under), and one still running after the JSON window
commits to an SSE stream with the SDK's keep-alive pings.
"""

from __future__ import annotations

from functools import partial
from http import HTTPStatus
from typing import Any

import anyio
import mcp.server.streamable_http_manager as manager_module
import pydantic_core
from mcp.server.streamable_http import (
    CONTENT_TYPE_SSE,
    MCP_SESSION_ID_HEADER,
    REQUEST_STREAM_BUFFER_SIZE,
    EventMessage,
    StreamableHTTPServerTransport,
    check_accept_headers,
)
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types import (
    DEFAULT_NEGOTIATED_VERSION,
    INTERNAL_ERROR,
    JSONRPCError,
    JSONRPCRequest,
    JSONRPCResponse,
    jsonrpc_message_adapter,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from . import direct_calls, mount_choice
from .backends.base import CallContext

JSON_WINDOW_SECONDS = 10.0
"""How long a call may run before its POST becomes an SSE stream (whose pings, every 15 s, keep
idle-read timeouts of proxies from closing it)."""


REQUEST_CANCELLED = -32800  # the SDK's code for this era's answer to a cancelled request
_TERMINATED = "Session terminated before the request completed"


class JsonFirstTransport(StreamableHTTPServerTransport):
    _version: str | None = None  # the session's negotiated version, once its initialize was answered
    _init_id: Any = None
    _direct: dict[Any, direct_calls.Call] | None = None  # calls answered here, in flight, by request id

    async def _handle_post_request(self, scope: Scope, request: Request, receive: Receive, send: Send) -> None:
        if self._version is not None and await self._answer_directly(scope, request, receive, send):
            return
        message = await self._plain_request(request)
        if message is None:  # initialize, notifications, bad input, resumable streams: the SDK's own path
            await super()._handle_post_request(scope, request, receive, send)
            return
        if not await self._validate_request_headers(request, send):
            return
        writer = self._read_stream_writer
        assert writer is not None  # connect() ran: the session manager serves only connected transports
        request_id = str(message.id)
        protocol_version = request.headers.get(MCP_PROTOCOL_VERSION_HEADER, DEFAULT_NEGOTIATED_VERSION)
        streams = anyio.create_memory_object_stream[EventMessage](REQUEST_STREAM_BUFFER_SIZE)
        self._request_streams[request_id] = streams
        reader = streams[1]
        await writer.send(self._create_session_message(message, request, request_id, protocol_version))
        first: EventMessage | None = None
        with anyio.move_on_after(JSON_WINDOW_SECONDS):
            try:
                first = await reader.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                await self._clean_up_memory_streams(request_id)
                # As the SDK's JSON mode answers it: the session was terminated with the request in flight.
                response = self._create_error_response("Session terminated before the request completed",
                                                            HTTPStatus.INTERNAL_SERVER_ERROR, INTERNAL_ERROR)
                await response(scope, receive, send)
                return
        if first is not None and isinstance(first.message, JSONRPCResponse | JSONRPCError):
            await self._clean_up_memory_streams(request_id)
            await self._create_json_response(first.message)(scope, receive, send)
            return
        await self._stream(scope, receive, send, request_id, reader, first)

    async def _plain_request(self, request: Request) -> JSONRPCRequest | None:
        """The POST's JSON-RPC request when this transport may answer it; None leaves it to the SDK
        (which then also answers whatever is wrong with it)."""
        if self._event_store is not None or self._terminated:
            return None
        if check_accept_headers(request) != (True, True) or not self._check_content_type(request):
            return None
        try:
            message = jsonrpc_message_adapter.validate_python(pydantic_core.from_json(await request.body()), by_name=False)
        except (ValueError, ValidationError):  # pydantic_core's parse errors are ValueErrors
            return None
        if not isinstance(message, JSONRPCRequest):
            return None
        if message.method == "initialize":
            self._note_initialize(message.id)
            return None
        return message

    # -- the session's negotiated version, off its initialize response
    def _note_initialize(self, rid: Any) -> None:
        if self._init_id is None and self._version is None:
            self._init_id = rid
        else:  # a second handshake: the SDK alone serves this session from now on
            self._init_id, self._version = _NEVER, None

    def _create_event_data(self, event_message: EventMessage) -> dict[str, Any]:
        message = event_message.message
        if isinstance(message, JSONRPCResponse) and self._init_id is not _NEVER and message.id == self._init_id:
            version = message.result.get("protocolVersion") if isinstance(message.result, dict) else None
            # The SDK commits the negotiated version before it sends this response.
            self._version = version if isinstance(version, str) and version in HANDSHAKE_PROTOCOL_VERSIONS else None
            self._init_id = _NEVER if self._version is None else None
        return super()._create_event_data(event_message)

    # -- hosted-tool calls answered here
    async def _answer_directly(self, scope: Scope, request: Request, receive: Receive, send: Send) -> bool:
        """True when this POST was answered here; False leaves it, untouched, to the paths below."""
        server = getattr(getattr(scope.get("app"), "state", None), "codeexec_server", None)
        if server is None or self._event_store is not None or self._terminated:
            return False
        if check_accept_headers(request) != (True, True) or not self._check_content_type(request):
            return False
        try:
            message = pydantic_core.from_json(await request.body())  # the SDK's parser: what it refuses, it answers
        except ValueError:
            return False
        if not isinstance(message, dict):
            return False
        if self._direct and message.get("method") == "notifications/cancelled":
            return await self._cancel(message, scope, receive, send)
        if message.get("method") != "tools/call":
            return False
        rid = message.get("id")
        if not direct_calls.plain_id(rid) or rid in (self._direct or {}) or str(rid) in self._request_streams:
            return False
        version = self._version
        found = direct_calls.hosted_call(server, message, version)
        if found is None or version is None:
            return False
        if not await self._validate_request_headers(request, send):
            return True  # answered: the SDK's own refusal
        name, arguments, meta = found
        principal = scope.get("state", {}).get("principal") or "local"
        ctx = CallContext(principal=principal, session_key=f"{principal}:{self.mcp_session_id}",
                          paced=principal != "local", mounts=mount_choice.raw_selection(meta))
        call = direct_calls.Call(rid, version)
        if self._direct is None:
            self._direct = {}
        self._direct[rid] = call
        try:
            await self._respond(scope, receive, send, call, server, name, arguments, ctx)
        finally:
            self._direct.pop(rid, None)
        return True

    async def _respond(self, scope: Scope, receive: Receive, send: Send, call: direct_calls.Call, server: Any,
                       name: str, arguments: dict[str, Any], ctx: CallContext) -> None:
        done = anyio.Event()
        reply: dict[str, Any] = {}

        async def run() -> None:
            with call.scope:
                reply.update(await direct_calls.answer(server, name, arguments, ctx, call.version))
            if call.scope.cancelled_caught:
                reply.clear()
                if call.cancelled:  # by the peer
                    reply["error"] = {"code": REQUEST_CANCELLED, "message": "Request cancelled"}
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            with anyio.move_on_after(JSON_WINDOW_SECONDS):
                await done.wait()
            if done.is_set():
                if not reply:  # the session ended under it
                    response = self._create_error_response(_TERMINATED, HTTPStatus.INTERNAL_SERVER_ERROR, INTERNAL_ERROR)
                    await response(scope, receive, send)
                    return
                await self._send_json(send, direct_calls.reply_text(call.rid, reply).encode())
                return

            async def events() -> Any:
                await done.wait()
                if reply:
                    yield {"event": "message", "data": direct_calls.reply_text(call.rid, reply)}

            headers = {
                "Cache-Control": "no-cache, no-transform",
                "Connection": "keep-alive",
                "Content-Type": CONTENT_TYPE_SSE,
                **({MCP_SESSION_ID_HEADER: self.mcp_session_id} if self.mcp_session_id else {}),
            }
            await EventSourceResponse(content=events(), headers=headers)(scope, receive, send)

    async def _send_json(self, send: Send, body: bytes) -> None:
        headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        if self.mcp_session_id:
            headers.append((MCP_SESSION_ID_HEADER.encode(), self.mcp_session_id.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _cancel(self, message: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> bool:
        """A ``notifications/cancelled`` for a call answered here: cancelled, and 202 as the SDK answers
        a notification (anything else about it is the SDK's)."""
        call = (self._direct or {}).get(direct_calls.cancelled_id(message))
        if call is None or message.get("jsonrpc") != "2.0":
            return False
        call.cancelled = True
        call.scope.cancel()
        await self._create_json_response(None, HTTPStatus.ACCEPTED)(scope, receive, send)
        return True

    async def terminate(self) -> None:
        for call in list((self._direct or {}).values()):  # as the SDK's session task ends its own
            call.scope.cancel()
        await super().terminate()

    async def _stream(self, scope: Scope, receive: Receive, send: Send, request_id: str, reader: Any,
                      first: EventMessage | None) -> None:
        """The rest of the request as the SDK's SSE response, starting with ``first`` if one came."""
        sse_writer, sse_reader = anyio.create_memory_object_stream[dict[str, Any]](0)
        self._sse_stream_writers[request_id] = sse_writer
        headers = {
            "Cache-Control": "no-cache, no-transform",
            "Connection": "keep-alive",
            "Content-Type": CONTENT_TYPE_SSE,
            **({MCP_SESSION_ID_HEADER: self.mcp_session_id} if self.mcp_session_id else {}),
        }
        # The SDK's writer sends its "priming event" first: here, the message that committed the stream.
        lead = self._create_event_data(first) if first is not None else None
        response = EventSourceResponse(
            content=sse_reader,
            data_sender_callable=partial(self._run_sse_writer, request_id, sse_writer, reader, lead),
            headers=headers,
        )
        try:
            await response(scope, receive, send)
        finally:
            await sse_reader.aclose()


_NEVER = object()
"""``_init_id`` once this session's version can no longer be known here."""


def install() -> None:
    """Have the SDK's session manager build its handshake-era transports from this class (it names
    the class at module level and has no hook for it)."""
    manager_module.StreamableHTTPServerTransport = JsonFirstTransport  # type: ignore[misc]
