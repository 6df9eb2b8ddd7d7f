"""Tool names and input validation, shared by the MCP server and the Python API.

Bad input never raises anything but ``InvalidToolInput``, which becomes the hosted
``invalid_tool_input`` error block.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .errors import InvalidToolInput
from .schemas import BashInput, CodeInput, EditorInput

BASH = "bash_code_execution"
EDITOR = "text_editor_code_execution"
CODE = "code_execution"
ALL_TOOLS = (BASH, EDITOR, CODE)
MAX_COMMAND_CHARS = 1_000_000


def _problems(tool: str, exc: ValidationError) -> InvalidToolInput:
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors()[:5])
    return InvalidToolInput(f"invalid input for {tool}: {problems}")


def validate_input(tool: str, arguments: dict[str, Any]) -> BashInput | EditorInput | CodeInput:
    """The hosted input of ``tool`` as a model."""
    if tool == CODE:
        try:
            code = CodeInput.model_validate(arguments)
        except ValidationError as exc:
            raise _problems(tool, exc) from None
        if len(code.code) > MAX_COMMAND_CHARS:
            raise InvalidToolInput(f"code is longer than {MAX_COMMAND_CHARS} characters")
        return code
    model = BashInput if tool == BASH else EditorInput
    try:
        request = model.model_validate(arguments)
    except ValidationError as exc:
        raise _problems(tool, exc) from None
    if isinstance(request, BashInput):
        if len(request.command) > MAX_COMMAND_CHARS:
            raise InvalidToolInput(f"command is longer than {MAX_COMMAND_CHARS} characters")
        if not request.command.strip():
            raise InvalidToolInput("command is empty")
    return request
