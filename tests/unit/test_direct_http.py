"""Plain hosted-tool calls of a handshake-era HTTP session are answered by the transport itself
(json_first.py with direct_calls.py): the answers are the SDK path's own — results, error results,
refusals, a peer's cancellation, a session ended under a call, a call outliving the JSON window —
and everything else keeps the SDK's path. Each check runs against the same app with the direct
path on and off. Real app, in-process uvicorn, the backend that runs nothing (no Docker)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_codeexec import json_first
from mcp_codeexec.backends.base import CallContext, Outcome
from mcp_codeexec.config import load_settings
from mcp_codeexec.files import FileStore
from mcp_codeexec.http_app import create_http_app
from mcp_codeexec.schemas import BashInput
from tests.support.call_cases import BASH, PLAIN, SDK_ONLY
from tests.support.dummy_backend import DummyBackend
from tests.support.http_probe import ACCEPT, auth, legacy_headers, serve_app
from tests.support.isolation import isolate_settings
from tests.support.oracle import assert_client_round_trips, assert_hosted_shape

ALICE, BOB = "direct-http-alice-0123456789", "direct-http-bob-0123456789"


class SlowBackend(DummyBackend):
    """``sleep N`` takes N seconds and notes when it was cancelled (the dummy runs nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled: list[str] = []

    async def bash(self, request: BashInput, ctx: CallContext) -> Outcome:
        if request.command.startswith("sleep "):
            try:
                await anyio.sleep(float(request.command.split()[1]))
            except anyio.get_cancelled_exc_class():
                self.cancelled.append(request.command)
                raise
        return await super().bash(request, ctx)


@dataclass
class App:
    url: str
    backend: SlowBackend
    on: bool
    direct: list[int] = field(default_factory=lambda: [0])  # calls the transport answered itself

    def open(self, http: httpx2.Client, version: str = "2025-06-18", token: str = ALICE) -> str:
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        r = http.post(self.url + "/mcp", content=json.dumps(init), headers={**ACCEPT, **auth(token)})
        assert r.status_code == 200, r.text
        sid = r.headers["mcp-session-id"]
        r = http.post(self.url + "/mcp", content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                      headers=headers(sid, version, token))
        assert r.status_code == 202, r.text
        return sid

    def post(self, http: httpx2.Client, sid: str, body: Any, version: str = "2025-06-18", token: str = ALICE,
             **extra: str) -> httpx2.Response:
        content = body if isinstance(body, str | bytes) else json.dumps(body)
        return http.post(self.url + "/mcp", content=content, headers={**headers(sid, version, token), **extra})


def headers(sid: str, version: str = "2025-06-18", token: str = ALICE) -> dict[str, str]:
    return {**legacy_headers(token, sid), "MCP-Protocol-Version": version}


def call(rid: Any, name: str, arguments: Any, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if meta is not None:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


def seen(response: httpx2.Response) -> tuple[int, str, Any]:
    """Status, media type and JSON-RPC message(s) of a response, the dummy's expiry blanked."""
    kind = response.headers.get("content-type", "").split(";")[0]
    if kind == "text/event-stream":
        body: Any = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:") and line[5:].strip()]
    elif kind == "application/json":
        body = response.json() if response.content else None
    else:
        body = response.text
    text = json.loads(json.dumps(body))
    for message in text if isinstance(text, list) else [text]:
        container = (((message if isinstance(message, dict) else {}).get("result") or {}).get("_meta") or {}).get("container")
        if container:
            container["expires_at"] = "-"
    return response.status_code, kind, text


@contextlib.contextmanager
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool) -> Iterator[App]:
    isolate_settings(tmp_path, monkeypatch)
    data = tmp_path / ("direct" if direct else "sdk")
    settings = load_settings(data_dir=str(data), auth_tokens=[f"alice:{ALICE}", f"bob:{BOB}"], direct_calls=direct)
    backend = SlowBackend()
    served = App("", backend, direct)
    respond = json_first.JsonFirstTransport._respond

    async def counting(self: Any, *args: Any, **kw: Any) -> None:
        served.direct[0] += 1
        await respond(self, *args, **kw)

    monkeypatch.setattr(json_first.JsonFirstTransport, "_respond", counting)
    with serve_app(create_http_app(settings, backend=backend, store=FileStore(settings.files_dir))) as url:
        served.url = url
        yield served


@pytest.fixture(params=[True, False], ids=["direct", "sdk"])
def served(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    with app(tmp_path, monkeypatch, request.param) as made:
        yield made


@contextlib.contextmanager
def in_flight(served: App, sid: str, rid: int, command: str) -> Iterator[list[httpx2.Response]]:
    """A call running on its own connection while the block runs; its response once it ended."""
    answer: list[httpx2.Response] = []

    def post() -> None:
        with httpx2.Client(timeout=30) as own:
            answer.append(served.post(own, sid, call(rid, BASH, {"command": command})))

    worker = threading.Thread(target=post)
    worker.start()
    time.sleep(0.5)
    try:
        yield answer
    finally:
        worker.join(10)


CALLS = PLAIN + SDK_ONLY + [
    (BASH, {"command": "\ud800"}, None),  # a lone surrogate: the SDK's parser refuses it (400)
    (BASH, {"command": "true"}, {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}),  # an envelope: the SDK's
]


@pytest.mark.parametrize("version", ["2025-06-18", "2025-03-26", "2025-11-25"])
def test_answers_are_the_sdk_paths_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    answers: dict[bool, list[Any]] = {}
    counts: dict[bool, int] = {}
    for direct in (True, False):
        with app(tmp_path, monkeypatch, direct) as served, httpx2.Client(timeout=30) as http:
            sid = served.open(http, version)
            got = [seen(served.post(http, sid, call(i, name, arguments, meta), version))
                   for i, (name, arguments, meta) in enumerate(CALLS, start=1)]
            # Not calls, or not plain ones: the SDK's answers either way.
            got.append(seen(served.post(http, sid, {"jsonrpc": "2.0", "id": "l", "method": "tools/list"}, version)))
            got.append(seen(served.post(http, sid, '{"jsonrpc":"2.0","id":9,"method":"tools/call","params":' + "[" * 50_000 + "]" * 50_000 + "}", version)))
            got.append(seen(served.post(http, sid, {**call(10, BASH, {"command": "true"}), "extra": 1}, version)))
            got.append(seen(served.post(http, sid, call(11, BASH, {"command": "true"}), version, Accept="application/json")))
            got.append(seen(served.post(http, sid, call(12, BASH, {"command": "true"}), version, **{"Content-Type": "text/plain"})))
            got.append(seen(served.post(http, sid, call(13, BASH, {"command": "true"}), version, token=BOB)))  # not bob's session
            answers[direct], counts[direct] = got, served.direct[0]
    for one, other, sent in zip(answers[True], answers[False], CALLS + [None] * 6, strict=True):
        assert one == other, sent
    assert counts == {True: len(PLAIN), False: 0}
    for status, _, message in answers[True][: len(CALLS)]:
        final = message[-1] if isinstance(message, list) else message  # a stream ends with the answer
        structured = (final.get("result") or {}).get("structuredContent") if isinstance(final, dict) else None
        if structured:
            assert_hosted_shape(structured)


def test_a_peer_cancelling_a_call_gets_the_sdks_answer_and_the_command_is_stopped(served: App) -> None:
    with httpx2.Client(timeout=30) as http:
        sid = served.open(http)
        with in_flight(served, sid, 7, "sleep 20") as answer:
            cancel = served.post(http, sid, {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}})
            assert cancel.status_code == 202
        assert seen(answer[0]) == (200, "application/json",
                                   {"jsonrpc": "2.0", "id": 7, "error": {"code": -32800, "message": "Request cancelled"}})
        assert served.backend.cancelled == ["sleep 20"]
        after = seen(served.post(http, sid, call(8, BASH, {"command": "echo after"})))
        assert after[2]["result"]["structuredContent"]["stdout"] == "echo after"


def test_a_cancel_naming_no_plain_id_is_answered_and_leaves_the_call_running(served: App) -> None:
    with httpx2.Client(timeout=30) as http:
        sid = served.open(http)
        with in_flight(served, sid, 7, "sleep 20") as answer:
            for odd in ([7], {"a": 7}, 7.5, None, True):
                r = served.post(http, sid, {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": odd}})
                assert r.status_code < 500, (odd, r.status_code, r.text)
            assert served.backend.cancelled == []
            served.post(http, sid, {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}})
        assert seen(answer[0])[2]["error"]["code"] == -32800
        assert served.backend.cancelled == ["sleep 20"]


def test_ending_the_session_under_a_call_answers_it_as_the_sdk_does(served: App) -> None:
    with httpx2.Client(timeout=30) as http:
        sid = served.open(http)
        with in_flight(served, sid, 7, "sleep 20") as answer:
            assert http.delete(served.url + "/mcp", headers=headers(sid)).status_code == 200
        status, kind, message = seen(answer[0])
        assert (status, kind) == (500, "application/json")
        assert message["error"]["message"] == "Session terminated before the request completed"
        assert served.backend.cancelled == ["sleep 20"]
        assert served.post(http, sid, call(8, BASH, {"command": "true"})).status_code == 404


def test_a_call_outliving_the_json_window_is_streamed_with_its_answer(served: App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_first, "JSON_WINDOW_SECONDS", 0.2)
    with httpx2.Client(timeout=30) as http:
        sid = served.open(http)
        status, kind, messages = seen(served.post(http, sid, call(2, BASH, {"command": "sleep 0.6"})))
        assert (status, kind) == (200, "text/event-stream")
        [only] = messages
        assert only["id"] == 2 and only["result"]["structuredContent"]["stdout"] == "sleep 0.6"
        assert seen(served.post(http, sid, call(3, BASH, {"command": "echo quick"})))[1] == "application/json"


def test_a_second_initialize_leaves_the_session_to_the_sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Which version the session then speaks is the SDK's to say: nothing is answered past it."""
    with app(tmp_path, monkeypatch, True) as served, httpx2.Client(timeout=30) as http:
        sid = served.open(http)
        assert seen(served.post(http, sid, call(1, BASH, {"command": "true"})))[0] == 200
        assert served.direct[0] == 1
        again = {"jsonrpc": "2.0", "id": 2, "method": "initialize",
                 "params": {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        served.post(http, sid, again)
        result = seen(served.post(http, sid, call(3, BASH, {"command": "echo still"})))[2]["result"]
        assert result["structuredContent"]["stdout"] == "echo still"
        assert served.direct[0] == 1


def test_concurrent_calls_of_one_session_are_answered_each_once(served: App) -> None:
    with httpx2.Client(timeout=30) as http:
        sid = served.open(http)
        answers: dict[int, Any] = {}

        def one(i: int) -> None:
            with httpx2.Client(timeout=30) as own:
                answers[i] = seen(served.post(own, sid, call(i, BASH, {"command": "sleep 0.3" if i == 0 else f"echo {i}"})))

        workers = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(20)
        assert sorted(answers) == list(range(12))
        for i, (status, _, message) in answers.items():
            assert status == 200 and message["id"] == i
            assert message["result"]["structuredContent"]["stdout"] == ("sleep 0.3" if i == 0 else f"echo {i}")


@pytest.mark.anyio
async def test_a_real_mcp_client_gets_hosted_results(served: App) -> None:
    async with httpx2.AsyncClient(headers=auth(ALICE), timeout=30) as http:
        async with Client(streamable_http_client(served.url + "/mcp", http_client=http), mode="legacy") as client:
            await assert_client_round_trips(client, 3)
    assert served.direct[0] == (4 if served.on else 0)
