"""HTTP mode security without Docker: the real Starlette app from ``create_http_app`` (auth middleware,
Host/Origin checks, body limits, MCP streamable HTTP, Files API) served by an in-process uvicorn
over a backend that runs nothing. The end-to-end twins with real sandboxes are in
tests/integration/test_http_security.py."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mcp_codeexec.config import Settings, load_settings
from mcp_codeexec.files import FileStore
from mcp_codeexec.http_app import SecurityMiddleware, create_http_app, load_tokens, principal_for_token
from tests.support.dummy_backend import DummyBackend
from tests.support.http_probe import (
    ACCEPT,
    auth,
    legacy_call,
    legacy_headers,
    modern_call,
    modern_headers,
    modern_request,
    open_legacy_session,
    rpc_payload,
    serve_app,
    tool_result,
)
from tests.support.isolation import isolate_settings
from tests.support.oracle import assert_hosted_shape

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdefgh"
ANON = "unnamed-token-0123456789abcdef"
LIMIT = 256 * 1024
BASH = "bash_code_execution"


@pytest.fixture(autouse=True)
def _no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_settings(tmp_path, monkeypatch)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=str(tmp_path / "data"), auth_tokens=[f"alice:{ALICE}", f"bob:{BOB}", ANON],
        max_request_bytes=LIMIT, max_upload_bytes=LIMIT,
    )
    values.update(overrides)
    return load_settings(**values)


class Served:
    def __init__(self, url: str, backend: DummyBackend, store: FileStore) -> None:
        self.url = url
        self.backend = backend
        self.store = store
        self.http = httpx2.Client(timeout=30)

    def fresh(self) -> httpx2.Client:
        """A client on a new connection (after a rejected oversize body the old one may be closed)."""
        return httpx2.Client(timeout=30)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    settings = make_settings(tmp_path)
    backend = DummyBackend()
    store = FileStore(settings.files_dir)
    with serve_app(create_http_app(settings, backend=backend, store=store)) as url:
        s = Served(url, backend, store)
        yield s
        s.http.close()
    store.close()


def assert_serving(s: Served) -> None:
    """The server still answers a normal authenticated tool call."""
    with s.fresh() as c:
        result = tool_result(modern_call(c, s.url, ALICE, BASH, {"command": "echo still-serving"}))
    assert result["structuredContent"]["stdout"] == "echo still-serving"


# ----------------------------------------------------------------------------- authentication

ENDPOINTS = [
    ("POST", "/mcp"), ("GET", "/mcp"), ("DELETE", "/mcp"),
    ("GET", "/v1/files"), ("POST", "/v1/files"),
    ("GET", "/v1/files/file_abc"), ("GET", "/v1/files/file_abc/content"), ("DELETE", "/v1/files/file_abc"),
    ("GET", "/"), ("GET", "/no/such/path"),
]


@pytest.mark.parametrize("method,path", ENDPOINTS)
def test_every_endpoint_without_a_token_is_401_with_www_authenticate(served: Served, method: str, path: str) -> None:
    body = json.dumps(modern_request("tools/call", {"name": BASH, "arguments": {"command": "id"}}))
    r = served.http.request(method, served.url + path, content=body if method == "POST" else None,
                            headers=modern_headers(None) if path == "/mcp" else {})
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"]["type"] == "authentication_error"
    assert served.backend.calls == []


BAD_CREDENTIALS = [
    {"Authorization": "Bearer wrong-token-0123456789abcdef"},
    {"Authorization": f"Bearer {ALICE[:-1]}"},  # a prefix of a valid token
    {"Authorization": f"Bearer {ALICE}x"},  # a valid token with more after it
    {"Authorization": f"Bearer {ALICE.upper()}"},
    {"Authorization": "Bearer"},
    {"Authorization": ALICE},  # no scheme
    {"Authorization": "Basic " + base64.b64encode(f"alice:{ALICE}".encode()).decode()},
    {"Authorization": f"Token {ALICE}"},
    {"X-Api-Key": "wrong-token-0123456789abcdef"},
    {"Authorization": "Bearer principal-name-alice"},
    {"Authorization": "Bearer alice"},
    {"Authorization": f"Bearer alice:{ALICE}"},  # the config entry is not the token
    {"Authorization": b"Bearer \xff\xfe\xfd-not-ascii-0123456789"},  # raw non-ASCII header bytes
    {"Authorization": "Bearer " + "A" * 8000},
]


@pytest.mark.parametrize("headers", BAD_CREDENTIALS, ids=range(len(BAD_CREDENTIALS)))
@pytest.mark.parametrize("path", ["/mcp", "/v1/files"])
def test_a_wrong_token_is_401_never_a_crash(served: Served, headers: dict[str, Any], path: str) -> None:
    if path == "/mcp":
        r = served.http.post(served.url + path, content=json.dumps(modern_request("tools/list")),
                             headers={**modern_headers(None, "tools/list"), **headers})
    else:
        r = served.http.get(served.url + path, headers=headers)
    assert r.status_code == 401, (r.status_code, r.text)
    assert served.backend.calls == []


def test_a_valid_token_works_as_bearer_in_any_case_and_as_x_api_key(served: Served) -> None:
    for headers in ({"Authorization": f"Bearer {ALICE}"}, {"Authorization": f"bearer {ALICE}"},
                    {"authorization": f"BEARER  {ALICE}"}, {"X-Api-Key": ALICE}):
        r = served.http.get(served.url + "/v1/files", headers=headers)
        assert r.status_code == 200, (headers, r.text)


def test_each_token_is_its_own_principal_and_the_backend_is_told_which(served: Served) -> None:
    for token in (ALICE, BOB, ANON):
        tool_result(modern_call(served.http, served.url, token, BASH, {"command": f"whoami {token[:5]}"}))
    seen = {cmd: (ctx.principal, ctx.session_key) for cmd, ctx in served.backend.calls}
    assert seen["whoami alice"] == ("alice", "alice:default")
    assert seen["whoami bob-t"] == ("bob", "bob:default")
    anon = principal_for_token(ANON)
    assert seen["whoami unnam"] == (anon, f"{anon}:default")
    assert anon.startswith("token-") and ANON not in anon


def test_mcp_sessions_are_bound_to_the_principal_that_opened_them(served: Served) -> None:
    """Session ids are not credentials: bob presenting alice's Mcp-Session-Id is told it does not
    exist, for POST, GET and DELETE alike, and alice's session is unaffected."""
    c = served.http
    sid = open_legacy_session(c, served.url, ALICE)
    assert len(sid) >= 32 and int(sid, 16) >= 0  # uuid4 hex: 122 random bits

    r = legacy_call(c, served.url, BOB, sid, BASH, {"command": "bob-in-alice-session"})
    assert r.status_code == 404, r.text
    r = c.get(served.url + "/mcp", headers={**legacy_headers(BOB, sid), "Accept": "text/event-stream"})
    assert r.status_code == 404, r.text
    r = c.delete(served.url + "/mcp", headers=legacy_headers(BOB, sid))
    assert r.status_code == 404, r.text
    assert not any(cmd == "bob-in-alice-session" for cmd, _ in served.backend.calls)

    result = tool_result(legacy_call(c, served.url, ALICE, sid, BASH, {"command": "alice-still-here"}))
    assert result["structuredContent"]["stdout"] == "alice-still-here"
    _, ctx = served.backend.calls[-1]
    assert ctx.principal == "alice" and ctx.session_key == f"alice:{sid}"
    # and each principal's sessions get distinct session keys (so distinct containers)
    sid_b = open_legacy_session(c, served.url, BOB)
    tool_result(legacy_call(c, served.url, BOB, sid_b, BASH, {"command": "bob-own"}))
    assert served.backend.calls[-1][1].session_key == f"bob:{sid_b}"


