"""Streamable HTTP serving: ``/mcp`` plus the Files and Skills API subsets, behind bearer-token auth.

Each bearer token is a principal: its containers and files are invisible to every other principal.
Host and Origin headers are checked on every request (DNS-rebinding protection).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import INVALID_REQUEST
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from . import direct_calls, json_first, session_adoption
from .backends.base import Backend
from .config import Settings
from .database import open_file_store, open_session_ledger, open_token_store
from .files import FileRecord, FileStore
from .files_api import FORM_OVERHEAD_BYTES, files_routes
from .server import create_backend, create_server
from .session_ledger import SessionLedger
from .drain import DrainGate
from .request_trace import RequestTrace
from .shutdown import Shutdown
from .skills import catalog_for
from .skills_api import skills_routes

log = logging.getLogger(__name__)

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
RESERVED_PRINCIPALS = {"", "local"}
MCP_PATH = "/mcp"


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def principal_for_token(token: str) -> str:
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:12]


def load_tokens(settings: Settings, *, stored: bool = False) -> dict[str, str]:
    """token -> principal. With none configured and none made with ``mcp-codeexec tokens add``
    (``stored``), one is generated, stored (0600) and printed once."""
    tokens: dict[str, str] = {}
    for entry in settings.auth_tokens:
        principal, sep, token = entry.partition(":")
        if not sep:
            principal, token = principal_for_token(entry), entry
        if len(token) < 16:
            raise SystemExit("auth tokens must be at least 16 characters")
        if principal.strip() in RESERVED_PRINCIPALS:
            # "local" is the stdio/--no-auth principal that sees every container and file.
            raise SystemExit(f"auth token principal {principal!r} is reserved; pick another name")
        tokens[token] = principal
    if tokens or stored:
        return tokens
    path = settings.data_dir / "http_token"
    if path.exists():
        token = path.read_text().strip()
        if len(token) < 16:
            raise SystemExit(f"{path} holds no usable token (delete it to have a new one generated)")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        print(f"mcp-codeexec: generated an HTTP bearer token (saved in {path}):\n  {token}", file=sys.stderr)
    tokens[token] = "default"
    return tokens


class SecurityMiddleware:
    """Bearer auth, Host/Origin allow-lists and a request body limit, before anything is parsed."""

    def __init__(self, app: ASGIApp, *, tokens: dict[str, str] | None, allowed_hosts: set[str],
                 allowed_origins: set[str], max_body: int, max_upload: int, sessions: SessionLedger | None = None,
                 session_manager: Callable[[], Any] | None = None, token_store: Any = None) -> None:
        self.app = app
        self.token_store = token_store if tokens is not None else None  # `mcp-codeexec tokens` (tokens.py)
        # Replicas sharing the session ledger serve each other's sessions (see session_adoption).
        self.session_manager = session_manager
        self.sessions = sessions if tokens is not None else None  # --no-auth: one user, the SDK's own cap
        self.tokens = tokens
        # Compared as SHA-256 digests of the raw bytes: constant time, any length, any bytes
        # (hmac.compare_digest raises TypeError on non-ASCII str).
        self._digests = [(_digest(t.encode("utf-8")), p) for t, p in (tokens or {}).items()]
        self.allowed_hosts = allowed_hosts
        self.allowed_origins = allowed_origins
        self.max_body = max_body
        self.max_upload = max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # no websocket endpoints: never let one past auth
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if "*" not in self.allowed_hosts and host.rsplit(":", 1)[0] not in self.allowed_hosts and host not in self.allowed_hosts:
            await _reject(send, 421, "invalid_request_error", "Host header not allowed")
            return
        origin = headers.get("origin")
        if origin is not None and origin not in self.allowed_origins and not _loopback_origin(origin, self.allowed_hosts):
            await _reject(send, 403, "permission_error", "Origin not allowed")
            return
        max_body = self.max_upload + FORM_OVERHEAD_BYTES if scope["path"].startswith("/v1/files") else self.max_body
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            await _reject(send, 413, "request_too_large", f"request body over {max_body} bytes")
            return
        if self.tokens is None:
            principal = "local"
        else:
            auth = headers.get("authorization", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
            principal = self._principal_of(token)
            if principal is None and self.token_store is not None and token.isascii() and 16 <= len(token) <= 512:
                principal = await anyio.to_thread.run_sync(self.token_store.principal_for, token)
            if principal is None:
                await _reject(send, 401, "authentication_error", "missing or invalid bearer token",
                              extra=[(b"www-authenticate", b'Bearer realm="mcp-codeexec"')])
                return
        scope.setdefault("state", {})["principal"] = principal
        # The SDK binds each Mcp-Session-Id to the user that opened it: another principal presenting
        # that id gets 404, so it can neither post into nor DELETE someone else's session.
        scope["user"] = AuthenticatedUser(AccessToken(token="", client_id=principal, scopes=[]))
        if self.sessions is not None and scope["path"].rstrip("/") == MCP_PATH:
            await self._mcp_with_session_cap(scope, receive, send, max_body, principal, headers)
            return
        await self._app_with_limit(scope, receive, send, max_body)

    async def _mcp_with_session_cap(self, scope: Scope, receive: Receive, send: Send, max_body: int, principal: str,
                                    headers: dict[str, str]) -> None:
        """/mcp with the per-principal cap on open handshake-era sessions (see session_ledger)."""
        ledger = self.sessions
        assert ledger is not None
        sid = headers.get("mcp-session-id")
        version = headers.get("mcp-protocol-version")
        # The SDK opens a session for a request without a session id unless it is a session-less
        # (2026-07-28 and later) request, which it recognises by this header.
        would_open = sid is None and (version is None or version in HANDSHAKE_PROTOCOL_VERSIONS)
        if would_open and await _ledger(ledger, "at_cap", principal):
            body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": INVALID_REQUEST, "message": (
                f"too many open MCP sessions for this client ({ledger.per_principal}); end some with DELETE /mcp "
                "or let idle ones expire")}}).encode()
            await send({"type": "http.response.start", "status": 429, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"retry-after", b"60")]})
            await send({"type": "http.response.body", "body": body})
            return
        status = 0

        async def noting_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                answered = next((v.decode("latin-1") for k, v in message.get("headers", []) if k.lower() == b"mcp-session-id"), None)
                if answered and status < 400:
                    await _ledger(ledger, "opened", principal, answered)
            await send(message)

        if sid is not None:
            held = await _ledger(ledger, "begin", principal, sid)
            if getattr(ledger, "blocking", False) and self.session_manager is not None:
                if not held:  # ended or expired on some replica (or never this principal's): gone everywhere
                    await _reject_session(send)
                    return
                manager = self.session_manager()
                if not session_adoption.knows(manager, sid):
                    await session_adoption.adopt(manager, sid, scope, version)
        try:
            await self._app_with_limit(scope, receive, noting_send, max_body)
        finally:
            if sid is not None:
                gone = status == 404 or (scope["method"] == "DELETE" and 200 <= status < 300)
                with anyio.CancelScope(shield=True):
                    await _ledger(ledger, "end", principal, sid, gone=gone)

    def _principal_of(self, token: str) -> str | None:
        if not token:
            return None
        presented = _digest(token.encode("latin-1"))  # the header's raw bytes
        found = None
        for digest, principal in self._digests:  # no early exit
            if hmac.compare_digest(digest, presented) and found is None:
                found = principal
        return found

    async def _app_with_limit(self, scope: Scope, receive: Receive, send: Send, max_body: int) -> None:
        """Bodies without a (truthful) content-length: past the limit the app's reads fail and the
        client gets 413, whatever the app made of the failed read."""
        seen = 0
        over = started = replaced = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_body:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started, replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                started = True
                if over:  # the app answered its failed read (often with a 500): answer 413 instead
                    replaced = True
                    await _too_large(send, max_body)
                    return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _too_large(send, max_body)


class _BodyTooLarge(Exception):
    pass


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def _too_large(send: Send, max_body: int) -> None:
    await _reject(send, 413, "request_too_large", f"request body over {max_body} bytes", extra=[(b"connection", b"close")])


async def _reject_session(send: Send) -> None:
    """The SDK's answer for an unknown session (the client starts a new one)."""
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": INVALID_REQUEST, "message": "Session not found"}}).encode()
    await send({"type": "http.response.start", "status": 404,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _ledger(ledger: Any, name: str, *args: Any, **kw: Any) -> Any:
    """A ledger call: the shared (PostgreSQL) ledger does I/O, so it runs off the event loop."""
    method = functools.partial(getattr(ledger, name), *args, **kw)
    return await anyio.to_thread.run_sync(method) if getattr(ledger, "blocking", False) else method()


def _loopback_origin(origin: str, allowed_hosts: set[str]) -> bool:
    host = origin.split("://", 1)[-1].rsplit(":", 1)[0] if origin.count(":") >= 2 else origin.split("://", 1)[-1]
    return is_loopback(host) and any(is_loopback(h) for h in allowed_hosts)


async def _reject(send: Send, status: int, kind: str, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = ('{"type":"error","error":{"type":"%s","message":"%s"}}' % (kind, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())] + (extra or [])})
    await send({"type": "http.response.body", "body": body})


def create_http_app(settings: Settings, *, backend: Backend | None = None, store: FileStore | None = None,
                    shutdown: Shutdown | None = None) -> Starlette:
    """The HTTP app. ``backend``/``store`` default to the configured ones (tests inject others)."""
    if settings.no_auth and not is_loopback(settings.host):
        raise SystemExit("--no-auth is only allowed when binding a loopback address (127.0.0.1, ::1, localhost)")
    if settings.no_auth:
        log.warning("HTTP AUTH IS DISABLED (--no-auth): anyone who can reach %s:%s can run code", settings.host, settings.port)
    token_store = None if settings.no_auth else open_token_store(settings)
    tokens = None if token_store is None else load_tokens(settings, stored=token_store.any())
    store = open_file_store(settings) if store is None else store
    backend = create_backend(settings, store) if backend is None else backend
    shutdown = shutdown or Shutdown()
    server = create_server(settings, backend=backend, store=store, shutdown=shutdown)
    json_first.install()  # a quick call's answer goes back as JSON, not a one-event SSE stream

    def request_principal(request: Request) -> str:
        return request.scope.get("state", {}).get("principal", "local")

    async def on_upload(record: FileRecord, container_id: str | None) -> None:
        if container_id:
            await backend.attach_file(record.id, container_id, record.principal)

    hosts = {settings.host, "localhost", "127.0.0.1", "[::1]", "::1"} if is_loopback(settings.host) else {settings.host}
    if settings.host in ("0.0.0.0", "::"):
        hosts = {"*"}
    origins = set(settings.allowed_origins)
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        max_request_body_size=settings.max_request_bytes,
        host=settings.host,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        custom_starlette_routes=files_routes(store, request_principal, on_upload, max_upload_bytes=settings.max_upload_bytes)
        + skills_routes(lambda: catalog_for(settings).store, request_principal),
    )
    if direct_calls.available(server):  # plain hosted-tool calls answered by the transport (json_first.py)
        app.state.codeexec_server = server
    app.add_middleware(
        SecurityMiddleware, tokens=tokens, allowed_hosts=hosts, allowed_origins=origins, max_body=settings.max_request_bytes,
        max_upload=settings.max_upload_bytes, sessions=open_session_ledger(settings),
        session_manager=lambda: server.session_manager, token_store=token_store,
    )
    app.add_middleware(DrainGate, shutdown=shutdown)  # probes need no token, nor the Host check
    if settings.trace_requests is not None:  # outermost: sees every request as it arrives (request_trace.py)
        app.add_middleware(RequestTrace, path=settings.trace_requests)
        log.info("tracing every HTTP request to %s", settings.trace_requests)
    return app


def serve_http(settings: Settings) -> None:
    import contextlib

    import anyio
    import uvicorn

    from .shutdown import Shutdown, stop_on_signals

    shutdown = Shutdown()
    app = create_http_app(settings, shutdown=shutdown)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                            log_config=None, timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    # The signals are ours (see shutdown.py): uvicorn's own handling would stop at once, without
    # answering the calls in flight, and re-raise the signal afterwards (exit -15, a traceback).
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]

    def stop() -> None:
        server.should_exit = True

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(stop_on_signals, shutdown, stop)
            await server.serve()
            tg.cancel_scope.cancel()

    anyio.run(main)


def token_file(settings: Settings) -> Path:
    return settings.data_dir / "http_token"
