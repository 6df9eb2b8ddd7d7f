"""The anthropic SDK classes are the oracle for every result we emit."""

from __future__ import annotations

from typing import Any

from anthropic.types import beta

SDK_CLASS = {
    "bash_code_execution_result": beta.BetaBashCodeExecutionResultBlock,
    "bash_code_execution_tool_result_error": beta.BetaBashCodeExecutionToolResultErrorObject,
    "text_editor_code_execution_view_result": beta.BetaTextEditorCodeExecutionViewResultBlock,
    "text_editor_code_execution_create_result": beta.BetaTextEditorCodeExecutionCreateResultBlock,
    "text_editor_code_execution_str_replace_result": beta.BetaTextEditorCodeExecutionStrReplaceResultBlock,
    "text_editor_code_execution_tool_result_error": beta.BetaTextEditorCodeExecutionToolResultErrorObject,
    "code_execution_result": beta.BetaCodeExecutionResultBlock,
    "code_execution_tool_result_error": beta.BetaCodeExecutionToolResultErrorObject,
}
BASH_TYPES = {"bash_code_execution_result", "bash_code_execution_tool_result_error"}
CODE_TYPES = {"code_execution_result", "code_execution_tool_result_error"}


def assert_hosted_shape(structured: Any, tool: str | None = None) -> Any:
    """Validate into the SDK class for its ``type`` and check no field the SDK lacks is present."""
    assert isinstance(structured, dict), structured
    cls = SDK_CLASS[structured["type"]]
    model = cls.model_validate(structured)
    extra = set(structured) - set(cls.model_fields)
    assert not extra, f"fields the SDK class lacks: {extra}"
    for key in ("content",):
        if structured["type"] in ("bash_code_execution_result", "code_execution_result"):
            for item in structured[key]:
                assert set(item) == {"type", "file_id"}
    if tool is not None:
        assert (structured["type"] in BASH_TYPES) == (tool == "bash_code_execution")
        assert (structured["type"] in CODE_TYPES) == (tool == "code_execution")
    return model


async def assert_client_round_trips(client: Any, echoes: int) -> None:
    """Through a real MCP client: ``echoes`` bash calls answered with their own output, then an
    editor call answered with an error result, each in the hosted shape."""
    import anyio

    with anyio.fail_after(20):
        for i in range(echoes):
            result = await client.call_tool("bash_code_execution", {"command": f"echo {i}"})
            assert not result.is_error
            assert assert_hosted_shape(result.structured_content).stdout == f"echo {i}"
        result = await client.call_tool("text_editor_code_execution", {"command": "view", "path": "/nope"})
        assert result.is_error
        assert_hosted_shape(result.structured_content)