def test_a_forged_principal_header_or_state_is_ignored(served: Served) -> None:
    headers = {**modern_headers(BOB, "tools/call", BASH), "X-Principal": "alice", "Cookie": "principal=alice"}
    body = modern_request("tools/call", {"name": BASH, "arguments": {"command": "who"}})
    tool_result(served.http.post(served.url + "/mcp", content=json.dumps(body), headers=headers))
    assert served.backend.calls[-1][1].principal == "bob"


# ----------------------------------------------------------------------------- token configuration


def test_a_token_is_generated_stored_0600_and_printed_exactly_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path, auth_tokens=[])
    tokens = load_tokens(settings)
    (token, principal), = tokens.items()
    assert principal == "default" and len(token) >= 40
    path = settings.data_dir / "http_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == token
    err = capsys.readouterr().err
    assert err.count(token) == 1 and str(path) in err

    assert load_tokens(settings) == tokens  # reused on restart ...
    assert token not in capsys.readouterr().err  # ... and not printed again
    other = make_settings(tmp_path / "other", auth_tokens=[])
    assert load_tokens(other) != tokens  # random per installation


def test_configured_tokens_are_used_and_no_token_file_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path)
    tokens = load_tokens(settings)
    assert tokens == {ALICE: "alice", BOB: "bob", ANON: principal_for_token(ANON)}
    assert not (settings.data_dir / "http_token").exists()
    assert ALICE not in capsys.readouterr().err


