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
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

JSON_WINDOW_SECONDS = 10.0
"""How long a call may run before its POST becomes an SSE stream (whose pings, every 15 s, keep
idle-read timeouts of proxies from closing it)."""


class JsonFirstTransport(StreamableHTTPServerTransport):
    async def _handle_post_request(self, scope: Scope, request: Request, receive: Receive, send: Send) -> None:
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
        if not isinstance(message, JSONRPCRequest) or message.method == "initialize":
            return None
        return message

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


def install() -> None:
    """Have the SDK's session manager build its handshake-era transports from this class (it names
    the class at module level and has no hook for it)."""
    manager_module.StreamableHTTPServerTransport = JsonFirstTransport  # type: ignore[misc]
