"""Property-based fuzzing of both tools against a real sandbox, through the real HTTP server.

Requests are raw JSON-RPC over HTTP so that everything a client can put on the wire reaches the
server: NULs, lone surrogates (``\\udXXX`` escapes: what invalid UTF-8 becomes after a careless
``surrogateescape`` decode), newlines, ``..``, very long names, huge strings, wrong types. Every
answer must be a schema-valid hosted result or hosted error, and a follow-up ``echo ok`` in the same
container must work. Round trips (echo, create then view) must be exact where the input is valid
Unicode. The fast, Docker-free variant is tests/unit/test_fuzz.py."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mcp_codeexec.config import Settings
from tests.support.fuzz import (
    BASH,
    EDITOR,
    content_text,
    editor_arguments,
    hostile_text,
    is_valid_input,
    path_text,
    surrogateescaped,
    well_shaped_editor,
)
from tests.support.http_probe import META, modern_headers, rpc_payload, spawn
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import new_token

# CI replays a fixed sequence (a landing never hinges on a lucky draw); local runs explore anew.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")  # huge strings are the point
EXAMPLES = int(os.environ.get("FUZZ_DOCKER_EXAMPLES", "100"))
VIEW_LIMIT = Settings.model_fields["max_view_bytes"].default
RESULT_BUDGET = Settings.model_fields["max_result_chars"].default


def _fits_the_result_budget(content: str) -> bool:
    """Whether a view of ``content`` keeps its JSON (escapes included) within the result budget,
    with room for the block's other fields; a view over it shows the lines that fit."""
    return len(json.dumps(content, ensure_ascii=False).encode("utf-16-le", "surrogatepass")) // 2 + 200 <= RESULT_BUDGET
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True, derandomize=IN_CI,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                       HealthCheck.function_scoped_fixture])


def _has_surrogates(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


class Session:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.http = httpx2.Client(timeout=httpx2.Timeout(180))
        self.container: str | None = None

    def call(self, tool: str, arguments: Any) -> dict[str, Any]:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                           "params": {"name": tool, "arguments": arguments, "_meta": META}}, ensure_ascii=True)
        r = self.http.post(self.url + "/mcp", content=body, headers=modern_headers(self.token, "tools/call", tool))
        assert r.status_code < 500, (r.status_code, r.text[:1000])
        assert r.status_code != 413, "the fuzzer's requests are meant to stay under the request limit"
        r.content.decode("utf-8")  # the answer is UTF-8
        payload = rpc_payload(r)
        assert "result" in payload, payload
        result = payload["result"]
        json.dumps(result, ensure_ascii=False).encode("utf-8")  # and valid Unicode: no lone surrogates
        assert_hosted_shape(result["structuredContent"], tool)
        assert result["isError"] == result["structuredContent"]["type"].endswith("_tool_result_error")
        if not is_valid_input(tool, arguments):
            assert result["structuredContent"]["error_code"] == "invalid_tool_input", (tool, arguments, result)
        cid = result.get("_meta", {}).get("container", {}).get("id")
        if cid is not None:
            if self.container is None:
                self.container = cid
            assert cid == self.container, "a fuzzed call ended up in another container"
        return result

    def assert_usable(self) -> None:
        result = self.call(BASH, {"command": "echo ok"})
        assert result["structuredContent"]["stdout"] == "ok\n", result
        assert result["structuredContent"]["return_code"] == 0


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    token = new_token()
    # stderr goes to a file (a pipe nobody reads could fill up and stall the server). Hundreds of
    # calls back to back are the point here: call pacing (tested in the unit suite) is off.
    with spawn(settings, env={"MCP_CODEEXEC_AUTH_TOKENS": token, "MCP_CODEEXEC_HTTP_CALLS_PER_MINUTE": "0"}) as server:
        s = Session(server.url, token)
        s.assert_usable()  # the container exists before the fuzzing starts
        yield s
        s.http.close()


# ----------------------------------------------------------------------------- strategies

