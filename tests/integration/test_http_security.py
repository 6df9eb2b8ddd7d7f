"""HTTP mode security end to end: the real ``mcp-codeexec serve --transport http`` subprocess with
real sandboxes. Principals (one per token) must not see or touch each other's containers, files or
sessions; unauthenticated, rebinding and oversized requests are refused; malformed JSON-RPC never
crashes the server; per-principal container limits answer ``too_many_requests``.

The fast, Docker-free twins of most checks are in tests/unit/test_http_security.py."""

from __future__ import annotations

import json
import re
import secrets
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mcp_codeexec.config import Settings
from mcp_codeexec.engines.docker import L_INSTALL, L_OWNER, installation_label
from tests.integration.conftest import make_settings
from tests.support.http_probe import (
    Server,
    auth,
    legacy_call,
    legacy_headers,
    modern_call,
    modern_headers,
    modern_request,
    open_legacy_session,
    rpc_payload,
    spawn,
    tool_result,
)
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import remove_installation

ALICE = "alice-" + secrets.token_urlsafe(24)
BOB = "bob-" + secrets.token_urlsafe(24)
CAROL = "carol-" + secrets.token_urlsafe(24)
BASH = "bash_code_execution"
EDITOR = "text_editor_code_execution"
CONTAINER_ID = re.compile(r"^container_[0-9a-f]{24}$")
MAX_PER_PRINCIPAL = 2


# ----------------------------------------------------------------------------- server processes


