"""A fake Anthropic API on loopback: the real wire format of the Messages and Files endpoints.

It is a real HTTP server (stdlib ``http.server`` in a daemon thread, 127.0.0.1, random port) so
the real ``anthropic`` SDK talks to it through ``base_url`` exactly as it talks to the service.
Tests script it with recorded responses and then assert on the requests it received::

    with FakeAnthropic() as api:
        api.push(bash_turn({"command": "echo hi"}, bash_result(stdout="hi\\n")))
        ...  # HostedBackend(Settings(anthropic_base_url=api.base_url, ...))
        assert api.message_requests[0]["tools"] == [...]

``/v1/messages`` answers from a queue (``push``); each entry is a message dict (HTTP 200), a
``Reply`` (any status, body and headers) or a callable taking the ``RecordedRequest`` and returning
either. ``/v1/files`` (upload, metadata, download) and ``/v1/models/{id}`` answer from the fake's own
state unless something was queued for them with ``push_route``. No streaming: the client under test
does not stream.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import re
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

DEFAULT_MODEL = "claude-sonnet-4-5-20250929"
DEFAULT_CONTAINER = "container_011CTfakeContainerAAAAAAAA"
DEFAULT_EXPIRES_AT = "2099-01-01T00:00:00Z"
CREATED_AT = "2025-09-01T12:00:00Z"

_ids = itertools.count(1)


def _next_id(prefix: str) -> str:
    """Ids shaped like the service's: ``<prefix>_`` + 24 base62 characters (``file_011C...``)."""
    return f"{prefix}_011CFake{next(_ids):016d}"


# --- wire-format builders ---------------------------------------------------------------------


@dataclass
class Reply:
    """One scripted HTTP answer."""

    status: int = 200
    body: Any = None
    """A dict/list is sent as JSON; bytes are sent as they are."""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


def usage(input_tokens: int = 1500, output_tokens: int = 60, **extra: Any) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
        "service_tier": "standard",
        **extra,
    }