quoted_args = st.one_of(hostile_text, surrogateescaped, path_text)
bash_commands = st.one_of(
    st.tuples(st.sampled_from(["printf '%s'", "echo", "cat --", "touch --", "mkdir -p --", "ls -d --", "rm -rf --"]),
              quoted_args).map(lambda t: f"{t[0]} {shlex.quote(t[1])}" if t[1] else t[0]),
    hostile_text.filter(lambda s: not any(c.isalpha() for c in s)),  # raw junk, but never a command name
    st.sampled_from(["", " ", "\x00", "\x00echo hi", "echo a\x00b", "\udcff", "cd ..; cd ..; pwd", "cd /nonexistent",
                     "printf '\\377\\376'", "exit 255", "kill -9 $$", "cd \"$(printf 'a\\nb')\" 2>/dev/null; pwd"]),
)
names = st.text(st.characters(codec="utf-8", exclude_characters="\x00/"), min_size=1, max_size=60).filter(lambda n: n not in (".", ".."))
clean_text = st.one_of(st.text(st.characters(codec="utf-8"), max_size=300), st.sampled_from(["", "\n", "a\x00b", "\r\n" * 50, "x" * 5000]))
plain_paths = st.lists(st.one_of(names, st.sampled_from(["..", ".", "a" * 300, "-rf", " ", "\n"])), min_size=1, max_size=4).map("/".join)
docker_calls = st.one_of(
    st.tuples(st.just(EDITOR), well_shaped_editor(st.none())),
    st.tuples(st.just(EDITOR), st.fixed_dictionaries({
        "command": st.sampled_from(["view", "create", "str_replace"]), "path": st.one_of(plain_paths, plain_paths.map("/workspace/".__add__)),
        "file_text": clean_text, "old_str": clean_text, "new_str": clean_text})),
    st.tuples(st.just(EDITOR), st.fixed_dictionaries({"command": st.just("view"), "path": plain_paths},
                                                    optional={"view_range": st.lists(st.integers(-3, 10**6), min_size=2, max_size=2)})),
    st.tuples(st.just(BASH), st.fixed_dictionaries({"command": bash_commands}, optional={"restart": st.booleans()})),
    st.tuples(st.just(EDITOR), editor_arguments(st.none())),
)


# ----------------------------------------------------------------------------- properties


@FUZZ
@given(call=docker_calls)
def test_any_call_gets_a_hosted_answer_and_the_container_stays_usable(session: Session, call: tuple[str, dict[str, Any]]) -> None:
    tool, arguments = call
    result = session.call(tool, arguments)
    sc = result["structuredContent"]
    event(f"{tool}: {sc['type'].rsplit('_', 1)[-1]} {sc.get('error_code', '')}".strip())
    session.assert_usable()


printable = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=2000)


@FUZZ
@given(text=printable)
def test_echo_round_trips_exactly(session: Session, text: str) -> None:
    result = session.call(BASH, {"command": f"printf '%s' {shlex.quote(text)}"})
    assert result["structuredContent"]["stdout"] == text
    assert result["structuredContent"]["return_code"] == 0


@FUZZ
@given(parts=st.lists(names, min_size=1, max_size=3), text=content_text)
def test_create_then_view_round_trips(session: Session, parts: list[str], text: str) -> None:
    path = "fuzz/" + "/".join(parts)
    created = session.call(EDITOR, {"command": "create", "path": path, "file_text": text})
    text = json.loads(json.dumps(text))  # what the server got: JSON joins an escaped surrogate pair into one character
    sc = created["structuredContent"]
    if sc["type"].endswith("_error"):
        # allowed only for reasons the input explains: a too-long name, or a name used as a directory before
        event(f"create refused: {sc['error_code']}")
        assert sc["error_code"] in ("invalid_tool_input", "file_not_found", "unavailable"), sc
        assert sc.get("error_message")
        long_name = any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts)
        assert long_name or sc["error_code"] != "unavailable", sc
        session.assert_usable()
        return
    viewed = session.call(EDITOR, {"command": "view", "path": path})["structuredContent"]
    assert viewed["type"] == "text_editor_code_execution_view_result", viewed
    if viewed["file_type"] == "text" and len(text.encode("utf-8", "surrogateescape")) < 1_000_000:
        if _has_surrogates(text):  # invalid UTF-8 bytes are stored byte-exactly and shown as U+FFFD
            event("create+view: surrogate-escaped text")
            expected = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        else:
            expected = text
        if len(text.encode("utf-8", "surrogateescape")) <= VIEW_LIMIT and _fits_the_result_budget(expected):
            assert viewed["content"] == expected
        else:  # larger files show the lines (or the start of the one line) that fit
            event("create+view: larger than the view limit")
            assert expected.startswith(viewed["content"]) and len(viewed["content"].encode()) <= VIEW_LIMIT
        assert viewed["total_lines"] == len(expected.splitlines())
    if not _has_surrogates(text) and text and len(text) < 200_000 and _fits_the_result_budget(text):
        needle = text[: max(1, len(text) // 3)]
        if text.count(needle) == 1:
            replaced = session.call(EDITOR, {"command": "str_replace", "path": path, "old_str": needle, "new_str": "\x00NEW\n"})
            if replaced["structuredContent"]["type"].endswith("_str_replace_result"):
                again = session.call(EDITOR, {"command": "view", "path": path})["structuredContent"]
                if again["file_type"] == "text":
                    assert again["content"] == text.replace(needle, "\x00NEW\n", 1)
    session.assert_usable()
