"""One exception family. Each error carries the hosted ``error_code`` it becomes.

``error_block`` is the single place where a failure turns into the hosted error object.
"""

from __future__ import annotations

from typing import Any

from .schemas import BashError, CodeError, EditorError


class CodeExecError(Exception):
    """Base: a failure that is answered with a hosted error block."""

    error_code = "unavailable"

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.container: Any = None
        """The ``ContainerInfo`` of the sandbox the failure happened in, when there was one."""


class InvalidToolInput(CodeExecError, ValueError):
    error_code = "invalid_tool_input"


class FileNotFound(CodeExecError, FileNotFoundError):
    error_code = "file_not_found"


class Unavailable(CodeExecError, RuntimeError):
    error_code = "unavailable"


class ContainerExpired(Unavailable):
    """An unknown, removed or expired container was named. The SDK has no `container_expired`
    literal, so it is answered as `unavailable`; the message says container_expired."""

    def __init__(self, container_id: str, why: str = "it has expired or does not exist") -> None:
        super().__init__(f"container_expired: container {container_id!r} cannot be used: {why}")
        self.container_id = container_id


class TooManyRequests(CodeExecError, RuntimeError):
    error_code = "too_many_requests"


class ExecutionTimeExceeded(CodeExecError, TimeoutError):
    error_code = "execution_time_exceeded"


class OutputFileTooLarge(CodeExecError, RuntimeError):
    error_code = "output_file_too_large"


_EDITOR_ONLY = {"file_not_found"}
_BASH_ONLY = {"output_file_too_large"}


def error_block(tool: str, exc: CodeExecError) -> BashError | EditorError | CodeError:
    """Map an error to the hosted error object of ``tool`` (bash, text editor or legacy code)."""
    code = exc.error_code
    if tool == "code_execution":
        legacy = code if code in ("invalid_tool_input", "too_many_requests", "execution_time_exceeded") else "unavailable"
        return CodeError(error_code=legacy)  # type: ignore[arg-type]
    if tool == "bash_code_execution":
        return BashError(error_code=code if code not in _EDITOR_ONLY else "invalid_tool_input")  # type: ignore[arg-type]
    return EditorError(
        error_code=code if code not in _BASH_ONLY else "invalid_tool_input",  # type: ignore[arg-type]
        error_message=exc.message,
    )