def containers_of(settings: Settings, owner: str | None = None) -> list[dict[str, Any]]:
    """This test installation's sandbox containers (never anyone else's), optionally one owner's."""
    label = f"{L_INSTALL}={installation_label(settings.data_dir)}"
    out = subprocess.run(["docker", "ps", "-a", "--filter", f"label={label}", "--format", "{{json .Labels}}"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    rows = []
    for line in out.splitlines():
        labels = dict(kv.split("=", 1) for kv in json.loads(line).split(",") if "=" in kv)
        if owner is None or labels.get(L_OWNER) == owner:
            rows.append(labels)
    return rows


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> Iterator[tuple[Server, Settings]]:
    """One server for the module: three principals, at most two containers each."""
    settings = make_settings(tmp_path_factory.mktemp("http-security"))
    env = {
        "MCP_CODEEXEC_AUTH_TOKENS": f"alice:{ALICE},bob:{BOB},carol:{CAROL}",
        "MCP_CODEEXEC_MAX_CONTAINERS_PER_PRINCIPAL": str(MAX_PER_PRINCIPAL),
    }
    try:
        with spawn(settings, env=env) as server:
            yield server, settings
    finally:
        remove_installation(settings)


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=httpx2.Timeout(120)) as client:
        yield client


def bash(http: httpx2.Client, server: Server, token: str, command: str, **extra: Any) -> dict[str, Any]:
    result = tool_result(modern_call(http, server.url, token, BASH, {"command": command, **extra}))
    assert_hosted_shape(result["structuredContent"], BASH)
    return result


def assert_serving(server: Server, token: str = ALICE) -> None:
    with httpx2.Client(timeout=120) as c:
        result = bash(c, server, token, "echo ok")
    assert result["structuredContent"]["stdout"] == "ok\n", result
    assert server.proc.poll() is None


# ----------------------------------------------------------------------------- tokens by default


def test_a_token_is_required_by_default_generated_0600_and_printed_once(tmp_path: Path, docker_engine: None) -> None:
    settings = make_settings(tmp_path)
    token_file = settings.data_dir / "http_token"
    try:
        with spawn(settings) as server, httpx2.Client(timeout=120) as c:
            token = token_file.read_text().strip()
            assert len(token) >= 40
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
            assert server.stderr().count(token) == 1, server.stderr()

            for headers in ({}, auth("not-the-token-0123456789"), auth(token[:-1]), {"X-Api-Key": token + "x"}):
                body = json.dumps(modern_request("tools/call", {"name": BASH, "arguments": {"command": "touch /tmp/pwned"}}))
                r = c.post(server.url + "/mcp", content=body, headers={**modern_headers(None), **headers})
                assert r.status_code == 401, r.text
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert c.get(server.url + "/v1/files", headers=headers).status_code == 401
            assert containers_of(settings) == []  # nothing was started for an unauthenticated caller

            result = bash(c, server, token, "echo ok")
            assert result["structuredContent"]["stdout"] == "ok\n"
            assert len(containers_of(settings, "default")) == 1

        with spawn(settings) as server, httpx2.Client(timeout=120) as c:  # restart: same token, not printed again
            assert token_file.read_text().strip() == token
            assert token not in server.stderr()
            assert c.get(server.url + "/v1/files", headers=auth(token)).status_code == 200
            assert c.get(server.url + "/v1/files").status_code == 401
    finally:
        remove_installation(settings)


@pytest.mark.parametrize("how", [["--host", "0.0.0.0", "--no-auth"], ["--host", "::", "--no-auth"], ["--host", "0.0.0.0"]])
def test_no_auth_is_refused_on_a_non_loopback_host(tmp_path: Path, docker_engine: None, how: list[str]) -> None:
    settings = make_settings(tmp_path)
    args, env = (how, {}) if "--no-auth" in how else (how, {"MCP_CODEEXEC_NO_AUTH": "true"})
    with spawn(settings, args=args, env=env, expect_start=False) as server:
        assert server.proc.wait(timeout=60) != 0
        assert "loopback" in server.stderr()


def test_no_auth_on_loopback_is_loudly_logged(tmp_path: Path, docker_engine: None) -> None:
    settings = make_settings(tmp_path)
    with spawn(settings, args=["--no-auth"]) as server, httpx2.Client(timeout=30) as c:
        assert c.get(server.url + "/v1/files").status_code == 200
        assert "AUTH IS DISABLED" in server.stderr()
        r = c.get(server.url + "/v1/files", headers={"Origin": "http://evil.example"})
        assert r.status_code == 403  # no auth does not mean no DNS-rebinding protection


# ----------------------------------------------------------------------------- shared server


def test_missing_and_wrong_tokens_are_401(shared: tuple[Server, Settings], http: httpx2.Client) -> None:
    server, settings = shared
    for headers in ({}, auth("x" * 40), auth(ALICE[:-2]), auth(f"alice:{ALICE}"), {"Authorization": f"Basic {ALICE}"},
                    {"Authorization": b"Bearer \xff\xfe" + ALICE.encode()}):
        for method, path in (("POST", "/mcp"), ("GET", "/v1/files"), ("DELETE", "/v1/files/file_x"), ("GET", "/v1/files/file_x/content")):
            body = json.dumps(modern_request("tools/call", {"name": BASH, "arguments": {"command": "id"}})) if method == "POST" else None
            r = http.request(method, server.url + path, content=body, headers={**modern_headers(None), **headers})
            assert r.status_code == 401, (headers, path, r.status_code, r.text)
    assert server.proc.poll() is None


def test_another_principal_cannot_use_a_container_by_id(shared: tuple[Server, Settings], http: httpx2.Client) -> None:
    server, settings = shared
    first = bash(http, server, ALICE, "echo alice-secret > /workspace/secret.txt && echo done")
    alice_cid = first["_meta"]["container"]["id"]
    assert CONTAINER_ID.match(alice_cid)
    assert containers_of(settings, "bob") == []

    never_issued = "container_" + secrets.token_hex(12)
    answers = {}
    for label, cid in (("alice's", alice_cid), ("never issued", never_issued)):
        for tool, arguments in ((BASH, {"command": "cat /workspace/secret.txt; touch /workspace/bob-was-here"}),
                                (EDITOR, {"command": "view", "path": "/workspace/secret.txt"}),
                                (EDITOR, {"command": "create", "path": "/workspace/bob.txt", "file_text": "x"}),
                                (EDITOR, {"command": "str_replace", "path": "secret.txt", "old_str": "alice", "new_str": "bob"})):
            result = tool_result(modern_call(http, server.url, BOB, tool, {**arguments, "container_id": cid}))
            sc = result["structuredContent"]
            assert_hosted_shape(sc, tool)
            assert result["isError"] is True and sc["error_code"] == "unavailable", sc
            text = result["content"][0]["text"]
            assert "container_expired" in text and "alice-secret" not in json.dumps(result)
            answers[(label, tool, arguments["command"])] = (json.dumps(sc).replace(cid, "ID"), text.replace(cid, "ID"),
                                                            result.get("_meta", {}).get("container"))
    for key, answer in answers.items():
        if key[0] == "alice's":
            twin = answers[("never issued", key[1], key[2])]
            assert answer == twin, f"{key}: bob can tell alice's container from a non-existent one"
            assert answer[2] is None  # and no container metadata is revealed

    # malformed or path-shaped ids are refused the same way
    for cid in ("../" + alice_cid, alice_cid.upper(), alice_cid + "0", alice_cid[:-1], "container_", "*", alice_cid + "\n"):
        result = tool_result(modern_call(http, server.url, BOB, BASH, {"command": "id", "container_id": cid}))
        assert result["structuredContent"] == {"type": "bash_code_execution_tool_result_error", "error_code": "unavailable"}

    again = bash(http, server, ALICE, "cat /workspace/secret.txt; ls -A /workspace")
    out = again["structuredContent"]["stdout"]
    assert out.startswith("alice-secret\n") and "bob" not in out
    assert again["_meta"]["container"]["id"] == alice_cid
    assert containers_of(settings, "bob") == []  # bob's attempts started nothing

    own = bash(http, server, BOB, "ls -A /workspace; cat /workspace/secret.txt")
    assert own["_meta"]["container"]["id"] != alice_cid
    assert "alice-secret" not in own["structuredContent"]["stdout"]
    assert own["structuredContent"]["return_code"] != 0


def test_another_principal_cannot_see_read_or_delete_files(shared: tuple[Server, Settings], http: httpx2.Client) -> None:
    server, _ = shared
    made = bash(http, server, ALICE, "printf 'alice output\\n' > $OUTPUT_DIR/report.txt")
    (block,) = made["structuredContent"]["content"]
    output_id = block["file_id"]
    r = http.post(server.url + "/v1/files", headers=auth(ALICE), files={"file": ("upload.txt", b"alice upload\n")})
    assert r.status_code == 200
    upload_id = r.json()["id"]
    missing = "file_" + "Q" * 24

    for fid in (output_id, upload_id):
        assert re.fullmatch(r"file_[A-Za-z0-9]{24,}", fid)
        for method, path in (("GET", "/v1/files/{}"), ("GET", "/v1/files/{}/content"), ("DELETE", "/v1/files/{}")):
            theirs = http.request(method, server.url + path.format(fid), headers=auth(BOB))
            nothing = http.request(method, server.url + path.format(missing), headers=auth(BOB))
            assert theirs.status_code == nothing.status_code == 404, (path, theirs.text)
            assert theirs.text.replace(fid, "ID") == nothing.text.replace(missing, "ID")
        listing = http.get(server.url + "/v1/files?limit=1000", headers=auth(BOB))
        assert listing.status_code == 200 and fid not in listing.text

        reads = []
        for file_id in (fid, missing):
            uri = f"codeexec://files/{file_id}"
            r = http.post(server.url + "/mcp", content=json.dumps(modern_request("resources/read", {"uri": uri})),
                          headers={**modern_headers(BOB, "resources/read"), "Mcp-Name": uri})
            payload = rpc_payload(r)
            assert "error" in payload and "alice" not in r.text
            reads.append((r.status_code, payload["error"]["code"], payload["error"]["message"].replace(file_id, "ID")))
        assert reads[0] == reads[1]
        listed = tool_result(http.post(server.url + "/mcp", content=json.dumps(modern_request("resources/list")),
                                       headers=modern_headers(BOB, "resources/list")))
        assert fid not in json.dumps(listed)

    # alice's files survived bob's DELETEs
    assert http.get(server.url + f"/v1/files/{output_id}/content", headers=auth(ALICE)).content == b"alice output\n"
    assert http.get(server.url + f"/v1/files/{upload_id}/content", headers=auth(ALICE)).content == b"alice upload\n"


def test_another_principal_cannot_upload_into_a_container(shared: tuple[Server, Settings], http: httpx2.Client) -> None:
    server, settings = shared
    alice_cid = bash(http, server, ALICE, "mkdir -p /workspace/inputs; ls /workspace/inputs")["_meta"]["container"]["id"]
    for cid in (alice_cid, "container_" + secrets.token_hex(12)):
        for where in ("query", "form"):
            kwargs: dict[str, Any] = {"params": {"container_id": cid}} if where == "query" else {"data": {"container_id": cid}}
            r = http.post(server.url + "/v1/files", headers=auth(BOB), files={"file": ("planted.sh", b"echo planted\n")}, **kwargs)
            assert r.status_code == 404, (cid, where, r.status_code, r.text)
            assert "planted" not in http.get(server.url + "/v1/files", headers=auth(BOB)).text  # the upload was undone
    listing = bash(http, server, ALICE, "ls -A /workspace/inputs")["structuredContent"]["stdout"]
    assert "planted" not in listing

    escape = settings.data_dir.parent / "escaped"
    for cid in ("../../escaped", f"../{escape.name}", str(escape), "container_../../escaped"):
        r = http.post(server.url + "/v1/files", headers=auth(BOB), params={"container_id": cid},
                      files={"file": ("x.txt", b"x")})
        assert r.status_code == 404, (cid, r.status_code, r.text)
    assert not escape.exists()
    assert not any(p.name.startswith("..") for p in (settings.data_dir / "pending").glob("*")) if (settings.data_dir / "pending").exists() else True

    # the owner can upload into her own container
    r = http.post(server.url + "/v1/files", headers=auth(ALICE), params={"container_id": alice_cid},
                  files={"file": ("mine.txt", b"mine\n")})
    assert r.status_code == 200, r.text
    assert bash(http, server, ALICE, "cat /workspace/inputs/mine.txt")["structuredContent"]["stdout"] == "mine\n"


def test_sessions_are_bound_to_their_principal(shared: tuple[Server, Settings], http: httpx2.Client) -> None:
    server, _ = shared
    sid = open_legacy_session(http, server.url, ALICE)
    assert re.fullmatch(r"[0-9a-f]{32}", sid)
    assert legacy_call(http, server.url, BOB, sid, BASH, {"command": "id"}).status_code == 404
    assert http.delete(server.url + "/mcp", headers=legacy_headers(BOB, sid)).status_code == 404
    body = {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}
    r = http.post(server.url + "/mcp", content=json.dumps(body), headers=legacy_headers(ALICE, sid))
    assert r.status_code == 200 and "bash_code_execution" in r.text


def test_ids_are_unguessable(shared: tuple[Server, Settings], http: httpx2.Client) -> None:
    server, settings = shared
    ids = {c["io.mcp-codeexec.id"] for c in containers_of(settings)}
    ids |= {bash(http, server, t, "true")["_meta"]["container"]["id"] for t in (ALICE, BOB)}
    assert len(ids) >= 2
    for cid in ids:
        assert CONTAINER_ID.match(cid), cid  # 96 random bits from secrets.token_hex
    assert len({cid[10:14] for cid in ids}) == len(ids)  # no counter, no shared prefix
    names = subprocess.run(["docker", "ps", "-a", "--filter", f"label={L_INSTALL}={installation_label(settings.data_dir)}",
                            "--format", "{{.Names}}"], capture_output=True, text=True, check=True).stdout.split()
    assert sorted(names) == sorted("mcp-codeexec-" + i for i in ids)  # docker names carry nothing else


def test_host_and_origin_checks_stop_dns_rebinding(shared: tuple[Server, Settings], http: httpx2.Client) -> None:
    server, settings = shared
    before = len(containers_of(settings))
    port = server.url.rsplit(":", 1)[1]
    body = json.dumps(modern_request("tools/call", {"name": BASH, "arguments": {"command": "echo rebound"}}))
    for host in ("evil.example", f"evil.example:{port}", "attacker.rebind.network", "127.0.0.1.nip.io"):
        r = http.post(server.url + "/mcp", content=body, headers={**modern_headers(ALICE, "tools/call", BASH), "Host": host})
        assert r.status_code == 421, (host, r.text)
    for origin in ("http://evil.example", f"http://evil.example:{port}", "null"):
        r = http.post(server.url + "/mcp", content=body, headers={**modern_headers(ALICE, "tools/call", BASH), "Origin": origin})
        assert r.status_code == 403, (origin, r.text)
        assert http.get(server.url + "/v1/files", headers={**auth(ALICE), "Origin": origin}).status_code == 403
    assert len(containers_of(settings)) == before
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        r = http.post(server.url + "/mcp", content=json.dumps(modern_request("tools/list")),
                      headers={**modern_headers(ALICE, "tools/list"), "Origin": origin})
        assert r.status_code == 200, (origin, r.text)


def test_request_bodies_over_the_limit_are_413_before_parsing(shared: tuple[Server, Settings]) -> None:
    server, _ = shared
    limit = 64 * 1024 * 1024  # the default max_request_bytes
    rss_before = server.rss()
    with httpx2.Client(timeout=120) as c:  # declared too large: refused from the headers alone, even unauthenticated
        for token in (None, ALICE):
            r = c.post(server.url + "/mcp", content=b"[" * (limit + 1), headers=modern_headers(token))
            assert r.status_code == 413, r.text

    def chunks() -> Iterator[bytes]:
        for _ in range(80):  # 80 MiB without a Content-Length
            yield b" " * (1024 * 1024)

    with httpx2.Client(timeout=120) as c:
        try:
            r = c.post(server.url + "/mcp", content=chunks(), headers=modern_headers(ALICE, "tools/call", BASH))
        except httpx2.TransportError:
            pass  # closed while still sending: acceptable
        else:
            assert r.status_code == 413, (r.status_code, r.text[:300])
    assert server.rss() - rss_before < 200 * 1024 * 1024
    assert_serving(server)


def test_a_50_mb_request_is_an_error_not_a_crash(shared: tuple[Server, Settings], http: httpx2.Client) -> None:
    server, _ = shared
    big = "x" * (50 * 1024 * 1024)
    result = tool_result(modern_call(http, server.url, ALICE, BASH, {"command": big}))
    assert result["isError"] is True
    assert result["structuredContent"] == {"type": "bash_code_execution_tool_result_error", "error_code": "invalid_tool_input"}
    result = tool_result(modern_call(http, server.url, ALICE, EDITOR, {"command": "view", "path": big}))
    assert result["isError"] is True and result["structuredContent"]["error_code"] in ("invalid_tool_input", "file_not_found")
    r = http.post(server.url + "/mcp", content=b"\x00" * (50 * 1024 * 1024), headers=modern_headers(ALICE))
    assert 400 <= r.status_code < 500
    assert_serving(server)


MALFORMED: list[tuple[str, bytes | str]] = [
    ("garbage", b"\x00\xff\xfe garbage \x80"),
    ("empty", b""),
    ("truncated", b'{"jsonrpc":"2.0","id":1,"method":"tools/'),
    ("wrong version", json.dumps({"jsonrpc": "1.0", "id": 1, "method": "tools/list"})),
    ("unknown method", json.dumps(modern_request("containers/delete_all"))),
    ("missing params", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call"})),
    ("params wrong type", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": [BASH]})),
    ("unknown tool", json.dumps(modern_request("tools/call", {"name": "shell", "arguments": {"command": "id"}}))),
    ("arguments wrong type", json.dumps(modern_request("tools/call", {"name": BASH, "arguments": "id"}))),
    ("command wrong type", json.dumps(modern_request("tools/call", {"name": BASH, "arguments": {"command": ["id"]}}))),
    ("missing command", json.dumps(modern_request("tools/call", {"name": BASH, "arguments": {}}))),
    ("editor missing path", json.dumps(modern_request("tools/call", {"name": EDITOR, "arguments": {"command": "view"}}))),
    ("id object", json.dumps({"jsonrpc": "2.0", "id": {}, "method": "tools/list"})),
    ("batch", json.dumps([modern_request("tools/list"), modern_request("tools/list", id=2)])),
    ("deep nesting", "[" * 200_000 + "]" * 200_000),
    ("deep arguments", json.dumps(modern_request("tools/call", {"name": BASH, "arguments": {"command": "id"}}))
        .replace('"id"}', '"id","x":' + "[" * 50_000 + "]" * 50_000 + "}")),
    ("lone surrogate", json.dumps(modern_request("tools/call", {"name": BASH, "arguments": {"command": "echo \udcff"}}))),
]


@pytest.mark.parametrize("era", ["modern", "legacy"])
def test_malformed_json_rpc_gets_errors_and_the_server_keeps_serving(shared: tuple[Server, Settings], http: httpx2.Client, era: str) -> None:
    server, _ = shared
    sid = open_legacy_session(http, server.url, ALICE) if era == "legacy" else ""
    for name, body in MALFORMED:
        headers = modern_headers(ALICE, "tools/call", BASH) if era == "modern" else legacy_headers(ALICE, sid)
        r = http.post(server.url + "/mcp", content=body, headers=headers)
        assert r.status_code < 500, (era, name, r.status_code, r.text[:500])
        if r.status_code == 202:
            continue
        payload = rpc_payload(r)
        if "result" in payload:
            assert_hosted_shape(payload["result"]["structuredContent"])
        else:
            assert isinstance(payload["error"]["code"], int), (name, payload)
        assert "Traceback" not in r.text
    assert server.proc.poll() is None
    assert_serving(server)


def test_per_principal_container_limit_answers_too_many_requests(shared: tuple[Server, Settings], http: httpx2.Client) -> None:
    """Each MCP session (its own Mcp-Session-Id) gets its own container; the (MAX+1)th is refused."""
    server, settings = shared
    sessions = [open_legacy_session(http, server.url, CAROL) for _ in range(MAX_PER_PRINCIPAL + 1)]
    cids = []
    for sid in sessions[:MAX_PER_PRINCIPAL]:
        result = tool_result(legacy_call(http, server.url, CAROL, sid, BASH, {"command": "echo mine > /workspace/m; echo ok"}))
        assert result["structuredContent"]["stdout"] == "ok\n", result
        cids.append(result["_meta"]["container"]["id"])
    assert len(set(cids)) == MAX_PER_PRINCIPAL

    over = tool_result(legacy_call(http, server.url, CAROL, sessions[-1], BASH, {"command": "echo one-too-many"}))
    assert over["isError"] is True
    assert over["structuredContent"] == {"type": "bash_code_execution_tool_result_error", "error_code": "too_many_requests"}
    over = tool_result(modern_call(http, server.url, CAROL, EDITOR, {"command": "create", "path": "x", "file_text": "x"}))
    assert over["structuredContent"]["error_code"] == "too_many_requests"  # the session-less default is one more
    assert len(containers_of(settings, "carol")) == MAX_PER_PRINCIPAL

    # carol's own containers still answer, also by id from the refused session; others are unaffected
    for sid, cid in zip(sessions, cids):
        again = tool_result(legacy_call(http, server.url, CAROL, sid, BASH, {"command": "cat /workspace/m"}))
        assert again["structuredContent"]["stdout"] == "mine\n"
    by_id = tool_result(legacy_call(http, server.url, CAROL, sessions[-1], BASH, {"command": "cat /workspace/m", "container_id": cids[0]}))
    assert by_id["structuredContent"]["stdout"] == "mine\n" and by_id["_meta"]["container"]["id"] == cids[0]
    assert bash(http, server, BOB, "echo bob-fine")["structuredContent"]["stdout"] == "bob-fine\n"
    assert server.proc.poll() is None


def test_a_server_with_another_data_dir_cannot_attach_this_ones_containers(shared: tuple[Server, Settings], http: httpx2.Client,
                                                                           tmp_path: Path) -> None:
    """Principal names are local to one installation (data dir): "alice" of another server on the same
    engine is someone else, and must not reach this alice's container by its id."""
    server, _ = shared
    alice_cid = bash(http, server, ALICE, "echo installation-a > /workspace/where")["_meta"]["container"]["id"]
    other_settings = make_settings(tmp_path)
    other_alice = "alice-elsewhere-" + secrets.token_urlsafe(16)
    try:
        with spawn(other_settings, env={"MCP_CODEEXEC_AUTH_TOKENS": f"alice:{other_alice}"}) as other:
            result = tool_result(modern_call(http, other.url, other_alice, BASH, {"command": "cat /workspace/where",
                                                                                   "container_id": alice_cid}))
            assert result["structuredContent"] == {"type": "bash_code_execution_tool_result_error", "error_code": "unavailable"}
            assert "installation-a" not in json.dumps(result)
            r = http.post(other.url + "/v1/files", headers=auth(other_alice), params={"container_id": alice_cid},
                          files={"file": ("x.txt", b"x")})
            assert r.status_code == 404, r.text
    finally:
        remove_installation(other_settings)
    out = bash(http, server, ALICE, "cat /workspace/where; ls /workspace/inputs 2>/dev/null")["structuredContent"]["stdout"]
    assert out.startswith("installation-a\n") and "x.txt" not in out
