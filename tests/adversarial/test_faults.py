"""Concurrency and hostile clients (ADVERSARIAL.md 26-28; security.md §8 A10, D39, H57-H59).

Cases 23 (server SIGKILL), 24 (engine restart) and 25 (container killed or removed behind the
server's back) live in tests/integration/test_crash_safety.py; the HTTP transport's own battery
(auth, Origin, body limits, malformed JSON-RPC) in tests/integration/test_http_security.py. Here
each of 27-28 gets one hostile client, so that this suite alone covers every case.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.adversarial.conftest import Sandbox, adversarial_settings, sandboxes
from tests.support.servers import http_server, remove_installation

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def box(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> AsyncIterator[Sandbox]:
    async with sandboxes(tmp_path_factory, "faults", 1, call_timeout=3.0) as (sandbox,):
        yield sandbox


# --- 26. calls at once on one container ------------------------------------------------------------


async def test_two_bash_calls_at_once_are_serialised_never_interleaved(box: Sandbox) -> None:
    results: dict[str, dict] = {}

    async def run(tag: str) -> None:
        r = await box.bash(f"for k in 1 2 3 4 5; do echo {tag}$k; echo {tag}err$k >&2; sleep 0.1; done; echo {tag} >> /workspace/order")
        results[tag] = r.structured_content

    await box.sh("rm -f /workspace/order")
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for tag in ("A", "B", "C"):
            tg.start_soon(run, tag)
    took = time.monotonic() - started
    for tag, sc in results.items():
        assert sc["stdout"] == "".join(f"{tag}{k}\n" for k in range(1, 6)), sc
        assert sc["stderr"] == "".join(f"{tag}err{k}\n" for k in range(1, 6)), sc
    assert sorted((await box.sh("cat /workspace/order")).split()) == ["A", "B", "C"]
    assert took >= 1.4, "the calls ran side by side in one terminal"


async def test_calls_queued_behind_each_other_each_get_their_own_time_limit(box: Sandbox) -> None:
    """Twelve calls of `sleep 100` sent at once to one container (T = 3 s): serialised, each ends
    with execution_time_exceeded after its own T; none is failed because it waited in the queue
    longer than the host's backstop, and the container stays attached."""
    outcomes: list[str] = []

    async def one(i: int) -> None:
        r = await box.bash(f"echo {i} >> /workspace/queued; sleep 100")
        outcomes.append(r.structured_content.get("error_code", "result"))

    await box.sh("rm -f /workspace/queued")
    async with anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(one, i)
    assert outcomes == ["execution_time_exceeded"] * 12, outcomes
    assert sorted(map(int, (await box.sh("cat /workspace/queued")).split())) == list(range(12))
    await box.usable()


async def test_concurrent_edits_are_never_torn(box: Sandbox) -> None:
    # 20 str_replace calls on one file, each its own token, while bash appends to another file and
    # creates overwrite a third one with distinct contents.
    await box.edit(command="create", path="tokens.txt", file_text="".join(f"tok{i}\n" for i in range(20)))
    contents = [f"version {i}\n" * 2000 for i in range(10)]
    errors: list[dict] = []

    async def replace(i: int) -> None:
        r = await box.edit(command="str_replace", path="tokens.txt", old_str=f"tok{i}\n", new_str=f"TOK{i}\n")
        if r.structured_content["type"].endswith("_error"):
            errors.append(r.structured_content)

    async def create(i: int) -> None:
        r = await box.edit(command="create", path="whole.txt", file_text=contents[i])
        assert not r.structured_content["type"].endswith("_error"), r.structured_content

    async with anyio.create_task_group() as tg:
        tg.start_soon(box.bash, "for i in $(seq 2000); do echo line$i >> /workspace/log; done")
        for i in range(20):
            tg.start_soon(replace, i)
        for i in range(10):
            tg.start_soon(create, i)
    assert not errors, errors
    assert (await box.sh("cat tokens.txt")) == "".join(f"TOK{i}\n" for i in range(20))
    whole = await box.sh("cat whole.txt")
    assert whole in contents, "a create was torn or interleaved with another"
    assert (await box.sh("wc -l < log; find . -maxdepth 1 -name '.codeexec-tmp*' | wc -l")).split() == ["2000", "0"]


