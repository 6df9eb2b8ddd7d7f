"""Per-request tracing at the HTTP edge, for finding where a stalled request stopped (issue 11).

Off by default: with ``trace_requests = PATH`` (``MCP_CODEEXEC_TRACE_REQUESTS``) the HTTP app gets
this ASGI middleware as its outermost layer and appends one JSON line per event of every request to
PATH; without it the middleware is not installed at all. uvicorn's access log cannot tell these
apart: it writes its line when a response *starts*, so a request missing there either never arrived
or arrived and never got a response start.

Every line has ``ev``, ``n`` (the request's number in this process) and ``t`` (``time.monotonic()``:
one clock for every process on a host, so a client's timestamps compare with these). Events:

- ``arrive``: ``method``, ``path``, ``sid`` (Mcp-Session-Id), ``rid`` (X-Request-Id, the client's own id)
- ``body``: the app has read the whole request body: ``bytes``, ``rpc`` = [[id, method], ...] of the
  JSON-RPC message or batch (method ``null`` for a response; ``rpc`` ``null`` for a body that is not JSON)
- ``start``: the response started: ``status``, ``sid`` (the response's Mcp-Session-Id: a new session's)
- ``end``: the last body chunk was handed to the server: ``bytes`` sent in all
- ``gone``: the app saw ``http.disconnect`` (the client went away, or, for an app still listening, the response completed)
- ``done``: the app returned; ``error`` names the exception type if it raised

The first line (``ev`` ``open``) pairs the monotonic clock with wall time (``wall``) and the ``pid``.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_PARSED_BODY = 1024 * 1024  # larger bodies are counted, not parsed (uploads, big files)
MAX_FIELD = 128


class TraceFile:
    """An append-only JSON-lines file. Each event is one ``os.write`` on an O_APPEND descriptor:
    a few hundred bytes into the page cache, done in microseconds and in order, so it stays on the
    event loop (a thread hop per event would cost more and could reorder the lines)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.write({"ev": "open", "t": time.monotonic(), "wall": time.time(), "pid": os.getpid()})

    def write(self, event: dict[str, Any]) -> None:
        os.write(self._fd, (json.dumps(event, separators=(",", ":"), default=str) + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)


class RequestTrace:
    """ASGI middleware: the arrive / body / start / end / gone / done events of every HTTP request."""

    def __init__(self, app: ASGIApp, path: Path | str) -> None:
        self.app = app
        self.file = TraceFile(Path(path))
        self._numbers = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        n = next(self._numbers)
        emit = self.file.write
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        emit({"ev": "arrive", "n": n, "t": time.monotonic(), "method": scope.get("method"), "path": _short(scope.get("path")),
              "sid": _header(headers, b"mcp-session-id"), "rid": _header(headers, b"x-request-id")})
        chunks: list[bytes] = []
        size = 0
        body_seen = False
        sent = 0

        async def traced_receive() -> Message:
            nonlocal size, body_seen
            message = await receive()
            if message["type"] == "http.request" and not body_seen:
                data = message.get("body", b"")
                size += len(data)
                if size <= MAX_PARSED_BODY:
                    chunks.append(data)
                if not message.get("more_body", False):
                    body_seen = True
                    rpc = rpc_summary(b"".join(chunks)) if size <= MAX_PARSED_BODY else None
                    chunks.clear()
                    emit({"ev": "body", "n": n, "t": time.monotonic(), "bytes": size, "rpc": rpc})
            elif message["type"] == "http.disconnect":
                emit({"ev": "gone", "n": n, "t": time.monotonic()})
            return message

        async def traced_send(message: Message) -> None:
            nonlocal sent
            await send(message)
            if message["type"] == "http.response.start":
                out = {k.lower(): v for k, v in message.get("headers", [])}
                emit({"ev": "start", "n": n, "t": time.monotonic(), "status": message.get("status"),
                      "sid": _header(out, b"mcp-session-id")})
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    emit({"ev": "end", "n": n, "t": time.monotonic(), "bytes": sent})

        try:
            await self.app(scope, traced_receive, traced_send)
        except BaseException as exc:
            emit({"ev": "done", "n": n, "t": time.monotonic(), "error": type(exc).__name__})
            raise
        emit({"ev": "done", "n": n, "t": time.monotonic()})


def rpc_summary(body: bytes) -> list[list[Any]] | None:
    """[[id, method], ...] of a JSON-RPC message or batch; None when the body is not JSON-RPC."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    messages = parsed if isinstance(parsed, list) else [parsed]
    out = []
    for message in messages:
        if not isinstance(message, dict):
            return None
        rid, method = message.get("id"), message.get("method")
        out.append([rid if isinstance(rid, int | None) else _short(str(rid)), _short(method) if isinstance(method, str) else None])
    return out


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else _short(value.decode("latin-1"))


def _short(value: Any) -> Any:
    return value[:MAX_FIELD] if isinstance(value, str) else value


# --- reading a trace back ---------------------------------------------------------------------------

STAGES = ("arrive", "body", "start", "end", "done")


@dataclass
class TracedRequest:
    """One request's events, by name (the first of each), as read back from a trace file."""

    n: int
    events: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def rid(self) -> str | None:
        return self.events.get("arrive", {}).get("rid")

    @property
    def rpc(self) -> list[list[Any]] | None:
        return self.events.get("body", {}).get("rpc")

    def t(self, ev: str) -> float | None:
        return self.events[ev]["t"] if ev in self.events else None

    def stopped_at(self) -> str | None:
        """Where an unfinished request stopped; None once its response ended."""
        if "end" in self.events:
            return None
        if "start" in self.events:
            return "response started, body never ended"
        if "body" in self.events:
            return "arrived and read, no response start"
        if "done" in self.events:
            return "app returned without a response"
        return "arrived, body never read by the app"


def read_trace(path: Path) -> list[TracedRequest]:
    """The requests of a trace file in arrival order (a partial last line, from a live server, is skipped).
    A file appended to by several server processes restarts the numbering at each ``open`` line."""
    requests: dict[tuple[int, int], TracedRequest] = {}
    epoch = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("ev") == "open":
                epoch += 1
                continue
            key = (epoch, event["n"])
            request = requests.setdefault(key, TracedRequest(event["n"]))
            request.events.setdefault(event["ev"], event)
    return list(requests.values())
