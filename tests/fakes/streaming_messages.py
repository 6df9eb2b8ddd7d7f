"""A scripted Messages API that streams (server-sent events), for clients that only stream.

Claude Code sends every turn with ``"stream": true``. This fake answers ``POST /v1/messages``
from a script: each *main-loop* request (one that offers ``tool_name`` among its tools) gets the
next scripted turn, a ``tool_use`` of the tool or a final text; any other request (titles, quota
probes) gets a short text. It records what it received so tests can read the tool results the
client sent back. Loopback only, random port, stdlib only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ToolUse:
    name: str
    input: dict[str, Any]


@dataclass
class ScriptedMessages:
    turns: list[ToolUse | str]
    """The main loop's turns in order: a tool call, or the closing text."""
    marker_tool: str
    """A request that offers this tool is a main-loop turn."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, request: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        """(content blocks, stop reason) for one request."""
        with self._lock:
            self.requests.append(request)
            if self.marker_tool not in {tool.get("name") for tool in request.get("tools") or []}:
                return [{"type": "text", "text": "ok"}], "end_turn"
            turn = self.turns[min(self._next, len(self.turns) - 1)]
            self._next += 1
        if isinstance(turn, str):
            return [{"type": "text", "text": turn}], "end_turn"
        return [{"type": "tool_use", "id": f"toolu_{self._next:02d}", "name": turn.name, "input": turn.input}], "tool_use"

    def tool_results(self) -> list[dict[str, Any]]:
        """Every ``tool_result`` block of the last main-loop request, in order."""
        main = [r for r in self.requests if self.marker_tool in {t.get("name") for t in r.get("tools") or []}]
        return [
            block
            for message in main[-1]["messages"] if message["role"] == "user" and isinstance(message["content"], list)
            for block in message["content"] if block.get("type") == "tool_result"
        ]


def _events(model: str, blocks: list[dict[str, Any]], stop_reason: str) -> Iterator[tuple[str, dict[str, Any]]]:
    usage = {"input_tokens": 10, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    yield "message_start", {"type": "message_start", "message": {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": usage}}
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            start = {**block, "input": {}}
            yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                            "usage": {"output_tokens": 5}}
    yield "message_stop", {"type": "message_stop"}


@contextmanager
def streaming_messages(script: ScriptedMessages) -> Iterator[str]:
    """Serve ``script`` on 127.0.0.1; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            path = self.path.split("?", 1)[0]
            if path.endswith("/count_tokens"):
                return self._json(200, {"input_tokens": 10})
            if path != "/v1/messages":
                return self.do_GET()
            request = json.loads(body)
            blocks, stop_reason = script.answer(request)
            if not request.get("stream"):
                return self._json(200, {"id": "msg_fake", "type": "message", "role": "assistant", "model": request.get("model"),
                                        "content": blocks, "stop_reason": stop_reason, "stop_sequence": None,
                                        "usage": {"input_tokens": 10, "output_tokens": 5}})
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.end_headers()
            for event, data in _events(request.get("model", "claude"), blocks, stop_reason):
                self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()
            self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
