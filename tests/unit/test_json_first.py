"""Handshake-era HTTP calls are answered as JSON unless they need a stream (json_first.py): a quick
call gets ``application/json``; one that reports progress, or outlives the JSON window, gets the
SDK's SSE stream with every message in order. Real app, in-process uvicorn, no Docker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from mcp_codeexec import json_first
from mcp_codeexec.backends.base import CallContext, Outcome
from mcp_codeexec.config import load_settings
from mcp_codeexec.files import FileStore
from mcp_codeexec.http_app import create_http_app
from mcp_codeexec.schemas import BashInput
from tests.support.dummy_backend import DummyBackend
from tests.support.http_probe import legacy_headers, open_legacy_session, rpc_payload, serve_app
from tests.support.isolation import isolate_settings
from tests.support.oracle import assert_hosted_shape

TOKEN = "json-first-token-0123456789"
BASH = "bash_code_execution"


class SlowBackend(DummyBackend):
    """``sleep N`` takes N seconds (the dummy runs nothing)."""

    async def bash(self, request: BashInput, ctx: CallContext) -> Outcome:
        if request.command.startswith("sleep "):
            await anyio.sleep(float(request.command.split()[1]))
            return await super().bash(request.model_copy(update={"command": "slept"}), ctx)
        return await super().bash(request, ctx)


@pytest.fixture(params=[True, False], ids=["direct", "sdk"])
def url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app with plain calls answered by the transport itself (direct_calls) and without: the
    JSON-first choice holds on both paths."""
    isolate_settings(tmp_path, monkeypatch)
    settings = load_settings(data_dir=str(tmp_path / "data"), auth_tokens=[f"alice:{TOKEN}"], direct_calls=request.param)
    app = create_http_app(settings, backend=SlowBackend(), store=FileStore(settings.files_dir))
    with serve_app(app) as base:
        yield base


def post_call(http: httpx2.Client, url: str, sid: str, command: str, id: int, meta: dict[str, Any] | None = None) -> httpx2.Response:
    params: dict[str, Any] = {"name": BASH, "arguments": {"command": command}}
    if meta:
        params["_meta"] = meta
    body = {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}
    return http.post(url + "/mcp", content=json.dumps(body), headers=legacy_headers(TOKEN, sid))


def sse_messages(response: httpx2.Response) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:") and line[5:].strip()]


def test_a_quick_call_is_answered_as_json(url: str) -> None:
    with httpx2.Client(timeout=30) as http:
        sid = open_legacy_session(http, url, TOKEN)
        response = post_call(http, url, sid, "echo hi", 2)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["mcp-session-id"] == sid
        payload = response.json()
        assert payload["id"] == 2 and payload["jsonrpc"] == "2.0"
        assert_hosted_shape(payload["result"]["structuredContent"], BASH)
        # Requests that are not calls keep the SDK's own answers.
        listed = http.post(url + "/mcp", content=json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
                           headers=legacy_headers(TOKEN, sid))
        assert BASH in {t["name"] for t in rpc_payload(listed)["result"]["tools"]}


def test_a_call_reporting_progress_streams_the_progress_then_the_result(url: str) -> None:
    with httpx2.Client(timeout=30) as http:
        sid = open_legacy_session(http, url, TOKEN)
        response = post_call(http, url, sid, "echo hi", 2, meta={"progressToken": "p-1"})
        assert response.headers["content-type"].startswith("text/event-stream")
        first, last = sse_messages(response)
        assert first["method"] == "notifications/progress" and first["params"]["progressToken"] == "p-1"
        assert last["id"] == 2 and last["result"]["structuredContent"]["stdout"] == "echo hi"


def test_a_call_outliving_the_json_window_is_streamed(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_first, "JSON_WINDOW_SECONDS", 0.2)
    with httpx2.Client(timeout=30) as http:
        sid = open_legacy_session(http, url, TOKEN)
        response = post_call(http, url, sid, "sleep 0.6", 2)
        assert response.headers["content-type"].startswith("text/event-stream")
        [only] = sse_messages(response)
        assert only["id"] == 2 and only["result"]["structuredContent"]["stdout"] == "slept"
        # and the session goes on answering quick calls as JSON
        again = post_call(http, url, sid, "echo again", 3)
        assert again.headers["content-type"].startswith("application/json") and again.json()["id"] == 3


def test_bad_input_still_gets_the_sdks_answers(url: str) -> None:
    with httpx2.Client(timeout=30) as http:
        sid = open_legacy_session(http, url, TOKEN)
        headers = legacy_headers(TOKEN, sid)
        garbage = http.post(url + "/mcp", content=b"{not json", headers=headers)
        assert garbage.status_code == 400 and "Parse error" in garbage.text
        no_sse = http.post(url + "/mcp", content=json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/list"}),
                           headers={**headers, "Accept": "application/json"})
        assert no_sse.status_code == 406
        wrong = http.post(url + "/mcp", content=json.dumps({"jsonrpc": "2.0", "id": 6, "method": "tools/list"}),
                          headers={**headers, "Mcp-Session-Id": "0" * 32})
        assert wrong.status_code == 404
