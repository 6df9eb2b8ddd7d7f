"""Handshake-era MCP sessions without sticky routing: any replica serves any ``Mcp-Session-Id``.

The SDK keeps a session (its transport and server task) in the memory of the process that
answered ``initialize``; another replica answers 404 for it. With the shared session ledger
(``PgSessionLedger``) every replica knows which sessions are open and whose they are, so a
replica that gets a request for a session it has never seen, opened by the same principal on
another replica, *adopts* it: it registers a transport under that id and starts a server task
for it that is already initialized (the handshake happened elsewhere; its negotiated version is
the ``MCP-Protocol-Version`` header the client sends on every later request). The session's
container follows through the shared session → container map (``SharedSessionMap``).

What stays per replica: a GET (standalone SSE) stream lives where the client opened it, so
server-initiated messages outside a call reach the client only from that replica; a call's
progress notifications ride its own POST response, from whichever replica runs it.

This reaches into ``StreamableHTTPSessionManager``'s session table (the SDK has no public hook
for it); ``tests/integration/test_replicas.py`` pins the behaviour.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from anyio.abc import TaskStatus
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.connection import Connection
from mcp.server.runner import serve_connection
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from .json_first import JsonFirstTransport

log = logging.getLogger(__name__)


def knows(manager: StreamableHTTPSessionManager, sid: str) -> bool:
    return sid in manager._server_instances


async def adopt(manager: StreamableHTTPSessionManager, sid: str, scope: dict[str, Any], protocol_version: str | None) -> None:
    """Serve session ``sid`` (opened on another replica) here from now on."""
    if knows(manager, sid) or manager._task_group is None:
        return
    user = scope.get("user")
    requestor = authorization_context(user) if isinstance(user, AuthenticatedUser) else None
    version = protocol_version if protocol_version in HANDSHAKE_PROTOCOL_VERSIONS else None
    transport = JsonFirstTransport(
        mcp_session_id=sid,
        is_json_response_enabled=manager.json_response,
        event_store=manager.event_store,
        security_settings=manager.security_settings,
        retry_interval=manager.retry_interval,
        idle_timeout=manager.session_idle_timeout,
    )
    if requestor is not None:
        manager._session_owners[sid] = requestor
    manager._server_instances[sid] = transport

    async def run_server(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with transport.connect() as (read_stream, write_stream):
            task_status.started()
            try:
                idle_scope = transport.idle_scope or anyio.CancelScope()
                with idle_scope:
                    dispatcher: JSONRPCDispatcher[Any] = JSONRPCDispatcher(
                        read_stream, write_stream, inline_methods=frozenset({"initialize"})
                    )
                    connection = Connection.for_loop(dispatcher, session_id=sid, protocol_version_hint=version)
                    connection.initialized.set()  # the handshake was completed on the replica that opened it
                    await serve_connection(manager.app, dispatcher, connection=connection,
                                           lifespan_state=manager._lifespan_state)
            finally:
                await manager._discard_session(sid, transport)

    log.info("adopting MCP session %s opened on another replica", sid[:16])
    await manager._task_group.start(run_server)


__all__ = ["adopt", "knows"]
