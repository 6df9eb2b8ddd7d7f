"""The stdio transport answers plain hosted-tool calls itself (direct_calls.py): the replies are the
SDK's own, in both protocol eras, through raw JSON-RPC lines and real MCP clients; anything
unusual still goes through the SDK; cancellation and end of input keep JSON-RPC's rules. A real
server process over pipes, with the backend that runs nothing (no Docker)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.support.call_cases import BASH, PLAIN, SDK_ONLY
from tests.support.isolation import isolate_settings
from tests.support.oracle import assert_client_round_trips, assert_hosted_shape

SERVER = str(Path(__file__).resolve().parents[1] / "support" / "dummy_stdio_server.py")
MODERN = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
          "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
          "io.modelcontextprotocol/clientCapabilities": {}}


class Lines:
    """A server process spoken to in raw JSON-RPC lines."""

    def __init__(self, direct: bool) -> None:
        env = dict(os.environ, MCP_CODEEXEC_DIRECT_CALLS="true" if direct else "false", DUMMY_DEBUG="1")
        self.proc = subprocess.Popen([sys.executable, SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        self._buf = b""

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def send_raw(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read(self, timeout: float = 10.0) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def rpc(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(message)
        reply = self.read()
        assert reply is not None, f"no reply to {message}"
        return reply

    def close(self) -> str:
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=20)
        return self.proc.stderr.read().decode()


def legacy(lines: Lines, version: str = "2025-06-18") -> None:
    lines.rpc({"jsonrpc": "2.0", "id": 0, "method": "initialize",
               "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    lines.send({"jsonrpc": "2.0", "method": "notifications/initialized"})


def call(rid: Any, name: str, arguments: Any, meta: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments, **extra}
    if meta is not None:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


def normalized(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply with the dummy container's per-process expiry blanked."""
    text = json.dumps(reply, sort_keys=True)
    reply = json.loads(text)
    container = ((reply.get("result") or {}).get("_meta") or {}).get("container")
    if container:
        container["expires_at"] = "-"
    return reply


def answered_directly(stderr: str) -> int:
    for line in stderr.splitlines():
        if "answered past the SDK" in line:
            return int(line.split("direct calls: ")[1].split()[0])
    return 0


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_settings(tmp_path, monkeypatch)


@pytest.fixture
def servers() -> Iterator[list[Lines]]:
    made: list[Lines] = []
    yield made
    for lines in made:
        if lines.proc.poll() is None:
            lines.proc.kill()
            lines.proc.wait()


CALLS = PLAIN + SDK_ONLY


@pytest.mark.parametrize("era", ["2025-06-18", "2025-03-26", "2026-07-28"])
def test_replies_are_the_sdks_own_in_each_era(servers: list[Lines], era: str) -> None:
    replies: dict[bool, list[Any]] = {}
    counts: dict[bool, int] = {}
    for direct in (False, True):
        lines = Lines(direct)
        servers.append(lines)
        modern = era == "2026-07-28"
        if modern:  # the opening request decides the era (a real client discovers first)
            lines.rpc({"jsonrpc": "2.0", "id": 0, "method": "tools/list", "params": {"_meta": MODERN}})
        else:
            legacy(lines, era)
        got = []
        for i, (name, arguments, meta) in enumerate(CALLS, start=1):
            if modern:
                meta = {**MODERN, **(meta or {})}
            lines.send(call(i, name, arguments, meta))
            messages = [lines.read()]
            while messages[-1] is not None and "id" not in messages[-1]:  # progress before the reply
                messages.append(lines.read())
            got.append([normalized(m) if m else m for m in messages])
        replies[direct] = got
        counts[direct] = answered_directly(lines.close())
    assert replies[True] == replies[False]
    assert counts[False] == 0
    # Every hosted-tool call of the list but those the SDK must answer went the direct way.
    assert counts[True] == len(PLAIN)
    for messages in replies[True]:
        structured = (messages[-1].get("result") or {}).get("structuredContent")
        if structured:
            assert_hosted_shape(structured)


def test_a_lone_surrogate_in_a_command_is_answered(servers: list[Lines]) -> None:
    """The SDK's pipeline leaves such a line unanswered (its JSON parser refuses it); here it gets
    the hosted result, the surrogate shown as U+FFFD like any other invalid text."""
    lines = Lines(True)
    servers.append(lines)
    legacy(lines)
    reply = lines.rpc(call(1, BASH, {"command": "a \ud800"}))
    assert assert_hosted_shape(reply["result"]["structuredContent"]).stdout == "a \ufffd"
    lines.close()