@pytest.mark.parametrize("entries", [["local:" + "x" * 20], [":" + "x" * 20], [" local :" + "x" * 20], ["alice:short"], ["short"]])
def test_reserved_principals_and_short_tokens_are_refused(tmp_path: Path, entries: list[str]) -> None:
    with pytest.raises(SystemExit):
        load_tokens(make_settings(tmp_path, auth_tokens=entries))


def test_an_emptied_token_file_is_refused_rather_than_locking_everyone_out_silently(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auth_tokens=[])
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / "http_token").write_text("\n")
    with pytest.raises(SystemExit):
        load_tokens(settings)


def test_tokens_come_from_the_environment_as_a_comma_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_CODEEXEC_AUTH_TOKENS", f"alice:{ALICE}, bob:{BOB}")
    settings = load_settings(data_dir=str(tmp_path))
    assert load_tokens(settings) == {ALICE: "alice", BOB: "bob"}


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "10.0.0.1", "example.invalid", "localhost.example.invalid", "127.0.0.1.nip.io"])
def test_no_auth_is_refused_on_a_non_loopback_host(tmp_path: Path, host: str) -> None:
    settings = make_settings(tmp_path, host=host, no_auth=True)
    with pytest.raises(SystemExit, match="loopback"):
        create_http_app(settings, backend=DummyBackend(), store=FileStore(tmp_path / "files"))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_no_auth_on_loopback_is_allowed_but_loudly_logged(tmp_path: Path, host: str, caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path, host=host, no_auth=True)
    with caplog.at_level(logging.WARNING, logger="mcp_codeexec.http_app"):
        create_http_app(settings, backend=DummyBackend(), store=FileStore(tmp_path / "files"))
    assert any(r.levelno >= logging.WARNING and "AUTH IS DISABLED" in r.getMessage() for r in caplog.records)


def test_no_auth_serves_everyone_as_the_local_principal(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, no_auth=True)
    backend = DummyBackend()
    with serve_app(create_http_app(settings, backend=backend, store=FileStore(tmp_path / "files"))) as url:
        with httpx2.Client(timeout=30) as c:
            tool_result(modern_call(c, url, None, BASH, {"command": "hi"}))
            r = c.post(url + "/mcp", content=b"{}", headers={**ACCEPT, "Origin": "http://evil.example"})
            assert r.status_code == 403  # DNS rebinding is still refused without auth
    assert backend.calls[-1][1].principal == "local"


# ----------------------------------------------------------------------------- DNS rebinding


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example:80",
                                  "attacker.rebind.network", "localhost.", "[::2]:80", "0.0.0.0", "10.0.0.1"])
def test_a_host_header_that_is_not_the_bound_address_is_421(served: Served, host: str) -> None:
    for path in ("/mcp", "/v1/files"):
        r = served.http.post(served.url + path, content=b"{}", headers={**modern_headers(ALICE), "Host": host})
        assert r.status_code == 421, (host, r.status_code, r.text)
    assert served.backend.calls == []


