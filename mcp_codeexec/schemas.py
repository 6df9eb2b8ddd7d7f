"""Tool inputs and the hosted result blocks, field for field with ``anthropic.types.beta``.

The SDK classes are the oracle (tests check every model against them); these local copies exist
so the server does not import ``anthropic`` and so extra fields are rejected (``extra="forbid"``).
"""

from __future__ import annotations

import copy
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

BashErrorCode = Literal[
    "invalid_tool_input", "unavailable", "too_many_requests", "execution_time_exceeded", "output_file_too_large"
]
EditorErrorCode = Literal[
    "invalid_tool_input", "unavailable", "too_many_requests", "execution_time_exceeded", "file_not_found"
]


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BashOutputBlock(_Block):
    type: Literal["bash_code_execution_output"] = "bash_code_execution_output"
    file_id: str


class BashResult(_Block):
    type: Literal["bash_code_execution_result"] = "bash_code_execution_result"
    stdout: str
    stderr: str
    return_code: int
    content: list[BashOutputBlock] = Field(default_factory=list)


class BashError(_Block):
    type: Literal["bash_code_execution_tool_result_error"] = "bash_code_execution_tool_result_error"
    error_code: BashErrorCode


class ViewResult(_Block):
    type: Literal["text_editor_code_execution_view_result"] = "text_editor_code_execution_view_result"
    file_type: Literal["text", "image", "pdf"]
    content: str
    num_lines: int | None = None
    start_line: int | None = None
    total_lines: int | None = None


class CreateResult(_Block):
    type: Literal["text_editor_code_execution_create_result"] = "text_editor_code_execution_create_result"
    is_file_update: bool


class StrReplaceResult(_Block):
    type: Literal["text_editor_code_execution_str_replace_result"] = "text_editor_code_execution_str_replace_result"
    old_start: int | None = None
    old_lines: int | None = None
    new_start: int | None = None
    new_lines: int | None = None
    lines: list[str] | None = None


class EditorError(_Block):
    type: Literal["text_editor_code_execution_tool_result_error"] = "text_editor_code_execution_tool_result_error"
    error_code: EditorErrorCode
    error_message: str | None = None


class CodeOutputBlock(_Block):
    type: Literal["code_execution_output"] = "code_execution_output"
    file_id: str


class CodeResult(_Block):
    """The ``code_execution`` result (``BetaCodeExecutionResultBlock``): the REPL sub-tool of
    ``code_execution_20260120`` / ``20260521``, same shape as the legacy 20250522 tool."""

    type: Literal["code_execution_result"] = "code_execution_result"
    stdout: str
    stderr: str
    return_code: int
    content: list[CodeOutputBlock] = Field(default_factory=list)


class CodeError(_Block):
    type: Literal["code_execution_tool_result_error"] = "code_execution_tool_result_error"
    error_code: Literal["invalid_tool_input", "unavailable", "too_many_requests", "execution_time_exceeded"]


BashBlock = Union[BashResult, BashError]
EditorBlock = Union[ViewResult, CreateResult, StrReplaceResult, EditorError]
ResultBlock = Union[BashResult, BashError, ViewResult, CreateResult, StrReplaceResult, EditorError, CodeResult, CodeError]

# --- tool inputs -------------------------------------------------------------------------------

CONTAINER_ID_FIELD = Field(
    default=None,
    description="Optional: the id of an existing container (from a previous result's _meta.container.id) to run in.",
)


def _without_blank_optionals(data: Any) -> Any:
    """Absent, null and empty optional arguments mean the same, "not given" (clients send all three).
    Not file_text / old_str / new_str: an empty string is a real value there."""
    if not isinstance(data, dict):
        return data
    blank: dict[str, tuple[Any, ...]] = {"restart": (None, ""), "container_id": (None, ""), "view_range": (None, "", [])}
    return {k: v for k, v in data.items() if not (k in blank and any(v is b or (type(v) is type(b) and v == b) for b in blank[k]))}


class BashInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    _blank = model_validator(mode="before")(_without_blank_optionals)
    command: str = Field(description="The shell command to run (bash).")
    restart: bool = Field(default=False, description="Start a fresh shell (clears working directory and exported variables) before running.")
    container_id: str | None = CONTAINER_ID_FIELD


class EditorInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    _blank = model_validator(mode="before")(_without_blank_optionals)
    command: Literal["view", "create", "str_replace"] = Field(description="view | create | str_replace")
    path: str = Field(description="File path; relative paths resolve against /workspace.")
    file_text: str | None = Field(default=None, description="create: the full content of the file.")
    old_str: str | None = Field(default=None, description="str_replace: text that must occur exactly once in the file.")
    new_str: str | None = Field(default=None, description="str_replace: the replacement text.")
    view_range: list[int] | None = Field(
        default=None, description="view: [start_line, end_line], 1-based inclusive; end_line -1 means end of file."
    )
    container_id: str | None = CONTAINER_ID_FIELD

    @model_validator(mode="after")
    def _fields_for_command(self) -> EditorInput:
        if not self.path or "\x00" in self.path:
            raise ValueError("path must be a non-empty string without NUL characters")
        if self.command == "view" and self.view_range is not None:
            if len(self.view_range) != 2:
                raise ValueError("view_range must be [start_line, end_line]")
        if self.command == "create" and self.file_text is None:
            raise ValueError("create needs file_text")
        if self.command == "str_replace" and (self.old_str is None or self.new_str is None):
            raise ValueError("str_replace needs old_str and new_str")
        return self


class CodeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    _blank = model_validator(mode="before")(_without_blank_optionals)
    code: str = Field(description="Python code to run in the container's persistent Python 3.11 interpreter.")
    restart: bool = Field(default=False, description="Start a fresh interpreter (forgets every variable and import) before running.")
    container_id: str | None = CONTAINER_ID_FIELD


# --- JSON schemas for tools/list -----------------------------------------------------------------


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """Resolve ``$ref``s into ``$defs`` so strict validators (ajv) need no definitions support."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]]))
            return {k: walk(v) for k, v in node.items() if k != "title"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def _nullable_to_optional(schema: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """Present optional inputs as plain typed properties (clients render them better)."""
    for name, prop in schema.get("properties", {}).items():
        any_of = prop.pop("anyOf", None)
        if any_of:
            concrete = [s for s in any_of if s.get("type") != "null"]
            if len(concrete) == 1:
                prop.update(concrete[0])
        prop.pop("default", None) if prop.get("default") is None else None
    schema["additionalProperties"] = False
    return schema


def input_schema(model: type[BaseModel]) -> dict[str, Any]:
    return _nullable_to_optional(_inline(model.model_json_schema()), model)


def output_schema(*models: type[BaseModel]) -> dict[str, Any]:
    """The union of a tool's result and error blocks; MCP wants an object at the root."""
    variants = [_inline(TypeAdapter(m).json_schema(mode="serialization")) for m in models]
    for variant in variants:
        variant["additionalProperties"] = False
        variant["required"] = sorted(set(variant.get("required", [])) | {"type"})
    return {"type": "object", "anyOf": variants}


BASH_OUTPUT_SCHEMA = output_schema(BashResult, BashError)
EDITOR_OUTPUT_SCHEMA = output_schema(ViewResult, CreateResult, StrReplaceResult, EditorError)
CODE_OUTPUT_SCHEMA = output_schema(CodeResult, CodeError)