def test_deeply_nested_lines_get_the_sdks_answer_and_the_server_goes_on(servers: list[Lines]) -> None:
    """json.loads gives up on deep nesting with RecursionError, not ValueError: such a line is the
    SDK's (before the handshake, when the era is being learnt, and after it)."""
    nested = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + "[" * 100_000 + "]" * 100_000 + "}"
    replies: dict[bool, list[Any]] = {}
    for direct in (False, True):
        lines = Lines(direct)
        servers.append(lines)
        lines.send_raw(nested)
        first = lines.read(timeout=3)
        legacy(lines)
        lines.send_raw(nested.replace('"id":1', '"id":2'))
        second = lines.read(timeout=3)
        after = lines.rpc(call(3, BASH, {"command": "echo on"}))
        replies[direct] = [first, second, normalized(after)]
        assert lines.close() is not None and lines.proc.returncode == 0
    assert replies[True] == replies[False]
    assert replies[True][2]["result"]["structuredContent"]["stdout"] == "echo on"


def test_calls_before_the_handshake_and_enveloped_calls_on_a_legacy_connection_go_to_the_sdk(servers: list[Lines]) -> None:
    lines = Lines(True)
    servers.append(lines)
    early = lines.rpc(call(1, BASH, {"command": "true"}))
    assert "error" in early
    legacy(lines)
    mixed = lines.rpc(call(2, BASH, {"command": "true"}, MODERN))
    plain = lines.rpc(call(3, BASH, {"command": "true"}))
    assert plain["result"]["structuredContent"]["return_code"] == 0
    assert mixed["error"]["code"] == -32600  # the SDK's refusal of an envelope on a legacy connection
    assert answered_directly(lines.close()) == 1


def test_a_cancelled_call_is_not_answered_and_the_next_one_is(servers: list[Lines]) -> None:
    lines = Lines(True)
    servers.append(lines)
    legacy(lines)
    lines.send(call(7, BASH, {"command": "sleep 30"}))
    time.sleep(0.3)
    lines.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7, "reason": "user"}})
    after = lines.rpc(call(8, BASH, {"command": "echo after"}))
    assert after["id"] == 8 and after["result"]["structuredContent"]["stdout"] == "echo after"
    assert lines.read(timeout=0.5) is None  # nothing ever comes for id 7
    stderr = lines.close()
    assert "cancelled: sleep 30" in stderr


def test_a_cancel_naming_no_plain_id_leaves_the_call_running_and_the_server_up(servers: list[Lines]) -> None:
    lines = Lines(True)
    servers.append(lines)
    legacy(lines)
    lines.send(call(7, BASH, {"command": "sleep 30"}))
    time.sleep(0.3)
    for odd in ([7], {"a": 7}, 7.5, None, True):
        lines.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": odd}})
    after = lines.rpc(call(8, BASH, {"command": "echo up"}))
    assert after["result"]["structuredContent"]["stdout"] == "echo up"
    lines.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}})
    assert lines.read(timeout=0.5) is None
    assert "cancelled: sleep 30" in lines.close()


def test_end_of_input_answers_a_call_in_flight_connection_closed_and_the_server_exits(servers: list[Lines]) -> None:
    lines = Lines(True)
    servers.append(lines)
    legacy(lines)
    lines.send(call(5, BASH, {"command": "sleep 30"}))
    time.sleep(0.3)
    assert lines.proc.stdin is not None
    lines.proc.stdin.close()
    reply = lines.read(timeout=10)
    assert reply == {"jsonrpc": "2.0", "id": 5, "error": {"code": -32000, "message": "Connection closed"}}
    assert lines.proc.wait(timeout=10) == 0
    assert lines.proc.stderr is not None
    assert "cancelled: sleep 30" in lines.proc.stderr.read().decode()


def test_concurrent_calls_are_answered_each_once(servers: list[Lines]) -> None:
    lines = Lines(True)
    servers.append(lines)
    legacy(lines)
    lines.send(call("slow", BASH, {"command": "sleep 0.5"}))
    for i in range(50):
        lines.send(call(i, BASH, {"command": f"echo {i}"}))
    seen = [lines.read() for _ in range(51)]
    ids = [m["id"] for m in seen if m]
    assert sorted(map(str, ids)) == sorted(map(str, [*range(50), "slow"]))
    assert ids[-1] == "slow"  # a slow call does not hold the others up
    assert answered_directly(lines.close()) == 51


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_real_mcp_client_gets_hosted_results(mode: str) -> None:
    params = StdioServerParameters(command=sys.executable, args=[SERVER],
                                   env=dict(os.environ, MCP_CODEEXEC_DIRECT_CALLS="true"))
    async with Client(stdio_client(params), mode=mode) as client:  # type: ignore[arg-type]
        await assert_client_round_trips(client, 5)