def test_loopback_host_headers_are_accepted(served: Served) -> None:
    port = served.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        r = served.http.get(served.url + "/v1/files", headers={**auth(ALICE), "Host": host})
        assert r.status_code == 200, (host, r.text)


@pytest.mark.parametrize("origin", ["http://evil.example", "https://evil.example:443", "null", "http://127.0.0.1.evil.example",
                                    "http://localhost.evil.example:8000", "file://", "http://[::1].evil.example",
                                    "http://evil.example/http://localhost"])
@pytest.mark.parametrize("token", [ALICE, None])
def test_a_foreign_origin_is_403_even_with_a_valid_token(served: Served, origin: str, token: str | None) -> None:
    body = json.dumps(modern_request("tools/call", {"name": BASH, "arguments": {"command": "rebound"}}))
    r = served.http.post(served.url + "/mcp", content=body, headers={**modern_headers(token, "tools/call", BASH), "Origin": origin})
    assert r.status_code == 403, (origin, r.status_code, r.text)
    r = served.http.get(served.url + "/v1/files", headers={**auth(token), "Origin": origin})
    assert r.status_code == 403
    assert served.backend.calls == []


def test_a_loopback_origin_works(served: Served) -> None:
    port = served.url.rsplit(":", 1)[1]
    for i, origin in enumerate((f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}", "http://localhost")):
        body = json.dumps(modern_request("tools/call", {"name": BASH, "arguments": {"command": f"origin-{i}"}}))
        r = served.http.post(served.url + "/mcp", content=body, headers={**modern_headers(ALICE, "tools/call", BASH), "Origin": origin})
        assert r.status_code == 200, (origin, r.text)
    assert len(served.backend.calls) == 4


def test_configured_allowed_origins_work_and_others_do_not(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, allowed_origins=["https://app.example"])
    with serve_app(create_http_app(settings, backend=DummyBackend(), store=FileStore(tmp_path / "files"))) as url:
        with httpx2.Client(timeout=30) as c:
            assert c.get(url + "/v1/files", headers={**auth(ALICE), "Origin": "https://app.example"}).status_code == 200
            assert c.get(url + "/v1/files", headers={**auth(ALICE), "Origin": "https://other.example"}).status_code == 403


def test_binding_all_interfaces_accepts_any_host_but_still_needs_token_and_origin(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, host="0.0.0.0")
    app = create_http_app(settings, backend=DummyBackend(), store=FileStore(tmp_path / "files"))
    with serve_app(app) as url:
        with httpx2.Client(timeout=30) as c:
            assert c.get(url + "/v1/files", headers={"Host": "myhost.lan:8000"}).status_code == 401
            assert c.get(url + "/v1/files", headers={**auth(ALICE), "Host": "myhost.lan:8000"}).status_code == 200
            r = c.get(url + "/v1/files", headers={**auth(ALICE), "Origin": "http://localhost:8000"})
            assert r.status_code == 403  # loopback origins are only implied when bound to loopback


# ----------------------------------------------------------------------------- body limits


@pytest.mark.parametrize("token", [ALICE, None])
def test_a_declared_oversize_body_is_413_before_auth_or_parsing(served: Served, token: str | None) -> None:
    r = served.http.post(served.url + "/mcp", content=b"[" * (LIMIT + 1), headers=modern_headers(token))
    assert r.status_code == 413, r.text
    assert r.json()["error"]["type"] == "request_too_large"
    assert_serving(served)


@pytest.mark.parametrize("era", ["modern", "legacy"])
def test_a_chunked_oversize_body_is_413_not_a_500(served: Served, era: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"bash_code_execution","arguments":{"command":"'
        for _ in range(50):  # 50 MiB against a 256 KiB limit; the server stops reading long before
            yield b"x" * (1024 * 1024)
        yield b'"}}}'

    with served.fresh() as c:
        if era == "modern":
            headers = modern_headers(ALICE, "tools/call", BASH)
        else:
            headers = legacy_headers(ALICE, open_legacy_session(c, served.url, ALICE))
        try:
            r = c.post(served.url + "/mcp", content=chunks(), headers=headers)
        except httpx2.TransportError:
            pass  # the server may close the connection while the client is still sending: fine
        else:
            assert r.status_code == 413, (r.status_code, r.text[:500])
    assert not served.backend.calls
    assert_serving(served)


def test_a_body_just_under_the_limit_is_parsed(served: Served) -> None:
    command = "y" * (LIMIT - 1000)
    result = tool_result(modern_call(served.http, served.url, ALICE, BASH, {"command": command}))
    assert result["isError"] is False
    assert served.backend.calls[-1][0] == command  # the whole command reached the backend (its echo is cut to the result budget)


def test_uploads_have_their_own_larger_limit(served: Served) -> None:
    data = os.urandom(LIMIT // 2)
    r = served.http.post(served.url + "/v1/files", headers=auth(ALICE), files={"file": ("a.bin", data)})
    assert r.status_code == 200, r.text
    r = served.http.post(served.url + "/v1/files", headers=auth(ALICE), files={"file": ("b.bin", os.urandom(LIMIT + 1))})
    assert r.status_code == 413


# ----------------------------------------------------------------------------- malformed JSON-RPC


def _meta_params(**params: Any) -> dict[str, Any]:
    return modern_request("x", params)["params"]


MALFORMED: list[tuple[str, bytes | str]] = [
    ("garbage bytes", b"\x00\xff\xfe garbage \x80\x81"),
    ("invalid utf-8 inside a string", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\xff\xfe"}}'),
    ("empty body", b""),
    ("just whitespace", b"   \n  "),
    ("truncated json", b'{"jsonrpc":"2.0","id":1,"method":"tools/'),
    ("a bare string", b'"tools/list"'),
    ("a bare number", b"12345678901234567890123456789012345678901234567890"),
    ("huge integer id", '{"jsonrpc":"2.0","id":' + "9" * 5000 + ',"method":"tools/list"}'),
    ("null", b"null"),
    ("wrong jsonrpc version", json.dumps({"jsonrpc": "1.0", "id": 1, "method": "tools/list", "params": _meta_params()})),
    ("jsonrpc missing", json.dumps({"id": 1, "method": "tools/list", "params": _meta_params()})),
    ("jsonrpc as number", json.dumps({"jsonrpc": 2.0, "id": 1, "method": "tools/list", "params": _meta_params()})),
    ("method missing", json.dumps({"jsonrpc": "2.0", "id": 1, "params": _meta_params()})),
    ("method not a string", json.dumps({"jsonrpc": "2.0", "id": 1, "method": ["tools/call"], "params": _meta_params()})),
    ("unknown method", json.dumps(modern_request("tools/destroy"))),
    ("internal-looking method", json.dumps(modern_request("__init__"))),
    ("params missing", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call"})),
    ("params a string", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": "x"})),
    ("params a list", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": [1, 2]})),
    ("id an object", json.dumps({"jsonrpc": "2.0", "id": {"a": 1}, "method": "tools/list", "params": _meta_params()})),
    ("id a list", json.dumps({"jsonrpc": "2.0", "id": [1], "method": "tools/list", "params": _meta_params()})),
    ("id a float", json.dumps({"jsonrpc": "2.0", "id": 1.5, "method": "tools/list", "params": _meta_params()})),
    ("name missing", json.dumps(modern_request("tools/call", {"arguments": {"command": "ls"}}))),
    ("name a number", json.dumps(modern_request("tools/call", {"name": 7, "arguments": {"command": "ls"}}))),
    ("unknown tool", json.dumps(modern_request("tools/call", {"name": "rm_rf", "arguments": {"command": "ls"}}))),
    ("arguments a list", json.dumps(modern_request("tools/call", {"name": BASH, "arguments": ["ls"]}))),
    ("arguments a string", json.dumps(modern_request("tools/call", {"name": BASH, "arguments": "ls"}))),
    ("arguments null", json.dumps(modern_request("tools/call", {"name": BASH, "arguments": None}))),
    ("_meta not an object", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": 5}})),
    ("batch array", json.dumps([modern_request("tools/list", id=1), modern_request("tools/list", id=2)])),
    ("empty batch", b"[]"),
    ("deeply nested arrays", "[" * 100_000 + "]" * 100_000),
    ("deeply nested objects", '{"a":' * 30_000 + "1" + "}" * 30_000),
    ("deeply nested arguments", json.dumps(modern_request("tools/call", {"name": BASH, "arguments": {"command": "ls"}}))
        .replace('"ls"', '"ls","x":' + "[" * 20_000 + "]" * 20_000)),
    ("duplicate keys", '{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/list","method":"tools/call","params":{}}'),
    ("a response instead of a request", json.dumps({"jsonrpc": "2.0", "id": 1, "result": {}})),
    ("an error instead of a request", json.dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "x"}})),
    ("lone surrogate escapes", json.dumps(modern_request("tools/call", {"name": BASH, "arguments": {"command": "\ud800"}}))),
    ("NUL in method", json.dumps(modern_request("tools/\u0000call"))),
]


@pytest.mark.parametrize("era", ["modern", "legacy"])
def test_malformed_json_rpc_is_answered_with_an_error_never_a_5xx(served: Served, era: str) -> None:
    c = served.http
    sid = open_legacy_session(c, served.url, ALICE) if era == "legacy" else ""
    for name, body in MALFORMED:
        headers = modern_headers(ALICE, "tools/call", BASH) if era == "modern" else legacy_headers(ALICE, sid)
        r = c.post(served.url + "/mcp", content=body, headers=headers)
        assert r.status_code < 500, (era, name, r.status_code, r.text[:500])
        if r.status_code == 202:
            continue  # accepted as a notification/response and dropped
        payload = rpc_payload(r)
        if payload.get("type") == "error":  # rejected by the security layer (e.g. 413), Anthropic-style
            assert 400 <= r.status_code < 500 and payload["error"]["type"], (name, payload)
        elif r.status_code == 200 and "result" in payload:
            # a tool call that reached the handler: its answer is a hosted block
            assert payload["result"].get("isError") in (True, False), (name, payload)
            assert_hosted_shape(payload["result"]["structuredContent"])
        else:
            assert "error" in payload and isinstance(payload["error"]["code"], int), (name, payload)
            assert "Traceback" not in r.text and "File \"/" not in r.text, name
    assert_serving(served)


def test_wrong_content_type_and_accept_are_4xx(served: Served) -> None:
    body = json.dumps(modern_request("tools/list"))
    for headers in ({"Content-Type": "text/plain"}, {"Accept": "text/html"}, {"Content-Type": "application/x-www-form-urlencoded"}):
        r = served.http.post(served.url + "/mcp", content=body, headers={**modern_headers(ALICE, "tools/list"), **headers})
        assert 400 <= r.status_code < 500, (headers, r.status_code, r.text)
    for method in ("PUT", "PATCH", "OPTIONS"):
        r = served.http.request(method, served.url + "/mcp", headers=modern_headers(ALICE, "tools/list"))
        assert 400 <= r.status_code < 500, (method, r.status_code)
    assert_serving(served)


def test_a_websocket_scope_never_reaches_the_app() -> None:
    import anyio

    reached: list[Any] = []
    sent: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    mw = SecurityMiddleware(inner, tokens={ALICE: "alice"}, allowed_hosts={"127.0.0.1"}, allowed_origins=set(),
                            max_body=LIMIT, max_upload=LIMIT)
    scope = {"type": "websocket", "path": "/mcp", "headers": [(b"host", b"127.0.0.1")]}
    anyio.run(mw, scope, receive, send)
    assert reached == [] and sent[0]["type"] == "websocket.close"


# ----------------------------------------------------------------------------- files across principals


def _upload(c: httpx2.Client, url: str, token: str, name: str, data: bytes) -> dict[str, Any]:
    r = c.post(url + "/v1/files", headers=auth(token), files={"file": (name, data)})
    assert r.status_code == 200, r.text
    return r.json()


def test_another_principals_files_are_invisible_and_untouchable(served: Served) -> None:
    c, url = served.http, served.url
    secret = _upload(c, url, ALICE, "alice-secret.txt", b"alice's secret\n")
    fid = secret["id"]
    missing = "file_" + "A" * 24

    for path in (f"/v1/files/{fid}", f"/v1/files/{fid}/content"):
        mine, theirs, nothing = (c.get(url + p, headers=auth(BOB)) for p in (path, path.replace(fid, missing), path))
        assert theirs.status_code == 404 and mine.status_code == 404
        assert mine.json()["error"]["type"] == nothing.json()["error"]["type"] == "not_found_error"
        assert mine.json()["error"]["message"].replace(fid, "ID") == theirs.json()["error"]["message"].replace(missing, "ID")
    r = c.delete(url + f"/v1/files/{fid}", headers=auth(BOB))
    assert r.status_code == 404
    listing = c.get(url + "/v1/files", headers=auth(BOB)).json()
    assert fid not in json.dumps(listing)
    for query in ("?after_id={}", "?before_id={}", "?limit=1000&container_id={}"):
        # paging from alice's id answers exactly as paging from an id that does not exist
        theirs = c.get(url + "/v1/files" + query.format(fid), headers=auth(BOB))
        nothing = c.get(url + "/v1/files" + query.format(missing), headers=auth(BOB))
        assert theirs.status_code == nothing.status_code
        assert theirs.text.replace(fid, "ID") == nothing.text.replace(missing, "ID")
        assert "alice-secret" not in theirs.text

    # over MCP: resources/list does not show it, resources/read says not found exactly like a missing id
    listed = tool_result(c.post(url + "/mcp", content=json.dumps(modern_request("resources/list")),
                                headers=modern_headers(BOB, "resources/list")))
    assert fid not in json.dumps(listed)
    answers = []
    for file_id in (fid, missing):
        body = modern_request("resources/read", {"uri": f"codeexec://files/{file_id}"})
        r = c.post(url + "/mcp", content=json.dumps(body), headers={**modern_headers(BOB, "resources/read"),
                                                                     "Mcp-Name": f"codeexec://files/{file_id}"})
        payload = rpc_payload(r)
        assert "error" in payload, payload
        answers.append((r.status_code, payload["error"]["code"], payload["error"]["message"].replace(file_id, "ID")))
    assert answers[0] == answers[1]

    # alice still has it, byte for byte
    assert c.get(url + f"/v1/files/{fid}/content", headers=auth(ALICE)).content == b"alice's secret\n"
    body = modern_request("resources/read", {"uri": f"codeexec://files/{fid}"})
    read = tool_result(c.post(url + "/mcp", content=json.dumps(body), headers={**modern_headers(ALICE, "resources/read"),
                                                                               "Mcp-Name": f"codeexec://files/{fid}"}))
    assert read["contents"][0]["text"] == "alice's secret\n"


def test_file_ids_are_unguessable(served: Served) -> None:
    ids = [_upload(served.http, served.url, ALICE, f"f{i}.txt", b"x")["id"] for i in range(20)]
    assert len(set(ids)) == len(ids)
    for fid in ids:
        assert fid.startswith("file_")
        body = fid[len("file_"):]
        assert len(body) >= 24 and body.isalnum()  # 24 base62 characters: ~143 bits
    # no shared prefix or counter between consecutive ids
    assert len({fid[5:9] for fid in ids}) > 15


@pytest.mark.parametrize("file_id", ["../data/http_token", "..%2F..%2Fhttp_token", "file_../../x", "file_%00", "file_" + "a" * 5000,
                                     "%2e%2e%2fhttp_token", "file_abc/../../files.db"])
def test_path_shaped_file_ids_are_just_not_found(served: Served, file_id: str) -> None:
    for suffix in ("", "/content"):
        r = served.http.get(served.url + f"/v1/files/{file_id}{suffix}", headers=auth(ALICE))
        assert r.status_code == 404, (file_id, r.status_code, r.text[:300])


# ----------------------------------------------------------------------------- call pacing


def test_a_principal_past_its_call_rate_gets_too_many_requests_and_others_do_not(tmp_path: Path) -> None:
    """http_calls_per_minute/http_call_burst pace each principal: past the burst a call runs
    nothing and is answered with the hosted too_many_requests error, saying when to retry."""
    settings = make_settings(tmp_path, http_calls_per_minute=1, http_call_burst=3)
    backend = DummyBackend()
    store = FileStore(settings.files_dir)
    with serve_app(create_http_app(settings, backend=backend, store=store)) as url, httpx2.Client(timeout=30) as c:
        for n in range(3):
            ok = tool_result(modern_call(c, url, ALICE, BASH, {"command": f"alice {n}"}))
            assert ok["structuredContent"]["type"] == "bash_code_execution_result"
        over = tool_result(modern_call(c, url, ALICE, BASH, {"command": "alice over"}))
        assert over["isError"] is True
        assert over["structuredContent"] == {"type": "bash_code_execution_tool_result_error", "error_code": "too_many_requests"}
        assert_hosted_shape(over["structuredContent"], BASH)
        assert "retry in" in over["content"][0]["text"]
        editor = tool_result(modern_call(c, url, ALICE, "text_editor_code_execution", {"command": "view", "path": "x"}))
        assert editor["structuredContent"]["error_code"] == "too_many_requests"
        assert tool_result(modern_call(c, url, BOB, BASH, {"command": "bob"}))["structuredContent"]["stdout"] == "bob"
    store.close()
    assert [cmd for cmd, _ in backend.calls] == ["alice 0", "alice 1", "alice 2", "bob"]  # refused calls ran nothing


def test_call_pacing_can_be_switched_off(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, http_calls_per_minute=0, http_call_burst=1)
    backend = DummyBackend()
    store = FileStore(settings.files_dir)
    with serve_app(create_http_app(settings, backend=backend, store=store)) as url, httpx2.Client(timeout=30) as c:
        for n in range(5):
            assert tool_result(modern_call(c, url, ALICE, BASH, {"command": f"{n}"}))["structuredContent"]["stdout"] == f"{n}"
    store.close()


# ----------------------------------------------------------------------------- open sessions per principal


def test_a_principal_at_its_session_cap_is_refused_new_sessions_but_keeps_working(tmp_path: Path) -> None:
    """http_max_sessions_per_principal: past it a new handshake gets 429 (a JSON-RPC error saying
    what to do) before the SDK opens anything; the principal's open sessions and session-less calls
    still work, other principals are unaffected, and a DELETE frees a slot."""
    settings = make_settings(tmp_path, http_max_sessions_per_principal=2)
    backend = DummyBackend()
    store = FileStore(settings.files_dir)
    with serve_app(create_http_app(settings, backend=backend, store=store)) as url, httpx2.Client(timeout=30) as c:
        first, second = open_legacy_session(c, url, ALICE), open_legacy_session(c, url, ALICE)
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        refused = c.post(url + "/mcp", content=json.dumps(init), headers={**ACCEPT, **auth(ALICE)})
        assert refused.status_code == 429 and "mcp-session-id" not in refused.headers
        assert "too many open MCP sessions" in refused.json()["error"]["message"]
        assert tool_result(legacy_call(c, url, ALICE, second, BASH, {"command": "in session"}))["structuredContent"]["stdout"] == "in session"
        assert tool_result(modern_call(c, url, ALICE, BASH, {"command": "session-less"}))["structuredContent"]["stdout"] == "session-less"
        open_legacy_session(c, url, BOB)
        # bob cannot end alice's session, so it does not free her slot either
        assert c.delete(url + "/mcp", headers=legacy_headers(BOB, first)).status_code == 404
        assert c.post(url + "/mcp", content=json.dumps(init), headers={**ACCEPT, **auth(ALICE)}).status_code == 429
        assert c.delete(url + "/mcp", headers=legacy_headers(ALICE, first)).status_code in (200, 204)
        open_legacy_session(c, url, ALICE)
    store.close()