# --- 27. malformed and oversized client input --------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("bash_code_execution", {}),
        ("bash_code_execution", {"command": None}),
        ("bash_code_execution", {"command": 42}),
        ("bash_code_execution", {"command": ["ls"]}),
        ("bash_code_execution", {"command": "   "}),
        ("bash_code_execution", {"command": "x" * 2_000_000}),
        ("bash_code_execution", {"command": "echo", "restart": "yes please"}),
        ("bash_code_execution", {"command": "echo", "timeout": -1}),
        ("text_editor_code_execution", {}),
        ("text_editor_code_execution", {"command": "delete", "path": "x"}),
        ("text_editor_code_execution", {"command": "view"}),
        ("text_editor_code_execution", {"command": "create", "path": "x"}),
        ("text_editor_code_execution", {"command": "str_replace", "path": "x", "new_str": "y"}),
        ("text_editor_code_execution", {"command": "view", "path": "x", "view_range": "1-2"}),
        ("text_editor_code_execution", {"command": "view", "path": "x", "view_range": [1, 2, 3]}),
        ("text_editor_code_execution", {"command": "view", "path": {"$ne": 1}}),
    ],
)
async def test_bad_arguments_are_invalid_tool_input_and_the_server_keeps_serving(box: Sandbox, tool: str, arguments: dict) -> None:
    result = await box.client.call_tool(tool, arguments)
    sc = result.structured_content
    if "timeout" in arguments:  # an unknown extra field: refused or ignored, never honoured
        assert sc["type"] == "bash_code_execution_tool_result_error" and sc["error_code"] == "invalid_tool_input" or sc["return_code"] == 0
    else:
        assert result.is_error and sc["error_code"] == "invalid_tool_input", sc
    await box.usable()


async def test_an_unknown_tool_is_a_protocol_error(box: Sandbox) -> None:
    with pytest.raises(MCPError):
        result = await box.client.call_tool("rm_rf_everything", {"path": "/"})
        assert result.is_error  # some SDK versions answer with an error result instead of raising
        raise MCPError(code=-32602, message=result.content[0].text)
    await box.usable()


async def test_a_50_mb_request_is_answered_and_the_server_keeps_serving(box: Sandbox) -> None:
    result = await box.client.call_tool("text_editor_code_execution", {"command": "create", "path": "huge.txt", "file_text": "z" * 50_000_000})
    sc = result.structured_content
    assert sc["type"] == "text_editor_code_execution_create_result" or sc["error_code"] == "invalid_tool_input", sc
    await box.sh("rm -f huge.txt")
    await box.usable()


# --- 28. HTTP without credentials, with wrong ones, from a foreign Origin -----------------------------------


async def test_http_requests_without_a_valid_token_or_from_a_foreign_origin_are_rejected(tmp_path, docker_engine: None) -> None:
    settings = adversarial_settings(tmp_path)
    token = secrets.token_urlsafe(24)
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "evil", "version": "0"}}}
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    try:
        with http_server(settings, token=token) as url:
            async with httpx2.AsyncClient(timeout=20) as http:
                cases = {
                    "no token": headers,
                    "wrong token": {**headers, "Authorization": "Bearer " + secrets.token_urlsafe(24)},
                    "malformed": {**headers, "Authorization": "Basic " + token},
                    "foreign origin": {**headers, "Authorization": f"Bearer {token}", "Origin": "http://evil.example"},
                    "rebinding host": {**headers, "Authorization": f"Bearer {token}", "Host": "evil.example:8000"},
                }
                for name, h in cases.items():
                    response = await http.post(url + "/mcp", content=json.dumps(initialize), headers=h)
                    assert response.status_code in (400, 401, 403, 421), (name, response.status_code, response.text[:200])
                    assert "Traceback" not in response.text
                garbage = await http.post(url + "/mcp", content=b"{not json", headers={**headers, "Authorization": f"Bearer {token}"})
                assert 400 <= garbage.status_code < 500 or "error" in garbage.text
                ok = await http.post(url + "/mcp", content=json.dumps(initialize), headers={**headers, "Authorization": f"Bearer {token}"})
                assert ok.status_code == 200, ok.text[:300]
        # Nothing was started for the rejected requests.
        from mcp_codeexec.engines.docker import SandboxManager, connect

        manager = SandboxManager(settings, connect())
        assert [record for record, _ in manager.list() if record.install == manager.install] == []
    finally:
        remove_installation(settings)
