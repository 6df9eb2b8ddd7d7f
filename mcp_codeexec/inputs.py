"""Tool names and input validation, shared by the MCP server and the Python API.

Bad input never raises anything but ``InvalidToolInput``, which becomes the hosted
``invalid_tool_input`` error block.
"""

from __future__ import annotations

import secrets
from typing import Any

from pydantic import ValidationError

from .errors import InvalidToolInput
from .schemas import BashInput, CodeInput, EditorInput

BASH = "bash_code_execution"
EDITOR = "text_editor_code_execution"
CODE = "code_execution"
MAX_COMMAND_CHARS = 1_000_000


def python_command(code: str) -> str:
    """The legacy tool runs its code through the bash tool: a quoted here-document fed to python3."""
    delimiter = f"CODEEXEC_PY_{secrets.token_hex(8)}"
    return f"python3 - <<'{delimiter}'\n{code}\n{delimiter}"


def _problems(tool: str, exc: ValidationError) -> InvalidToolInput:
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors()[:5])
    return InvalidToolInput(f"invalid input for {tool}: {problems}")


def validate_input(tool: str, arguments: dict[str, Any]) -> BashInput | EditorInput:
    """The hosted input of ``tool`` as a model; the legacy ``code_execution`` becomes a bash input."""
    if tool == CODE:
        try:
            code = CodeInput.model_validate(arguments)
        except ValidationError as exc:
            raise _problems(tool, exc) from None
        if len(code.code) > MAX_COMMAND_CHARS:
            raise InvalidToolInput(f"code is longer than {MAX_COMMAND_CHARS} characters")
        return BashInput(command=python_command(code.code), container_id=code.container_id)
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
