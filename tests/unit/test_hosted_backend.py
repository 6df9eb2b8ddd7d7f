"""The hosted backend against a fake Messages/Files API on loopback, through the real anthropic SDK."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from anthropic.types import beta

from mcp_codeexec.backends.base import CallContext
from mcp_codeexec.backends.hosted import FILES_BETA, HostedBackend, beta_for, map_api_error
from mcp_codeexec.config import load_settings
from mcp_codeexec.errors import (
    ContainerExpired,
    FileNotFound,
    InvalidToolInput,
    TooManyRequests,
    Unavailable,
    error_block,
)
from mcp_codeexec.files import FileStore
from mcp_codeexec.schemas import BashInput, CodeInput, EditorInput
from tests.fakes import fake_anthropic as fa
from tests.support.oracle import assert_hosted_shape

pytestmark = pytest.mark.anyio

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "hosted_examples.json"
BASH = "bash_code_execution"
EDITOR = "text_editor_code_execution"
CODE = "code_execution"
OTHER_CONTAINER = "container_011CTsecondContainerBBBBBBB"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def api():
    with fa.FakeAnthropic() as server:
        yield server


@pytest.fixture
def store(tmp_path: Path):
    with FileStore(tmp_path / "files") as s:
        yield s


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_settings(tmp_path: Path, api: fa.FakeAnthropic, **overrides: Any):
    values: dict[str, Any] = {
        "data_dir": str(tmp_path),
        "ANTHROPIC_API_KEY": "sk-ant-test-key",
        "anthropic_base_url": api.base_url,
        "hosted_max_retries": 2,
        "progress_interval": 0,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
async def backend(tmp_path: Path, api: fa.FakeAnthropic, store: FileStore, sleeps: list[float]):
    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async with HostedBackend(make_settings(tmp_path, api), store, backoff_base=0.5, sleep=record_sleep) as b:
        yield b


def ctx(session: str = "s1", principal: str = "local", progress: Any = None) -> CallContext:
    return CallContext(principal=principal, session_key=session, progress=progress)


def sdk_check(tool: str, block: Any) -> dict[str, Any]:
    """The block validates into the SDK classes, both alone and inside the hosted tool-result block."""
    dumped = block.model_dump()
    assert_hosted_shape(dumped, tool)
    wrapper = {
        BASH: beta.BetaBashCodeExecutionToolResultBlock, CODE: beta.BetaCodeExecutionToolResultBlock,
    }.get(tool, beta.BetaTextEditorCodeExecutionToolResultBlock)
    wrapper.model_validate({"type": f"{tool}_tool_result", "tool_use_id": "srvtoolu_x", "content": dumped})
    return dumped


# --- results ----------------------------------------------------------------------------------


async def test_a_bash_call_returns_the_hosted_result_content_unchanged(api, backend):
    hosted = fa.bash_result(stdout="hi\n", stderr="warn\n", return_code=3)
    api.push(fa.bash_turn({"command": "echo hi"}, hosted))

    outcome = await backend.bash(BashInput(command="echo hi"), ctx())

    assert sdk_check(BASH, outcome.block) == hosted
    assert outcome.container is not None and outcome.container.id == fa.DEFAULT_CONTAINER
    assert outcome.container.meta() == {"id": fa.DEFAULT_CONTAINER, "expires_at": "2099-01-01T00:00:00Z"}
    assert outcome.files == []


async def test_the_request_names_the_tool_version_beta_forced_choice_and_the_exact_input(api, backend):
    command = "printf 'a\\tb' | python3 -c \"import sys; print(repr(sys.stdin.read()))\" # ünïcode"
    api.push(fa.bash_turn({"command": command}, fa.bash_result(stdout="'a\\tb'\n")))

    await backend.bash(BashInput(command=command), ctx())

    (request,) = api.requests_to("messages")
    body = request.json
    assert request.betas == ["code-execution-2025-08-25"]
    assert "sk-ant-test-key" in (request.headers.get("x-api-key"), request.headers.get("authorization", "")[7:])
    assert body["tools"] == [{"type": "code_execution_20250825", "name": "code_execution"}]
    assert body["tool_choice"] == {"type": "any"}
    assert body["model"] == "claude-sonnet-4-5" and body["max_tokens"] == 4096
    assert "container" not in body  # the first call of a session gets a fresh container
    (message,) = body["messages"]
    text = message["content"][-1]["text"]
    assert BASH in text
    assert json.loads(text.split("<input>\n", 1)[1].split("\n</input>", 1)[0]) == {"command": command}
    assert "exactly" in body["system"]


async def test_the_tool_version_setting_chooses_the_tool_type_and_beta_header(tmp_path, api, store):
    settings = make_settings(tmp_path, api, hosted_tool_version="code_execution_20260120", hosted_model="claude-x")
    api.push(fa.bash_turn({"command": "true"}, fa.bash_result()))
    async with HostedBackend(settings, store) as b:
        await b.bash(BashInput(command="true"), ctx())
    (request,) = api.requests_to("messages")
    assert request.json["tools"][0]["type"] == "code_execution_20260120"
    assert request.json["model"] == "claude-x"
    assert request.betas == ["code-execution-2026-01-20"] == [beta_for("code_execution_20260120")]


async def test_a_repl_cell_requests_code_execution_20260120_and_maps_its_result(api, backend, store):
    fid = api.add_file(b"\x89PNG\r\n\x1a\nfake", "plot.png", "image/png")
    hosted = fa.code_result(stdout="42\n", file_ids=[fid])
    api.push(fa.code_turn({"code": "x = 42\nprint(x)"}, hosted))

    outcome = await backend.code(CodeInput(code="x = 42\nprint(x)"), ctx())

    assert sdk_check(CODE, outcome.block) == hosted  # output files keep their hosted ids
    (request,) = api.requests_to("messages")
    assert request.json["tools"] == [{"type": "code_execution_20260120", "name": "code_execution"}]
    assert request.betas == []  # 20260120 is GA: no beta header of its own
    name, sent = fa.requested_call(request)
    assert (name, sent) == (CODE, {"code": "x = 42\nprint(x)"})
    assert outcome.files[0].filename == "plot.png"


async def test_the_code_tool_version_setting_and_a_hosted_repl_error_block(tmp_path, api, store):
    settings = make_settings(tmp_path, api, hosted_code_tool_version="code_execution_20260521")
    api.push(fa.code_turn({"code": "while True: pass"}, fa.code_error("execution_time_exceeded")))
    async with HostedBackend(settings, store) as b:
        outcome = await b.code(CodeInput(code="while True: pass"), ctx())
    assert sdk_check(CODE, outcome.block) == {"type": "code_execution_tool_result_error",
                                              "error_code": "execution_time_exceeded"}
    assert api.requests_to("messages")[0].json["tools"][0]["type"] == "code_execution_20260521"


async def test_restart_is_refused_by_the_hosted_backend(api, backend):
    # (Tools called from code are passed through: tests/unit/test_hosted_ptc.py.)
    with pytest.raises(InvalidToolInput, match="restart"):
        await backend.code(CodeInput(code="1", restart=True), ctx())
    assert api.requests_to("messages") == []


@pytest.mark.parametrize(
    "case",
    [c for c in json.loads(GOLDEN.read_text())["cases"] if c["tool"] == EDITOR and "expected" in c],
    ids=lambda c: c["name"],
)
async def test_editor_results_from_the_hosted_examples_come_back_schema_identical(api, backend, case):
    api.push(fa.editor_turn(case["input"], case["expected"]))

    outcome = await backend.editor(EditorInput(**case["input"]), ctx())

    assert sdk_check(EDITOR, outcome.block) == case["expected"]


async def test_a_hosted_tool_error_block_is_returned_as_the_result_with_its_message(api, backend):
    hosted = fa.editor_error("file_not_found", "File not found: does/not/exist.txt")
    api.push(fa.editor_turn({"command": "view", "path": "does/not/exist.txt"}, hosted))

    outcome = await backend.editor(EditorInput(command="view", path="does/not/exist.txt"), ctx())

    assert sdk_check(EDITOR, outcome.block) == hosted


async def test_a_view_range_is_forwarded_as_part_of_the_hosted_input(api, backend):
    requested = {"command": "view", "path": "a.py", "view_range": [2, 3]}
    api.push(fa.editor_turn(requested, fa.view_result("b\nc\n", start_line=2)))

    outcome = await backend.editor(EditorInput(**requested), ctx())

    assert outcome.block.start_line == 2
    assert '"view_range": [2, 3]' in api.message_requests[0]["messages"][0]["content"][-1]["text"]


async def test_a_field_the_sdk_lacks_is_dropped_and_named_in_meta(api, backend):
    hosted = {**fa.bash_result(stdout="x"), "execution_ms": 12}
    api.push(fa.bash_turn({"command": "echo x"}, hosted))

    outcome = await backend.bash(BashInput(command="echo x"), ctx())

    assert "execution_ms" not in sdk_check(BASH, outcome.block)
    assert outcome.meta["hosted"]["dropped_fields"] == ["execution_ms"]


async def test_the_docs_prose_form_of_an_editor_result_is_read_as_the_typed_block(api, backend):
    prose = {
        "type": "text_editor_code_execution_result",
        "oldStart": 3,
        "oldLines": 1,
        "newStart": 3,
        "newLines": 1,
        "lines": ["-a", "+b"],
    }
    api.push(fa.editor_turn({"command": "str_replace", "path": "f", "old_str": "a", "new_str": "b"}, prose))

    outcome = await backend.editor(EditorInput(command="str_replace", path="f", old_str="a", new_str="b"), ctx())

    assert sdk_check(EDITOR, outcome.block) == fa.str_replace_result(3, 1, 3, 1, ["-a", "+b"])


async def test_string_not_found_outside_the_sdk_literals_becomes_invalid_tool_input(api, backend):
    requested = {"command": "str_replace", "path": "f", "old_str": "zzz", "new_str": "y"}
    api.push(fa.editor_turn(requested, fa.editor_error("string_not_found", "old_str not found in f")))

    outcome = await backend.editor(EditorInput(**requested), ctx())

    assert sdk_check(EDITOR, outcome.block)["error_code"] == "invalid_tool_input"
    assert outcome.block.error_message == "old_str not found in f"
    assert outcome.meta["hosted"]["original_error_code"] == "string_not_found"


async def test_usage_and_hosted_timing_are_reported_in_meta(api, backend):
    api.push(fa.bash_turn({"command": "true"}, fa.bash_result(), usage_=fa.usage(2100, 75)))

    outcome = await backend.bash(BashInput(command="true"), ctx())

    usage, hosted = outcome.meta["usage"], outcome.meta["hosted"]
    assert usage["input_tokens"] == 2100 and usage["output_tokens"] == 75
    assert usage["server_tool_use"] == {"web_search_requests": 0, "web_fetch_requests": 0}
    assert hosted["model"] == fa.DEFAULT_MODEL
    assert hosted["request_id"].startswith("req_") and hosted["requests"] == 1
    assert isinstance(hosted["duration_ms"], int) and hosted["duration_ms"] >= 0
    json.dumps(outcome.meta)  # it travels as _meta


# --- containers --------------------------------------------------------------------------------


async def test_the_second_call_of_a_session_reuses_its_hosted_container(api, backend):
    api.push(
        fa.bash_turn({"command": "touch a"}, fa.bash_result()),
        fa.bash_turn({"command": "ls"}, fa.bash_result(stdout="a\n")),
    )

    await backend.bash(BashInput(command="touch a"), ctx("s1"))
    await backend.bash(BashInput(command="ls"), ctx("s1"))

    first, second = api.message_requests
    assert "container" not in first
    assert second["container"] == fa.DEFAULT_CONTAINER


async def test_sessions_do_not_share_containers(api, backend):
    api.push(
        fa.bash_turn({"command": "true"}, fa.bash_result()),
        fa.bash_turn({"command": "true"}, fa.bash_result(), container_id=OTHER_CONTAINER),
    )

    await backend.bash(BashInput(command="true"), ctx("s1"))
    outcome = await backend.bash(BashInput(command="true"), ctx("s2"))

    assert [("container" in r) for r in api.message_requests] == [False, False]
    assert outcome.container.id == OTHER_CONTAINER
    assert backend.session_container("s1") == fa.DEFAULT_CONTAINER
    assert backend.session_container("s2") == OTHER_CONTAINER


async def test_an_explicit_container_id_overrides_the_session_container(api, backend):
    api.push(
        fa.bash_turn({"command": "true"}, fa.bash_result()),
        fa.bash_turn({"command": "ls"}, fa.bash_result(), container_id=OTHER_CONTAINER),
    )

    await backend.bash(BashInput(command="true"), ctx("s1"))
    outcome = await backend.bash(BashInput(command="ls", container_id=OTHER_CONTAINER), ctx("s1"))

    assert api.message_requests[1]["container"] == OTHER_CONTAINER
    assert outcome.container.id == OTHER_CONTAINER
    assert backend.session_container("s1") == fa.DEFAULT_CONTAINER


async def test_another_principal_cannot_name_a_container_it_does_not_own(api, backend):
    api.push(fa.bash_turn({"command": "true"}, fa.bash_result()))
    await backend.bash(BashInput(command="true"), ctx("s1", principal="alice"))

    with pytest.raises(ContainerExpired) as info:
        await backend.bash(BashInput(command="true", container_id=fa.DEFAULT_CONTAINER), ctx("s2", principal="bob"))

    assert "container_expired" in str(info.value)
    assert len(api.message_requests) == 1


async def test_an_expired_container_becomes_container_expired_and_the_session_starts_afresh(api, backend):
    api.push(
        fa.bash_turn({"command": "true"}, fa.bash_result()),
        fa.container_expired(fa.DEFAULT_CONTAINER),
        fa.bash_turn({"command": "true"}, fa.bash_result(), container_id=OTHER_CONTAINER),
    )
    await backend.bash(BashInput(command="true"), ctx())

    with pytest.raises(ContainerExpired) as info:
        await backend.bash(BashInput(command="true"), ctx())
    outcome = await backend.bash(BashInput(command="true"), ctx())

    assert "container_expired" in info.value.message and fa.DEFAULT_CONTAINER in info.value.message
    assert error_block(BASH, info.value).error_code == "unavailable"
    assert error_block(EDITOR, info.value).error_message.startswith("container_expired")
    assert len(api.message_requests) == 3  # a 400 is not retried
    assert "container" not in api.message_requests[2]
    assert outcome.container.id == OTHER_CONTAINER


async def test_a_container_expired_tool_result_becomes_container_expired(api, backend):
    api.push(
        fa.bash_turn(
            {"command": "true"}, {"type": "bash_code_execution_tool_result_error", "error_code": "container_expired"}
        )
    )

    with pytest.raises(ContainerExpired) as info:
        await backend.bash(BashInput(command="true"), ctx())

    assert "container_expired" in info.value.message
    assert backend.session_container("s1") is None


# --- the model must make exactly the requested call ---------------------------------------------


async def test_a_mismatched_server_tool_use_input_is_an_error_never_a_substitution(api, backend):
    api.push(fa.bash_turn({"command": "rm -rf /tmp/x"}, fa.bash_result(stdout="OUTPUT-OF-THE-OTHER-COMMAND")))

    with pytest.raises(Unavailable) as info:
        await backend.bash(BashInput(command="rm -rf /tmp/x "), ctx())

    assert info.value.message.startswith("hosted model sent a different input")
    assert "OUTPUT-OF-THE-OTHER-COMMAND" not in info.value.message
    assert info.value.container.id == fa.DEFAULT_CONTAINER  # reported, and kept for the session
    assert backend.session_container("s1") == fa.DEFAULT_CONTAINER


async def test_the_model_using_the_other_sub_tool_is_a_mismatch(api, backend):
    api.push(fa.bash_turn({"command": "cat config.json"}, fa.bash_result(stdout="{}")))

    with pytest.raises(Unavailable, match="different input"):
        await backend.editor(EditorInput(command="view", path="config.json"), ctx())


async def test_a_model_that_answers_without_calling_the_tool_is_unavailable(api, backend):
    api.push(fa.message([fa.text("I can't do that.")]))

    with pytest.raises(Unavailable, match="did not call bash_code_execution") as info:
        await backend.bash(BashInput(command="true"), ctx())

    assert "I can't do that." in info.value.message


async def test_tool_calls_after_the_matched_one_are_counted_in_meta(api, backend):
    use = fa.server_tool_use(BASH, {"command": "true"})
    extra = fa.server_tool_use(BASH, {"command": "ls"})
    api.push(
        fa.message(
            [
                use,
                fa.tool_result(BASH, use["id"], fa.bash_result(stdout="ok")),
                extra,
                fa.tool_result(BASH, extra["id"], fa.bash_result(stdout="a")),
            ]
        )
    )

    outcome = await backend.bash(BashInput(command="true"), ctx())

    assert outcome.block.stdout == "ok"
    assert outcome.meta["hosted"]["extra_tool_calls"] == 1


# --- pause_turn -------------------------------------------------------------------------------


async def test_pause_turn_is_continued_by_sending_the_assistant_content_back(api, backend):
    paused, use_id = fa.paused_turn(BASH, {"command": "sleep 100"}, usage_=fa.usage(1000, 20))
    api.push(paused, fa.resumed_turn(BASH, use_id, fa.bash_result(stdout="slept"), usage_=fa.usage(1200, 10)))

    outcome = await backend.bash(BashInput(command="sleep 100"), ctx())

    assert sdk_check(BASH, outcome.block)["stdout"] == "slept"
    first, second = api.message_requests
    assert second["messages"][0] == first["messages"][0]
    assert second["messages"][1] == {"role": "assistant", "content": paused["content"]}
    assert second["container"] == fa.DEFAULT_CONTAINER
    assert outcome.meta["usage"]["input_tokens"] == 2200 and outcome.meta["usage"]["output_tokens"] == 30
    assert outcome.meta["hosted"]["requests"] == 2 and len(outcome.meta["hosted"]["request_ids"]) == 2


async def test_a_second_pause_appends_to_the_same_assistant_turn(api, backend):
    paused, use_id = fa.paused_turn(BASH, {"command": "make"})
    again = fa.message([fa.text("still running")], stop_reason="pause_turn")
    api.push(paused, again, fa.resumed_turn(BASH, use_id, fa.bash_result(stdout="built")))

    outcome = await backend.bash(BashInput(command="make"), ctx())

    assert outcome.block.stdout == "built"
    assert api.message_requests[2]["messages"][1]["content"] == paused["content"] + again["content"]


async def test_a_turn_still_paused_after_the_continuation_limit_is_unavailable(tmp_path, api, store):
    paused, _ = fa.paused_turn(BASH, {"command": "x"})
    api.push(paused, *[fa.message([fa.text("...")], stop_reason="pause_turn") for _ in range(3)])
    async with HostedBackend(make_settings(tmp_path, api), store, max_continuations=2) as b:
        with pytest.raises(Unavailable, match="still paused after 2 continuations"):
            await b.bash(BashInput(command="x"), ctx())
    assert len(api.message_requests) == 3


# --- retries and error mapping -----------------------------------------------------------------


async def test_a_rate_limit_is_retried_after_the_retry_after_delay(api, backend, sleeps):
    api.push(fa.rate_limited(retry_after=7), fa.bash_turn({"command": "true"}, fa.bash_result()))

    outcome = await backend.bash(BashInput(command="true"), ctx())

    assert outcome.block.return_code == 0
    assert sleeps == [7.0]
    assert len(api.message_requests) == 2


async def test_a_rate_limit_that_persists_becomes_too_many_requests(api, backend, sleeps):
    api.push(*[fa.rate_limited(retry_after=None) for _ in range(3)])

    with pytest.raises(TooManyRequests) as info:
        await backend.bash(BashInput(command="true"), ctx())

    assert len(api.message_requests) == 3  # hosted_max_retries=2
    assert len(sleeps) == 2 and 0 < sleeps[0] < sleeps[1]  # exponential backoff
    assert error_block(BASH, info.value).error_code == "too_many_requests"
    assert error_block(EDITOR, info.value).error_code == "too_many_requests"


async def test_overload_529_that_persists_becomes_unavailable_after_retries(api, backend, sleeps):
    api.push(*[fa.overloaded() for _ in range(3)])

    with pytest.raises(Unavailable, match="overloaded") as info:
        await backend.bash(BashInput(command="true"), ctx())

    assert len(api.message_requests) == 3 and len(sleeps) == 2
    assert error_block(BASH, info.value).error_code == "unavailable"


async def test_a_server_error_then_success_returns_the_result(api, backend, sleeps):
    api.push(fa.internal_error(), fa.overloaded(), fa.bash_turn({"command": "true"}, fa.bash_result(stdout="ok")))

    outcome = await backend.bash(BashInput(command="true"), ctx())

    assert outcome.block.stdout == "ok" and len(sleeps) == 2


async def test_backoff_is_capped(tmp_path, api, store):
    delays: list[float] = []

    async def record(seconds: float) -> None:
        delays.append(seconds)

    api.push(fa.rate_limited(retry_after=3600), fa.bash_turn({"command": "true"}, fa.bash_result()))
    async with HostedBackend(make_settings(tmp_path, api), store, backoff_cap=2.5, sleep=record) as b:
        await b.bash(BashInput(command="true"), ctx())
    assert delays == [2.5]


async def test_a_retry_after_longer_than_the_retry_budget_gives_up_at_once(tmp_path, api, store):
    delays: list[float] = []

    async def record(seconds: float) -> None:
        delays.append(seconds)

    api.push(fa.rate_limited(retry_after=30))
    async with HostedBackend(make_settings(tmp_path, api), store, backoff_cap=60, retry_budget=10, sleep=record) as b:
        with pytest.raises(TooManyRequests):
            await b.bash(BashInput(command="true"), ctx())
    assert delays == [] and len(api.message_requests) == 1


async def test_an_authentication_failure_names_the_api_key_variable_and_is_not_retried(api, backend, sleeps):
    api.push(fa.unauthorized())

    with pytest.raises(Unavailable, match="ANTHROPIC_API_KEY"):
        await backend.bash(BashInput(command="true"), ctx())

    assert sleeps == [] and len(api.message_requests) == 1


async def test_a_missing_api_key_fails_at_start_naming_the_variable(tmp_path, api, store, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    settings = make_settings(tmp_path, api, ANTHROPIC_API_KEY=None)

    backend = HostedBackend(settings, store)
    with pytest.raises(Unavailable, match="ANTHROPIC_API_KEY"):
        await backend.start()
    with pytest.raises(Unavailable, match="ANTHROPIC_API_KEY"):
        await backend.bash(BashInput(command="true"), ctx())
    assert api.requests == []


async def test_an_unreachable_api_becomes_unavailable_after_retries(tmp_path, store, sleeps):
    with fa.FakeAnthropic() as gone:
        url = gone.base_url  # stopped on exit: nothing listens there any more
    settings = load_settings(
        data_dir=str(tmp_path), ANTHROPIC_API_KEY="k", anthropic_base_url=url, hosted_max_retries=1
    )

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    async with HostedBackend(settings, store, sleep=record) as b:
        with pytest.raises(Unavailable, match="cannot reach the hosted API"):
            await b.bash(BashInput(command="true"), ctx())
    assert len(sleeps) == 1


def test_every_foreign_error_is_mapped_in_one_function():
    assert isinstance(map_api_error(ValueError("boom")), Unavailable)
    already = TooManyRequests("x")
    assert map_api_error(already) is already


# --- inputs the hosted tool cannot take ----------------------------------------------------------


async def test_restart_is_refused_as_invalid_tool_input_without_a_request(api, backend):
    with pytest.raises(InvalidToolInput, match="restart"):
        await backend.bash(BashInput(command="true", restart=True), ctx())
    assert api.requests == []


@pytest.mark.parametrize(
    "request_",
    [  # model_construct: the schema already rejects these; the backend must not rely on that
        EditorInput.model_construct(command="create", path="a", file_text=None),
        EditorInput.model_construct(command="str_replace", path="a", old_str="x", new_str=None),
        EditorInput.model_construct(command="view", path="a", view_range=[1]),
    ],
    ids=["create-without-file_text", "str_replace-without-new_str", "view_range-of-one"],
)
async def test_incomplete_editor_inputs_are_invalid_tool_input_without_a_request(api, backend, request_):
    with pytest.raises(InvalidToolInput):
        await backend.editor(request_, ctx())
    assert api.requests == []


async def test_only_the_fields_of_the_editor_command_are_sent(api, backend):
    requested = {"command": "view", "path": "a.txt"}
    api.push(fa.editor_turn(requested, fa.view_result("x")))

    await backend.editor(EditorInput(command="view", path="a.txt", file_text="ignored", old_str="ignored"), ctx())

    assert "ignored" not in api.message_requests[0]["messages"][0]["content"][-1]["text"]


# --- files ------------------------------------------------------------------------------------


async def test_output_files_keep_their_hosted_ids_and_are_downloaded_only_on_demand(api, backend, store):
    csv = b"a,b\n1,2\n"
    fid = api.add_file(csv, "table.csv", "text/csv")
    api.push(fa.bash_turn({"command": "python make.py"}, fa.bash_result(file_ids=[fid])))

    outcome = await backend.bash(BashInput(command="python make.py"), ctx(principal="alice"))

    assert sdk_check(BASH, outcome.block)["content"] == [{"type": "bash_code_execution_output", "file_id": fid}]
    (produced,) = outcome.files
    assert (produced.file_id, produced.filename, produced.size, produced.mime_type) == (
        fid,
        "table.csv",
        len(csv),
        "text/csv",
    )
    assert api.requests_to("files.download") == []

    record = await backend.fetch_file(fid, "alice")
    again = await backend.fetch_file(fid, "alice")

    assert record.id == again.id == fid  # the id the model saw works against our store too
    assert record.origin == "hosted" and record.filename == "table.csv" and record.size == len(csv)
    assert record.container_id == fa.DEFAULT_CONTAINER and record.principal == "alice"
    with store.open(fid, "alice") as fh:
        assert fh.read() == csv
    (download,) = api.requests_to("files.download")
    assert download.betas == [FILES_BETA]


async def test_image_outputs_are_fetched_at_once_so_they_can_be_shown_inline(api, backend, store):
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    fid = api.add_file(png, "plot.png", "image/png")
    api.push(fa.bash_turn({"command": "python plot.py"}, fa.bash_result(file_ids=[fid])))

    outcome = await backend.bash(BashInput(command="python plot.py"), ctx())

    assert outcome.files[0].mime_type == "image/png"
    assert store.blob_path(fid).read_bytes() == png
    await backend.fetch_file(fid)
    assert len(api.requests_to("files.download")) == 1


async def test_another_principal_cannot_fetch_a_hosted_output_file(api, backend):
    fid = api.add_file(b"secret", "s.txt", "text/plain")
    api.push(fa.bash_turn({"command": "true"}, fa.bash_result(file_ids=[fid])))
    await backend.bash(BashInput(command="true"), ctx(principal="alice"))

    with pytest.raises(FileNotFound):
        await backend.fetch_file(fid, "bob")
    with pytest.raises(FileNotFound):
        await backend.fetch_file("file_011CUnknownAAAAAAAAAAAAAA", "bob")
    assert api.requests_to("files.download") == []


async def test_a_hosted_file_the_api_does_not_have_is_file_not_found(api, backend):
    with pytest.raises(FileNotFound):
        await backend.fetch_file("file_011CMissingAAAAAAAAAAAAAA")


async def test_an_upload_is_sent_once_and_referenced_by_container_upload_in_the_next_request(api, backend, store):
    api.push(
        fa.bash_turn({"command": "true"}, fa.bash_result()),
        fa.bash_turn({"command": "wc -l data.csv"}, fa.bash_result(stdout="2\n")),
        fa.bash_turn({"command": "true"}, fa.bash_result()),
    )
    await backend.bash(BashInput(command="true"), ctx(principal="alice"))
    local = store.add_bytes(b"a,b\n1,2\n", filename="data.csv", origin="upload", principal="alice")

    path = await backend.attach_file(local.id, fa.DEFAULT_CONTAINER, "alice")
    await backend.bash(BashInput(command="wc -l data.csv"), ctx(principal="alice"))
    await backend.bash(BashInput(command="true"), ctx(principal="alice"))

    assert path.endswith("/data.csv")
    (upload,) = api.requests_to("files.upload")
    assert upload.form["file"] == ("data.csv", b"a,b\n1,2\n", "text/csv")
    hosted_id = next(iter(f for f in api.files if api.files[f].filename == "data.csv"))
    second, third = api.requests_to("messages")[1:]
    assert second.json["messages"][0]["content"][0] == {"type": "container_upload", "file_id": hosted_id}
    assert FILES_BETA in second.betas
    assert [b["type"] for b in third.json["messages"][0]["content"]] == ["text"]


async def test_an_upload_survives_a_request_that_never_reached_the_api(api, backend, store):
    api.push(
        fa.bash_turn({"command": "true"}, fa.bash_result()),
        fa.api_error(400, "invalid_request_error", "bad"),
        fa.bash_turn({"command": "true"}, fa.bash_result()),
    )
    await backend.bash(BashInput(command="true"), ctx())
    local = store.add_bytes(b"x", filename="x.txt", origin="upload", principal="local")
    await backend.attach_file(local.id, fa.DEFAULT_CONTAINER, "local")

    with pytest.raises(Unavailable):
        await backend.bash(BashInput(command="true"), ctx())
    await backend.bash(BashInput(command="true"), ctx())

    kinds = [[b["type"] for b in r["messages"][0]["content"]] for r in api.message_requests]
    assert kinds == [["text"], ["container_upload", "text"], ["container_upload", "text"]]


async def test_attaching_a_file_of_another_principal_is_file_not_found(api, backend, store):
    local = store.add_bytes(b"x", filename="x.txt", origin="upload", principal="alice")
    with pytest.raises(FileNotFound):
        await backend.attach_file(local.id, fa.DEFAULT_CONTAINER, "bob")
    assert api.requests_to("files.upload") == []


async def test_attaching_to_a_container_of_another_principal_is_refused(api, backend, store):
    api.push(fa.bash_turn({"command": "true"}, fa.bash_result()))
    await backend.bash(BashInput(command="true"), ctx(principal="alice"))
    local = store.add_bytes(b"x", filename="x.txt", origin="upload", principal="bob")

    with pytest.raises(ContainerExpired):
        await backend.attach_file(local.id, fa.DEFAULT_CONTAINER, "bob")
    assert api.requests_to("files.upload") == []


@pytest.mark.parametrize(
    "reply",
    [
        fa.api_error(404, "not_found_error", "container not found"),
        fa.api_error(400, "invalid_request_error", "container_expired: the container is gone"),
        fa.api_error(410, "invalid_request_error", "The container has expired"),
    ],
    ids=["404-not-found", "400-container_expired", "410-expired"],
)
async def test_other_shapes_of_an_expired_container_error_are_recognised(api, backend, reply):
    api.push(fa.bash_turn({"command": "true"}, fa.bash_result()), reply)
    await backend.bash(BashInput(command="true"), ctx())

    with pytest.raises(ContainerExpired, match="container_expired"):
        await backend.bash(BashInput(command="true"), ctx())


async def test_a_container_upload_error_is_not_mistaken_for_an_expired_container(api, backend):
    api.push(
        fa.bash_turn({"command": "true"}, fa.bash_result()),
        fa.api_error(400, "invalid_request_error", "messages.0.content.0.container_upload: file_id invalid"),
    )
    await backend.bash(BashInput(command="true"), ctx())

    with pytest.raises(Unavailable) as info:
        await backend.bash(BashInput(command="true"), ctx())

    assert not isinstance(info.value, ContainerExpired)
    assert backend.session_container("s1") == fa.DEFAULT_CONTAINER


# --- progress and health ------------------------------------------------------------------------


async def test_progress_is_reported_while_the_hosted_call_is_running(tmp_path, api, store):
    seen = threading.Event()
    notes: list[str] = []

    async def progress(elapsed: float, message: str) -> None:
        notes.append(message)
        seen.set()

    def slow_reply(request: fa.RecordedRequest) -> dict[str, Any]:
        assert seen.wait(timeout=10), "no progress notification while waiting"
        return fa.bash_turn({"command": "true"}, fa.bash_result())

    api.push(slow_reply)
    async with HostedBackend(make_settings(tmp_path, api, progress_interval=0.01), store) as b:
        outcome = await b.bash(BashInput(command="true"), ctx(progress=progress))

    assert outcome.block.return_code == 0
    assert notes and "hosted" in notes[0]


async def test_check_looks_up_the_configured_model(api, backend):
    assert (await backend.check())["model"] == "claude-sonnet-4-5"
    assert api.requests[0].path == "/v1/models/claude-sonnet-4-5"


# --- through the MCP server -------------------------------------------------------------------


@pytest.fixture
async def mcp_client(tmp_path, api, store):
    from mcp import Client

    from mcp_codeexec.server import create_server

    settings = make_settings(tmp_path, api)
    server = create_server(settings, backend=HostedBackend(settings, store, backoff_base=0), store=store)
    async with Client(server) as client:
        yield client


async def test_through_mcp_a_hosted_result_is_the_structured_content_with_usage_in_meta(api, mcp_client):
    hosted = fa.bash_result(stdout="hi\n")
    api.push(fa.bash_turn({"command": "echo hi"}, hosted))

    result = await mcp_client.call_tool("bash_code_execution", {"command": "echo hi"})

    assert result.is_error is False
    assert result.structured_content == hosted
    assert_hosted_shape(result.structured_content, BASH)
    assert result.meta["container"] == {"id": fa.DEFAULT_CONTAINER, "expires_at": "2099-01-01T00:00:00Z"}
    assert result.meta["usage"]["input_tokens"] > 0 and result.meta["hosted"]["duration_ms"] >= 0


@pytest.mark.parametrize(
    ("replies", "error_code", "text"),
    [
        ([fa.rate_limited(None)] * 3, "too_many_requests", "429"),
        ([fa.overloaded()] * 3, "unavailable", "overloaded"),
        ([fa.bash_turn({"command": "echo other"}, fa.bash_result())], "unavailable", "different input"),
    ],
    ids=["429", "529", "mismatch"],
)
async def test_through_mcp_hosted_failures_are_hosted_error_blocks(api, mcp_client, replies, error_code, text):
    api.push(*replies)

    result = await mcp_client.call_tool("bash_code_execution", {"command": "echo hi"})

    assert result.is_error is True
    assert result.structured_content == {"type": "bash_code_execution_tool_result_error", "error_code": error_code}
    assert text in result.content[0].text


async def test_through_mcp_an_expired_container_is_unavailable_saying_container_expired(api, mcp_client):
    api.push(fa.editor_turn({"command": "view", "path": "a"}, fa.view_result("x")), fa.container_expired())
    await mcp_client.call_tool("text_editor_code_execution", {"command": "view", "path": "a"})

    result = await mcp_client.call_tool("text_editor_code_execution", {"command": "view", "path": "a"})

    assert result.is_error is True
    assert result.structured_content["error_code"] == "unavailable"
    assert result.structured_content["error_message"].startswith("container_expired")
    assert_hosted_shape(result.structured_content, EDITOR)


async def test_an_unavailable_call_is_logged_for_the_operator_with_its_reason(api, mcp_client, caplog):
    """The client sees only `unavailable`; whoever runs the server needs the why in its log. An
    expired container is the client's business (its text says so) and is not logged."""
    api.push(*[fa.overloaded()] * 3)
    with caplog.at_level(logging.WARNING, logger="mcp_codeexec.server"):
        await mcp_client.call_tool("bash_code_execution", {"command": "echo hi"})
    said = [r.getMessage() for r in caplog.records if r.name == "mcp_codeexec.server"]
    assert len(said) == 1 and "bash_code_execution call answered unavailable" in said[0] and "overloaded" in said[0]

    caplog.clear()
    api.push(fa.editor_turn({"command": "view", "path": "a"}, fa.view_result("x")), fa.container_expired())
    await mcp_client.call_tool("text_editor_code_execution", {"command": "view", "path": "a"})
    with caplog.at_level(logging.WARNING, logger="mcp_codeexec.server"):
        expired = await mcp_client.call_tool("text_editor_code_execution", {"command": "view", "path": "a"})
    assert expired.structured_content["error_message"].startswith("container_expired")
    assert not [r for r in caplog.records if r.name == "mcp_codeexec.server"]