def message(
    content: list[dict[str, Any]],
    *,
    stop_reason: str = "end_turn",
    container_id: str | None = DEFAULT_CONTAINER,
    expires_at: str = DEFAULT_EXPIRES_AT,
    model: str = DEFAULT_MODEL,
    usage_: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete ``POST /v1/messages`` response body (``BetaMessage``)."""
    return {
        "id": _next_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage_ or usage(),
        "container": None if container_id is None else {"id": container_id, "expires_at": expires_at},
    }


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value, "citations": None}


def server_tool_use(name: str, input: dict[str, Any], *, id: str | None = None) -> dict[str, Any]:
    return {"type": "server_tool_use", "id": id or _next_id("srvtoolu"), "name": name, "input": input}


def tool_result(name: str, tool_use_id: str, content: dict[str, Any]) -> dict[str, Any]:
    """``bash_code_execution_tool_result`` / ``text_editor_code_execution_tool_result``."""
    return {"type": f"{name}_tool_result", "tool_use_id": tool_use_id, "content": content}


def bash_result(
    stdout: str = "", stderr: str = "", return_code: int = 0, file_ids: Iterable[str] = ()
) -> dict[str, Any]:
    return {
        "type": "bash_code_execution_result",
        "stdout": stdout,
        "stderr": stderr,
        "return_code": return_code,
        "content": [{"type": "bash_code_execution_output", "file_id": f} for f in file_ids],
    }


def code_result(
    stdout: str = "", stderr: str = "", return_code: int = 0, file_ids: Iterable[str] = ()
) -> dict[str, Any]:
    """The REPL's ``code_execution_result`` (``code_execution_20260120``)."""
    return {
        "type": "code_execution_result",
        "stdout": stdout,
        "stderr": stderr,
        "return_code": return_code,
        "content": [{"type": "code_execution_output", "file_id": f} for f in file_ids],
    }


def code_error(error_code: str) -> dict[str, Any]:
    return {"type": "code_execution_tool_result_error", "error_code": error_code}


def code_turn(input: dict[str, Any], result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """``server_tool_use {name: "code_execution"}`` then ``code_execution_tool_result``."""
    return tool_turn("code_execution", input, result, **kwargs)


def bash_error(error_code: str) -> dict[str, Any]:
    return {"type": "bash_code_execution_tool_result_error", "error_code": error_code}


def view_result(content: str, *, file_type: str = "text", start_line: int = 1) -> dict[str, Any]:
    n = len(content.splitlines())
    return {
        "type": "text_editor_code_execution_view_result",
        "file_type": file_type,
        "content": content,
        "num_lines": n,
        "start_line": start_line,
        "total_lines": n,
    }


def create_result(is_file_update: bool = False) -> dict[str, Any]:
    return {"type": "text_editor_code_execution_create_result", "is_file_update": is_file_update}


def str_replace_result(
    old_start: int, old_lines: int, new_start: int, new_lines: int, lines: list[str]
) -> dict[str, Any]:
    return {
        "type": "text_editor_code_execution_str_replace_result",
        "old_start": old_start,
        "old_lines": old_lines,
        "new_start": new_start,
        "new_lines": new_lines,
        "lines": lines,
    }


def editor_error(error_code: str, error_message: str | None = None) -> dict[str, Any]:
    return {
        "type": "text_editor_code_execution_tool_result_error",
        "error_code": error_code,
        "error_message": error_message,
    }


def tool_turn(
    name: str,
    input: dict[str, Any],
    result: dict[str, Any],
    *,
    preamble: str | None = "I'll run that.",
    epilogue: str | None = "Done.",
    **message_kwargs: Any,
) -> dict[str, Any]:
    """The model's whole turn: optional text, the ``server_tool_use``, its result, optional text."""
    use = server_tool_use(name, input)
    content = [text(preamble)] if preamble else []
    content += [use, tool_result(name, use["id"], result)]
    if epilogue:
        content.append(text(epilogue))
    return message(content, **message_kwargs)


def bash_turn(input: dict[str, Any], result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return tool_turn("bash_code_execution", input, result, **kwargs)


def editor_turn(input: dict[str, Any], result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return tool_turn("text_editor_code_execution", input, result, **kwargs)


def paused_turn(name: str, input: dict[str, Any], **kwargs: Any) -> tuple[dict[str, Any], str]:
    """A turn paused after the model issued the call but before its result: (message, tool_use_id)."""
    use = server_tool_use(name, input)
    return message([text("Running it now."), use], stop_reason="pause_turn", **kwargs), use["id"]


def resumed_turn(name: str, tool_use_id: str, result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """The continuation of a paused turn: the result of the already-issued call, then the end."""
    return message([tool_result(name, tool_use_id, result), text("Done.")], **kwargs)


def requested_call(request: RecordedRequest) -> tuple[str, dict[str, Any]]:
    """The (sub-tool, input) the hosted backend asked the model to call, read from its instruction
    (the last text block of the first user message: "Call the `NAME` tool ...<input>\nJSON\n</input>")."""
    content = request.json["messages"][0]["content"]
    text = next(b["text"] for b in reversed(content) if b.get("type") == "text")
    match = re.search(r"`([a-z_]+)`", text)
    assert match, f"no tool named in {text!r}"
    body = text.split("<input>\n", 1)[1].rsplit("\n</input>", 1)[0]
    return match.group(1), json.loads(body)


def executor(
    execute: Callable[[str, dict[str, Any]], dict[str, Any]], *, container_id: str = DEFAULT_CONTAINER
) -> Callable[[RecordedRequest], dict[str, Any]]:
    """A responder that plays a well-behaved model: it makes exactly the requested call and
    answers with ``execute(tool, input)`` as the result content, in the container the request
    named (else ``container_id``)."""

    def respond(request: RecordedRequest) -> dict[str, Any]:
        tool, tool_input = requested_call(request)
        named = request.json.get("container")
        if isinstance(named, dict):  # {"id"?, "skills"}: the container is echoed with its skills
            reply = tool_turn(tool, tool_input, execute(tool, tool_input), container_id=named.get("id") or container_id)
            reply["container"]["skills"] = [
                {"skill_id": s["skill_id"], "type": s["type"], "version": s.get("version") or "latest"} for s in named.get("skills") or []
            ]
            return reply
        return tool_turn(tool, tool_input, execute(tool, tool_input), container_id=named or container_id)

    return respond


def api_error(status: int, type: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    """The real error envelope: ``{"type": "error", "error": {"type": ..., "message": ...}}``."""
    return Reply(
        status=status,
        body={"type": "error", "error": {"type": type, "message": message}, "request_id": _next_id("req")},
        headers=dict(headers or {}),
    )


def rate_limited(retry_after: float | None = 1) -> Reply:
    headers = {} if retry_after is None else {"retry-after": str(retry_after)}
    return api_error(
        429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit", headers
    )


def overloaded() -> Reply:
    return api_error(529, "overloaded_error", "Overloaded")


def internal_error() -> Reply:
    return api_error(500, "api_error", "Internal server error")


def container_expired(container_id: str = DEFAULT_CONTAINER) -> Reply:
    return api_error(400, "invalid_request_error", f"Container {container_id} has expired and can no longer be used.")


def unauthorized() -> Reply:
    return api_error(401, "authentication_error", "invalid x-api-key")


# --- programmatic tool calling ----------------------------------------------------------------

PTC_CALLER = "code_execution_20260120"
CONTAINER_REQUIRED = "container_id is required when there are pending tool uses generated by code execution with tools."
"""The 400 message of a continuation with pending code calls but no container id."""


def client_tool_use(name: str, input: dict[str, Any], *, id: str | None = None,
                    caller: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``tool_use`` block (a client tool call; ``caller`` set when the hosted code made it)."""
    block: dict[str, Any] = {"type": "tool_use", "id": id or _next_id("toolu"), "name": name, "input": input}
    if caller is not None:
        block["caller"] = caller
    return block


def code_caller(server_tool_use_id: str) -> dict[str, Any]:
    return {"type": PTC_CALLER, "tool_id": server_tool_use_id}


def code_execution_result(stdout: str = "", stderr: str = "", return_code: int = 0) -> dict[str, Any]:
    return {"type": "code_execution_result", "stdout": stdout, "stderr": stderr, "return_code": return_code, "content": []}


@dataclass
class PTCScript:
    """A hosted PTC conversation, enforcing the continuation rules the API enforces.

    The hosted code is simulated: ``pauses`` are the batches of tool calls the code makes (each
    batch one paused response, its calls in parallel); ``finish(results)`` gets every
    ``tool_result`` received, by call, and returns the cell's stdout. A continuation must resend
    the history with the paused turn, answer every pending call with only ``tool_result`` blocks,
    carry the container id (else the API's 400) and the same ``tools`` (else a 400).
    """

    code: str
    pauses: list[list[tuple[str, dict[str, Any]]]]
    finish: Callable[[list[dict[str, Any]]], str]
    container_id: str | None = DEFAULT_CONTAINER
    """The container the paused responses name (None: they name none, as a broken API would)."""
    server_tool_use_id: str = field(default_factory=lambda: _next_id("srvtoolu"))
    received: list[dict[str, Any]] = field(default_factory=list)
    """Every tool_result received, in order."""
    _tools: Any = None
    _pending: list[str] = field(default_factory=list)
    _step: int = 0

    def __call__(self, request: RecordedRequest) -> dict[str, Any] | Reply:
        body = request.json
        if self._step == 0:
            self._tools = body.get("tools")
            callable_from_code = {t.get("name") for t in self._tools or [] if PTC_CALLER in (t.get("allowed_callers") or [])}
            wanted = {name for batch in self.pauses for name, _ in batch}
            if not wanted <= callable_from_code:
                return api_error(400, "invalid_request_error", f"tools not callable from code: {sorted(wanted - callable_from_code)}")
        else:
            problem = self._check_continuation(body)
            if problem is not None:
                return problem
        self._step += 1
        use = server_tool_use("code_execution", {"code": self.code}, id=self.server_tool_use_id)
        prefix = [text("Running the code."), use] if self._step == 1 else []
        if self._step <= len(self.pauses):
            calls = [client_tool_use(name, args, caller=code_caller(self.server_tool_use_id))
                     for name, args in self.pauses[self._step - 1]]
            self._pending = [c["id"] for c in calls]
            return message(prefix + calls, stop_reason="tool_use", container_id=self.container_id)
        result = {"type": "code_execution_tool_result", "tool_use_id": self.server_tool_use_id,
                  "content": code_execution_result(stdout=self.finish(self.received))}
        return message(prefix + [result, text("done")], container_id=self.container_id or DEFAULT_CONTAINER)

    def _check_continuation(self, body: dict[str, Any]) -> Reply | None:
        messages = body.get("messages") or []
        if len(messages) != 1 + 2 * self._step or [m["role"] for m in messages] != ["user"] + ["assistant", "user"] * self._step:
            return api_error(400, "invalid_request_error", "messages: the paused turn and its results must be resent")
        last = messages[-1]["content"]
        if not isinstance(last, list) or any(b.get("type") != "tool_result" for b in last):
            return api_error(400, "invalid_request_error", "only tool_result blocks may answer pending code calls")
        if sorted(b.get("tool_use_id") for b in last) != sorted(self._pending):
            return api_error(400, "invalid_request_error", "every pending tool use needs exactly one tool_result")
        if any(not isinstance(b.get("content"), (str, list)) for b in last):
            return api_error(400, "invalid_request_error", "tool_result content must be a string or text blocks")
        if not body.get("container"):
            return api_error(400, "invalid_request_error", CONTAINER_REQUIRED)
        if body.get("tools") != self._tools:
            return api_error(400, "invalid_request_error", "tools must be the same as in the original request")
        self.received.extend(last)
        return None


# --- the server ----------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    json: Any = None
    form: dict[str, Any] = field(default_factory=dict)
    """Multipart fields: name -> str, or (filename, bytes, content_type) for file parts."""

    @property
    def betas(self) -> list[str]:
        raw = self.headers.get("anthropic-beta", "")
        return [b.strip() for b in raw.split(",") if b.strip()]


@dataclass
class StoredFile:
    id: str
    filename: str
    data: bytes
    mime_type: str
    downloadable: bool = True

    def metadata(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "file",
            "filename": self.filename,
            "mime_type": self.mime_type,
            "size_bytes": len(self.data),
            "created_at": CREATED_AT,
            "downloadable": self.downloadable,
        }


Scripted = dict[str, Any] | Reply | Callable[[RecordedRequest], "dict[str, Any] | Reply"]


class FakeAnthropic:
    """The fake API server. Use as a context manager (or ``start``/``stop``)."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.files: dict[str, StoredFile] = {}
        self.skills: dict[str, list[tuple[str, bytes]]] = {}
        """Skills uploaded with ``POST /v1/skills``: id -> the (filename, bytes) parts."""
        self._queues: dict[str, deque[Scripted]] = defaultdict(deque)
        self.fallback: Scripted | None = None
        """Answers ``/v1/messages`` when its queue is empty (e.g. ``executor(...)``)."""
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle
    def start(self) -> Self:
        fake = self

        class Handler(_Handler):
            owner = fake

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- scripting
    def push(self, *replies: Scripted) -> None:
        """Queue answers for ``POST /v1/messages``, consumed in order."""
        self.push_route("messages", *replies)

    def push_route(self, route: str, *replies: Scripted) -> None:
        """Queue answers for a route: ``messages``, ``files.upload``, ``files.metadata``,
        ``files.download`` or ``models``; an empty queue falls back to the fake's own state."""
        with self._lock:
            self._queues[route].extend(replies)

    def pending(self, route: str = "messages") -> int:
        with self._lock:
            return len(self._queues[route])

    def add_file(
        self,
        data: bytes,
        filename: str,
        mime_type: str = "application/octet-stream",
        *,
        file_id: str | None = None,
        downloadable: bool = True,
    ) -> str:
        """Put a file in the fake Files API (e.g. one the hosted tool produced); returns its id."""
        fid = file_id or _next_id("file")
        with self._lock:
            self.files[fid] = StoredFile(fid, filename, data, mime_type, downloadable)
        return fid

    # --- what we received
    def requests_to(self, route: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if _route_of(r.method, r.path)[0] == route]

    @property
    def message_requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of every ``POST /v1/messages`` received, in order."""
        return [r.json for r in self.requests_to("messages")]

    # --- dispatch (runs in the server's threads)
    def _handle(self, req: RecordedRequest) -> Reply:
        route, arg = _route_of(req.method, req.path)
        with self._lock:
            self.requests.append(req)
            scripted = self._queues[route].popleft() if self._queues[route] else None
            if scripted is None and route == "messages":
                scripted = self.fallback
        if scripted is not None:
            answer = scripted(req) if callable(scripted) else scripted
            return answer if isinstance(answer, Reply) else Reply(body=answer)
        return self._default(route, arg, req)

    def _default(self, route: str, arg: str | None, req: RecordedRequest) -> Reply:
        if route == "messages":
            return api_error(500, "api_error", "fake: no response scripted for this /v1/messages request")
        if route == "files.upload":
            part = req.form.get("file")
            if not isinstance(part, tuple):
                return api_error(400, "invalid_request_error", "file: field required")
            filename, data, ctype = part
            fid = self.add_file(data, filename, ctype or "application/octet-stream")
            return Reply(body=self.files[fid].metadata())
        if route in ("files.metadata", "files.download"):
            with self._lock:
                stored = self.files.get(arg or "")
            if stored is None:
                return api_error(404, "not_found_error", f"File not found: {arg}")
            if route == "files.metadata":
                return Reply(body=stored.metadata())
            if not stored.downloadable:
                return api_error(400, "invalid_request_error", f"File {arg} is not downloadable")
            return Reply(body=stored.data, content_type=stored.mime_type)
        if route == "skills.create":
            parts = req.form.get("files[]") or []
            parts = parts if isinstance(parts, list) else [parts]
            sid = _next_id("skill")
            with self._lock:
                self.skills[sid] = [(name, data) for name, data, _ in parts]
            return Reply(body={"id": sid, "type": "skill", "display_name": req.form.get("display_name") or "skill",
                               "latest_version_id": _next_id("skillver"), "source": {"type": "custom"},
                               "created_at": CREATED_AT, "updated_at": CREATED_AT})
        if route == "models":
            return Reply(body={"type": "model", "id": arg, "display_name": arg, "created_at": CREATED_AT})
        return api_error(404, "not_found_error", f"fake: no route for {req.method} {req.path}")


def _route_of(method: str, path: str) -> tuple[str, str | None]:
    parts = [p for p in path.split("/") if p]
    if method == "POST" and parts == ["v1", "messages"]:
        return "messages", None
    if method == "POST" and parts == ["v1", "files"]:
        return "files.upload", None
    if method == "GET" and len(parts) == 3 and parts[:2] == ["v1", "files"]:
        return "files.metadata", parts[2]
    if method == "GET" and len(parts) == 4 and parts[:2] == ["v1", "files"] and parts[3] == "content":
        return "files.download", parts[2]
    if method == "POST" and parts == ["v1", "skills"]:
        return "skills.create", None
    if method == "GET" and len(parts) == 3 and parts[:2] == ["v1", "models"]:
        return "models", parts[2]
    return "other", None


def _parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    msg = parser.parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    form: dict[str, Any] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None and name.endswith("[]"):  # an array of files (e.g. a skill's)
            form.setdefault(name, []).append((filename, payload, part.get_content_type()))
        elif filename is not None:
            form[name] = (filename, payload, part.get_content_type())
        else:
            form[name] = payload.decode()
    return form


class _Handler(BaseHTTPRequestHandler):
    owner: FakeAnthropic
    protocol_version = "HTTP/1.1"
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        req = RecordedRequest(self.command, split.path, parse_qs(split.query), headers, body)
        ctype = headers.get("content-type", "")
        if ctype.startswith("application/json") and body:
            req.json = json.loads(body)
        elif ctype.startswith("multipart/form-data"):
            req.form = _parse_multipart(ctype, body)
        reply = self.owner._handle(req)
        if isinstance(reply.body, (bytes, bytearray)):
            payload = bytes(reply.body)
            content_type = reply.content_type or "application/octet-stream"
        else:
            payload = json.dumps(reply.body).encode()
            content_type = reply.content_type or "application/json"
        self.send_response(reply.status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        self.send_header("request-id", _next_id("req"))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _serve
    do_POST = _serve
    do_DELETE = _serve
