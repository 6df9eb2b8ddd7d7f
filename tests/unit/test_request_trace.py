"""Per-request tracing at the HTTP edge (request_trace.py; issue 11's stalled session): off unless
asked for; when on, every request's arrival, body, response start and end with its JSON-RPC ids,
so a stalled request shows exactly where it stopped. No Docker: a backend that runs nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from mcp_codeexec.config import load_settings
from mcp_codeexec.files import FileStore
from mcp_codeexec.http_app import create_http_app
from mcp_codeexec.request_trace import RequestTrace, read_trace, rpc_summary
from tests.support.dummy_backend import DummyBackend
from tests.support.http_probe import ACCEPT, LEGACY, rpc_payload, serve_app
from tests.support.isolation import isolate_settings


@pytest.fixture(autouse=True)
def _no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_settings(tmp_path, monkeypatch)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _app(tmp_path: Path, **overrides: Any) -> Any:
    settings = load_settings(data_dir=str(tmp_path / "data"), no_auth=True, **overrides)
    return create_http_app(settings, backend=DummyBackend(), store=FileStore(settings.files_dir))


def test_tracing_is_off_by_default_and_then_not_even_installed(tmp_path: Path) -> None:
    app = _app(tmp_path)
    assert RequestTrace not in [m.cls for m in app.user_middleware]
    traced = _app(tmp_path / "t", trace_requests=str(tmp_path / "trace.jsonl"))
    assert traced.user_middleware[0].cls is RequestTrace  # outermost: before the drain gate and auth


def test_the_environment_variable_turns_tracing_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_CODEEXEC_TRACE_REQUESTS", str(tmp_path / "trace.jsonl"))
    assert load_settings().trace_requests == tmp_path / "trace.jsonl"


def test_a_traced_session_logs_each_request_from_arrival_to_end_with_its_ids(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    with serve_app(_app(tmp_path, trace_requests=str(trace))) as url, httpx2.Client(timeout=30) as http:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        r = http.post(url + "/mcp", content=json.dumps(init), headers={**ACCEPT, "X-Request-Id": "c1"})
        sid = r.headers["mcp-session-id"]
        session = {**ACCEPT, "Mcp-Session-Id": sid, "MCP-Protocol-Version": LEGACY}
        assert http.post(url + "/mcp", content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                         headers={**session, "X-Request-Id": "c2"}).status_code == 202
        call = {"jsonrpc": "2.0", "id": "call-7", "method": "tools/call",
                "params": {"name": "bash_code_execution", "arguments": {"command": "true"}}}
        r = http.post(url + "/mcp", content=json.dumps(call), headers={**session, "X-Request-Id": "c3"})
        assert "result" in rpc_payload(r)
        assert http.get(url + "/healthz").status_code == 200

    by_rid = {r.rid: r for r in read_trace(trace)}
    assert set(by_rid) == {"c1", "c2", "c3", None}
    first, note, call_req = by_rid["c1"], by_rid["c2"], by_rid["c3"]
    assert first.rpc == [[1, "initialize"]] and first.events["arrive"]["sid"] is None
    assert first.events["start"]["sid"] == sid and first.events["start"]["status"] == 200  # the new session's id
    assert note.rpc == [[None, "notifications/initialized"]] and note.events["start"]["status"] == 202
    assert call_req.rpc == [["call-7", "tools/call"]] and call_req.events["arrive"]["sid"] == sid
    assert call_req.events["arrive"]["method"] == "POST" and call_req.events["arrive"]["path"] == "/mcp"
    assert call_req.events["end"]["bytes"] > 0
    for request in (first, note, call_req):
        assert request.stopped_at() is None
        times = [request.t(ev) for ev in ("arrive", "body", "start", "end", "done")]
        assert times == sorted(times), request.events
    assert by_rid[None].events["arrive"]["path"] == "/healthz"  # every path, not only /mcp


async def _drive(trace: RequestTrace, body: bytes = b"{}") -> None:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body[:3], "more_body": True},
                {"type": "http.request", "body": body[3:], "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": [(b"x-request-id", b"held"), (b"mcp-session-id", b"s1")]}
    await trace(scope, receive, send)


def _only(path: Path) -> Any:
    [request] = read_trace(path)
    return request


@pytest.mark.anyio
async def test_a_request_held_inside_the_app_is_seen_arrived_and_read_but_never_started(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    held = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        held.set()
        await anyio.sleep_forever()  # e.g. waiting on a lock or a task group that never answers

    async with anyio.create_task_group() as tg:
        tg.start_soon(_drive, RequestTrace(app, path), b'{"jsonrpc":"2.0","id":3,"method":"tools/call"}')
        await held.wait()
        request = _only(path)
        assert request.rid == "held" and request.events["arrive"]["sid"] == "s1"
        assert request.rpc == [[3, "tools/call"]] and request.events["body"]["bytes"] == 46
        assert request.stopped_at() == "arrived and read, no response start"
        tg.cancel_scope.cancel()
    assert _only(path).events["done"]["error"] == "CancelledError"


@pytest.mark.anyio
async def test_an_app_that_never_reads_the_body_or_never_ends_the_body_is_told_apart(tmp_path: Path) -> None:
    unread, unended = tmp_path / "unread.jsonl", tmp_path / "unended.jsonl"
    waiting = anyio.Event()

    async def never_reads(scope: Any, receive: Any, send: Any) -> None:
        waiting.set()
        await anyio.sleep_forever()

    async def never_ends(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"mcp-session-id", b"s1")]})
        await send({"type": "http.response.body", "body": b"event: message\r\n", "more_body": True})
        waiting.set()
        await anyio.sleep_forever()

    for app, path, where in ((never_reads, unread, "arrived, body never read by the app"),
                             (never_ends, unended, "response started, body never ended")):
        waiting = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drive, RequestTrace(app, path))
            await waiting.wait()
            assert _only(path).stopped_at() == where
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_client_that_goes_away_and_an_app_that_raises_are_both_recorded(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "http.request"
        assert (await receive())["type"] == "http.disconnect"
        raise OSError("boom")

    messages = [{"type": "http.request", "body": b"not json", "more_body": False}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError(message)

    with pytest.raises(OSError):
        await RequestTrace(app, path)({"type": "http", "method": "POST", "path": "/mcp", "headers": []}, receive, send)
    request = _only(path)
    assert request.rpc is None and "gone" in request.events and request.events["done"]["error"] == "OSError"
    assert request.stopped_at() == "arrived and read, no response start"


def test_json_rpc_bodies_are_summarised_as_id_and_method_pairs() -> None:
    assert rpc_summary(b'[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"n"}]') == [[1, "a"], [None, "n"]]
    assert rpc_summary(b'{"jsonrpc":"2.0","id":"x","result":{}}') == [["x", None]]  # a response from the client
    assert rpc_summary(b"\xff\xfe") is None and rpc_summary(b"[1, 2]") is None and rpc_summary(b"") is None
    assert rpc_summary(json.dumps({"id": "y" * 500, "method": "m" * 500}).encode()) == [["y" * 128, "m" * 128]]
