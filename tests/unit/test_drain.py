"""The HTTP edge for load balancers: liveness, readiness and refusing new requests while draining."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mcp_codeexec.drain import DrainGate
from mcp_codeexec.shutdown import Shutdown

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def request(gate: DrainGate, path: str, method: str = "GET") -> tuple[int, dict[str, str], Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await gate({"type": "http", "path": path, "method": method, "headers": []}, receive, send)
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, json.loads(sent[1]["body"])


async def inner(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b'{"served": true}'})


async def test_probes_answer_the_state_and_other_requests_pass_until_the_drain_begins() -> None:
    shutdown = Shutdown(grace=0)
    gate = DrainGate(inner, shutdown)
    assert (await request(gate, "/healthz"))[::2] == (200, {"status": "ok"})
    assert (await request(gate, "/readyz"))[::2] == (200, {"status": "ready"})
    assert (await request(gate, "/mcp", "POST"))[::2] == (200, {"served": True})
    shutdown.reason = "the server is shutting down (SIGTERM)"
    assert (await request(gate, "/healthz"))[::2] == (200, {"status": "ok"})  # alive while it drains
    assert (await request(gate, "/readyz"))[::2] == (503, {"status": "draining"})
    status, headers, body = await request(gate, "/mcp", "POST")
    assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
    assert body["error"]["message"].startswith("the server is shutting down (SIGTERM); retry")
    assert (await request(gate, "/v1/files"))[0] == 503
