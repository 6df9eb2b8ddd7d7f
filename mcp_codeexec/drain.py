"""Health and draining at the HTTP edge, for load balancers in front of replicas.

``GET /healthz`` answers 200 while the process serves (liveness); ``GET /readyz`` answers 200, or
503 once a shutdown has begun, so the balancer stops sending this replica new requests (readiness).
While draining, every other request is refused with 503 and ``Retry-After``: the client (or a
balancer that retries) goes to another replica, where the session and its container continue (see
session_adoption). Calls already in flight are the shutdown's to finish or cancel (shutdown.py).
Neither probe needs a token, and neither says anything but the state.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from .shutdown import Shutdown

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
RETRY_AFTER_SECONDS = 1


class DrainGate:
    def __init__(self, app: ASGIApp, shutdown: Shutdown) -> None:
        self.app = app
        self.shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        draining = self.shutdown.closing
        if path == HEALTH_PATH:
            await _json(send, 200, {"status": "ok"})
        elif path == READY_PATH:
            await _json(send, 503 if draining else 200, {"status": "draining" if draining else "ready"})
        elif draining:
            await _json(send, 503, {"type": "error", "error": {
                "type": "api_error",
                "message": f"{self.shutdown.reason}; retry the request (another replica serves it)"}},
                [(b"retry-after", str(RETRY_AFTER_SECONDS).encode()), (b"connection", b"close")])
        else:
            await self.app(scope, receive, send)


async def _json(send: Send, status: int, body: dict, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"cache-control", b"no-store"), *(extra or [])]})
    await send({"type": "http.response.body", "body": data})
