"""Services: processes that outlive a tool call (issue 17 item 3). Opt-in, off by default.

The hosted box kills everything a call leaves behind, and the three hosted tools keep exactly
the hosted schemas. So services are a separate, non-hosted MCP tool, ``services``, published only
with ``services = true`` (``--services``, ``MCP_CODEEXEC_SERVICES``), and methods on the Python
API's ``Sandbox`` (``start_service``, ``services``, ``service_logs``, ``stop_service``).

The agent (op ``services``, docs/DESIGN.md) starts ``bash -c COMMAND`` in a session of its own, with
the shell's working directory and exported variables; every process of that session is spared by
the end-of-call sweeps, anything else a call leaves is still killed. Output (stdout and stderr
together) is kept in a ring buffer of ``services_log_bytes`` per service. At most ``services_max``
run at once; they are inside the sandbox container's cgroup, so its memory, pids and CPU limits hold
them; ``services_max_memory_bytes`` adds their own cap (the largest is stopped when their summed RSS
passes it). The sandbox's ports are theirs: ``curl localhost:8000`` in a later bash call reaches a
service listening there (the container has no other network). All of it dies with the container
(stop, idle stop, removal); while one runs, idle stops wait as long as for a live interpreter.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import anyio
import mcp_types as types
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .backends.base import CallContext
from .config import Settings
from .errors import CodeExecError, InvalidToolInput, Unavailable

SERVICES = "services"
DEFAULT_TAIL = 20_000


class ServicesInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["start", "list", "logs", "stop"]
    name: str | None = Field(default=None, max_length=64)
    command: str | None = Field(default=None, max_length=64 * 1024)
    tail: int | None = Field(default=None, ge=0)
    container_id: str | None = None


def tool_definition(settings: Settings) -> types.Tool:
    return types.Tool(
        name=SERVICES,
        title="Long-running services in the sandbox",
        description=(
            "Start, list, read and stop processes that keep running between calls in the code-execution "
            "container (a dev server, a database, a long job); processes started from bash_code_execution "
            "end with their call, services do not. "
            "action=start (name, command: run by bash in /workspace with the shell's exported variables); "
            "list (name, pid, command, running/exited, exit code, uptime); logs (name, tail = bytes of the "
            "newest output, stdout and stderr together); stop (name: SIGTERM, then SIGKILL after 2 s). "
            f"At most {settings.services_max} run at once; each keeps its newest "
            f"{settings.services_log_bytes // 1024} KiB of output. A service listening on a port answers "
            "later calls on localhost (e.g. `curl localhost:8000`); nothing outside the container reaches it. "
            "Services share the container's memory and CPU limits and end when the container stops."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "action": {"type": "string", "enum": ["start", "list", "logs", "stop"]},
                "name": {"type": "string", "description": "The service's name (letters, digits, _ . -)."},
                "command": {"type": "string", "description": "start: the bash command to run."},
                "tail": {"type": "integer", "minimum": 0, "description": f"logs: bytes of output (default {DEFAULT_TAIL})."},
                "container_id": {"type": "string", "description": "A container other than the session's."},
            },
            "required": ["action"],
            "additionalProperties": False,
        },
        annotations=types.ToolAnnotations(title="Long-running services in the sandbox", open_world_hint=False),
    )


def validate(arguments: dict[str, Any]) -> ServicesInput:
    given = {k: v for k, v in arguments.items() if v not in (None, "", [])}  # blank means "not given"
    try:
        request = ServicesInput.model_validate(given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidToolInput(f"invalid input for {SERVICES}: {problems}") from None
    if request.action != "list" and not request.name:
        raise InvalidToolInput(f"services {request.action}: `name` is required")
    if request.action == "start" and not (request.command or "").strip():
        raise InvalidToolInput("services start: `command` is required")
    return request


def agent_message(request: ServicesInput, settings: Settings) -> dict[str, Any]:
    message: dict[str, Any] = {"op": "services", "action": request.action}
    if request.name:
        message["name"] = request.name
    if request.action == "start":
        message.update(
            command=request.command,
            max_services=settings.services_max,
            log_bytes=settings.services_log_bytes,
            max_memory=settings.services_max_memory_bytes,
        )
    if request.action == "logs":
        tail = DEFAULT_TAIL if request.tail is None else request.tail
        message["tail"] = min(tail, settings.services_log_bytes, settings.max_result_chars // 2)
    return message


async def run(backend: Any, request: ServicesInput, ctx: CallContext, settings: Settings) -> tuple[dict[str, Any], Any]:
    """The agent's answer and the sandbox's ``ContainerInfo``; the backend needs ``agent_request``
    (the Docker backend; the hosted one has no services)."""
    hook = getattr(backend, "agent_request", None)
    if hook is None:
        raise Unavailable("services need the docker backend (the hosted tool has none)")
    result, sandbox = await hook(ctx, request.container_id, agent_message(request, settings))
    # Idle stops wait longer while services run (they would end with the container).
    listed = result if request.action == "list" else (await hook(ctx, request.container_id, {"op": "services", "action": "list"}))[0]
    sandbox.services_alive = any(s.get("status") == "running" for s in listed.get("services", []))
    await anyio.to_thread.run_sync(write_record, settings.data_dir, sandbox.record.id, listed.get("services", []))
    return result, sandbox.info


# `containers ls` runs in another process than the server. It cannot ask the agent itself: Docker
# copies every attacher's stdin into PID 1's one pipe, unframed, so a second attach could land a
# request inside a large frame of the server's (a put_file chunk) and break the session's channel;
# `docker exec` would start a process inside the sandbox (under its limits, killed by its sweeps) and
# `docker cp` cannot read its tmpfs. So the server records, after each services op (which always
# ends with a `list`), what the agent said, in a file the CLI reads; the CLI says how old it is.


def record_path(data_dir: Path, container_id: str) -> Path:
    return data_dir / "services" / f"{container_id}.json"


def write_record(data_dir: Path, container_id: str, listed: list[dict[str, Any]]) -> None:
    """``<data>/services/<id>.json``: the sandbox's services as of now (atomic replace)."""
    path = record_path(data_dir, container_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # commands may hold what the caller typed
    tmp = path.with_name(f".{container_id}.tmp")
    keep = ("name", "pid", "status", "exit_code", "uptime_seconds", "started_at", "command", "processes", "memory_bytes")
    rows = [{k: s.get(k) for k in keep} for s in listed]
    tmp.write_text(json.dumps({"updated": time.time(), "services": rows}))
    tmp.replace(path)


def read_record(data_dir: Path, container_id: str, started_at: float | None, now: float | None = None) -> dict[str, Any] | None:
    """What the server last recorded for a running container, uptimes brought up to ``now``; None
    without a record or when the container (re)started after it (its services died with the old start)."""
    try:
        data = json.loads(record_path(data_dir, container_id).read_text())
        updated = float(data["updated"])
        rows = [dict(r) for r in data["services"] if isinstance(r, dict)]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if started_at is not None and started_at > updated:
        return None
    now = time.time() if now is None else now
    for row in rows:
        if row.get("status") == "running" and isinstance(row.get("started_at"), int | float):
            row["uptime_seconds"] = round(max(0.0, now - row["started_at"]), 1)
    return {"as_of_seconds": round(max(0.0, now - updated), 1), "services": rows}


def _line(s: dict[str, Any]) -> str:
    code = "" if s.get("exit_code") is None else f", exit code {s['exit_code']}"
    extra = f", stopped by {s['stopped_by']}" if s.get("stopped_by") else ""
    return (f"{s['name']}: {s['status']}{code}{extra}, pid {s['pid']}, up {s['uptime_seconds']:.1f} s, "
            f"{s.get('processes', 0)} process(es), {s.get('output_bytes', 0)} output bytes: {s['command']}")


def render(request: ServicesInput, result: dict[str, Any]) -> str:
    if request.action == "list":
        items = result.get("services", [])
        return "\n".join(_line(s) for s in items) if items else "no services"
    text = _line(result["service"])
    if request.action == "logs":
        cut = " (older output dropped)" if result.get("truncated") else ""
        text += f"\n--- output{cut} ---\n" + result.get("output", "")
    return text


async def call(backend: Any, arguments: dict[str, Any], ctx: CallContext, settings: Settings) -> types.CallToolResult:
    """The MCP ``services`` tool: one result, failures as ``isError`` with the error code."""
    try:
        request = validate(arguments)
        result, container = await run(backend, request, ctx, settings)
    except CodeExecError as exc:
        return error_result(exc)
    meta = {"container": container.meta()}
    structured = {"type": "services_result", "action": request.action, **result}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=render(request, result))],
        structured_content=structured, is_error=False, _meta=meta,
    )


def error_result(exc: CodeExecError) -> types.CallToolResult:
    meta = {"container": exc.container.meta()} if exc.container is not None else None
    structured = {"type": "services_error", "error_code": exc.error_code, "message": exc.message}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"{exc.error_code}: {exc.message}")],
        structured_content=structured, is_error=True, _meta=meta,
    )
