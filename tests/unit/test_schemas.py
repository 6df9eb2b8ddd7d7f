"""Our result models and tool schemas against the anthropic SDK (the oracle)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from anthropic.types import beta

from mcp_codeexec import schemas
from mcp_codeexec.errors import (
    ContainerExpired,
    ExecutionTimeExceeded,
    FileNotFound,
    InvalidToolInput,
    OutputFileTooLarge,
    TooManyRequests,
    error_block,
)
from tests.support.oracle import assert_hosted_shape

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "hosted_examples.json"

PAIRS = [
    (schemas.BashResult, beta.BetaBashCodeExecutionResultBlock),
    (schemas.BashError, beta.BetaBashCodeExecutionToolResultErrorObject),
    (schemas.ViewResult, beta.BetaTextEditorCodeExecutionViewResultBlock),
    (schemas.CreateResult, beta.BetaTextEditorCodeExecutionCreateResultBlock),
    (schemas.StrReplaceResult, beta.BetaTextEditorCodeExecutionStrReplaceResultBlock),
    (schemas.EditorError, beta.BetaTextEditorCodeExecutionToolResultErrorObject),
    (schemas.BashOutputBlock, beta.BetaBashCodeExecutionOutputBlock),
]


@pytest.mark.parametrize(("ours", "sdk"), PAIRS, ids=lambda c: c.__name__)
def test_each_result_model_has_exactly_the_sdk_fields(ours, sdk):
    assert set(ours.model_fields) == set(sdk.model_fields)
    assert ours.model_fields["type"].default == sdk.model_fields["type"].annotation.__args__[0]


def test_error_code_literals_match_the_sdk():
    assert set(schemas.BashErrorCode.__args__) == set(
        beta.BetaBashCodeExecutionToolResultErrorObject.model_fields["error_code"].annotation.__args__
    )
    assert set(schemas.EditorErrorCode.__args__) == set(
        beta.BetaTextEditorCodeExecutionToolResultErrorObject.model_fields["error_code"].annotation.__args__
    )


def test_golden_expected_results_validate_into_our_models_and_the_sdk():
    cases = json.loads(GOLDEN.read_text())["cases"]
    for case in cases:
        expected = case.get("expected")
        if expected is None:
            continue
        assert_hosted_shape(expected, case["tool"])
        model = {m.model_fields["type"].default: m for m, _ in PAIRS}[expected["type"]]
        assert model.model_validate(expected).model_dump(exclude_none=True) == expected


@pytest.mark.parametrize(
    "error",
    [
        InvalidToolInput("bad"),
        FileNotFound("gone"),
        ContainerExpired("container_x"),
        TooManyRequests("slow down"),
        ExecutionTimeExceeded("late"),
        OutputFileTooLarge("big"),
    ],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("tool", ["bash_code_execution", "text_editor_code_execution", "code_execution"])
def test_every_error_maps_to_a_valid_hosted_error_block_of_its_tool(error, tool):
    block = error_block(tool, error).model_dump(exclude_none=True)
    assert_hosted_shape(block, tool)


def test_an_expired_container_is_unavailable_and_says_container_expired():
    block = error_block("text_editor_code_execution", ContainerExpired("container_abc"))
    assert block.error_code == "unavailable"
    assert "container_expired" in block.error_message


def test_output_schemas_accept_every_variant_and_reject_extra_fields():
    jsonschema = pytest.importorskip("jsonschema")
    ok = {"type": "bash_code_execution_result", "stdout": "", "stderr": "", "return_code": 0, "content": []}
    jsonschema.validate(ok, schemas.BASH_OUTPUT_SCHEMA)
    jsonschema.validate({"type": "bash_code_execution_tool_result_error", "error_code": "unavailable"}, schemas.BASH_OUTPUT_SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**ok, "extra": 1}, schemas.BASH_OUTPUT_SCHEMA)
    view = {"type": "text_editor_code_execution_view_result", "file_type": "text", "content": "x",
            "num_lines": 1, "start_line": 1, "total_lines": 1}
    jsonschema.validate(view, schemas.EDITOR_OUTPUT_SCHEMA)


def test_input_schemas_have_no_refs_and_name_the_hosted_fields():
    bash = schemas.input_schema(schemas.BashInput)
    editor = schemas.input_schema(schemas.EditorInput)
    assert "$ref" not in json.dumps(bash) + json.dumps(editor)
    assert bash["required"] == ["command"]
    assert set(editor["properties"]) >= {"command", "path", "file_text", "old_str", "new_str", "view_range"}
    assert editor["properties"]["command"]["enum"] == ["view", "create", "str_replace"]