async def test_through_mcp_hosted_output_files_are_shown_and_readable_as_resources(api, mcp_client):
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
    image_id = api.add_file(png, "plot.png", "image/png")
    csv_id = api.add_file(b"a,b\n1,2\n", "table.csv", "text/csv")
    api.push(fa.bash_turn({"command": "python make.py"}, fa.bash_result(file_ids=[image_id, csv_id])))

    result = await mcp_client.call_tool("bash_code_execution", {"command": "python make.py"})
    resource = await mcp_client.read_resource(f"codeexec://files/{csv_id}")

    kinds = [c.type for c in result.content]
    assert kinds == ["text", "image", "resource_link", "resource_link"]
    assert [str(c.uri) for c in result.content if c.type == "resource_link"] == [
        f"codeexec://files/{image_id}",
        f"codeexec://files/{csv_id}",
    ]
    assert resource.contents[0].text == "a,b\n1,2\n"


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_serve_backend_hosted_relays_calls_over_each_transport(tmp_path, api, transport, monkeypatch):
    from tests.support.servers import http_server, mcp_client, new_token

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-subprocess")
    settings = load_settings(data_dir=str(tmp_path), backend="hosted", anthropic_base_url=api.base_url)
    api.push(fa.bash_turn({"command": "echo hi"}, fa.bash_result(stdout="hi\n")))
    token = new_token()

    with contextlib.ExitStack() as stack:
        url = stack.enter_context(http_server(settings, token=token)) if transport == "http" else None
        async with mcp_client(transport, settings, base_url=url, token=token) as client:
            result = await client.call_tool("bash_code_execution", {"command": "echo hi"})

    assert result.is_error is False
    assert result.structured_content == fa.bash_result(stdout="hi\n")
    assert result.meta["container"]["id"] == fa.DEFAULT_CONTAINER
    (request,) = api.requests_to("messages")
    assert "sk-ant-subprocess" in (request.headers.get("x-api-key"), request.headers.get("authorization", "")[7:])
