"""The MCP surface: two tools with the hosted inputs and results, and the file store as resources.

Built on the low-level ``mcp`` server so that ``outputSchema``, ``structuredContent``, ``isError``
and ``_meta`` are exactly what the hosted tool's contract says. Imports neither docker nor
anthropic: the backend does the work.
"""

from __future__ import annotations

import base64
import io
import logging
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError

from . import __version__
from .backends.base import Backend, CallContext, CodeTools, Outcome, ProducedFile
from .config import Settings
from .errors import CodeExecError, ContainerExpired, TooManyRequests, error_block
from .files import FileStore, StoredFileNotFound
from .inputs import ALL_TOOLS, BASH, CODE, EDITOR, validate_input
from .rate_limit import CallRateLimiter
from .schemas import (
    BASH_OUTPUT_SCHEMA,
    CODE_OUTPUT_SCHEMA,
    EDITOR_OUTPUT_SCHEMA,
    BashInput,
    CodeInput,
    EditorInput,
    input_schema,
)

log = logging.getLogger(__name__)

FILE_URI = "codeexec://files/"
_SURROGATES = re.compile("[\ud800-\udfff]")


def _valid_unicode(value: Any) -> Any:
    """Lone surrogates (a client can send them as ``\\udXXX`` JSON escapes; error messages may echo
    them back) become U+FFFD: they cannot be encoded as UTF-8 and strict JSON parsers reject them."""
    if isinstance(value, str):
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_valid_unicode(k): _valid_unicode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_valid_unicode(v) for v in value]
    return value


def _limits(settings: Settings) -> str:
    network = "network access enabled" if settings.network else "no network access (no internet, no DNS)"
    return (
        f"Limits: {settings.cpus:g} CPU, {settings.memory_bytes / 2**30:g} GiB RAM, "
        f"{settings.disk_bytes / 2**30:g} GiB workspace disk, {settings.call_timeout:g} s per call, {network}."
    )


def tool_definitions(settings: Settings) -> list[types.Tool]:
    workspace = (
        "Runs in a persistent Linux container (x86_64, Python 3.11 with pandas, numpy, scipy, scikit-learn, "
        "matplotlib, seaborn, openpyxl, python-docx, python-pptx, pypdf, reportlab, sympy and more). "
        "The working directory is /workspace; files there persist between calls. "
        "Uploaded files appear in /workspace/inputs ($INPUT_DIR). "
    )
    bash = types.Tool(
        name=BASH,
        title="Run a bash command",
        description=(
            "Run a shell command in the code-execution container and get its stdout, stderr and exit code. "
            + workspace
            + "The shell keeps its working directory and exported variables between calls (restart: true "
            "gives a fresh shell); background processes end with the call. Every call gets a fresh, empty "
            "$OUTPUT_DIR: files written at its top level are returned as output files (charts, reports, CSVs). "
            "Long output is truncated in the middle; the full text is saved to the file the marker names. "
            + _limits(settings)
        ),
        input_schema=input_schema(BashInput),
        output_schema=BASH_OUTPUT_SCHEMA,
        annotations=types.ToolAnnotations(title="Run a bash command", open_world_hint=settings.network),
    )
    editor = types.Tool(
        name=EDITOR,
        title="View, create or edit a file",
        description=(
            "View, create or edit files in the code-execution container. Commands: "
            "view (path; optional view_range [start, end], end -1 = end of file; a directory gives a listing), "
            "create (path, file_text; creates parent directories, overwrites an existing file), "
            "str_replace (path, old_str, new_str; old_str must occur exactly once). "
            "Relative paths resolve against /workspace. " + workspace + _limits(settings)
        ),
        input_schema=input_schema(EditorInput),
        output_schema=EDITOR_OUTPUT_SCHEMA,
        annotations=types.ToolAnnotations(title="View, create or edit a file", open_world_hint=False),
    )
    code = types.Tool(
        name=CODE,
        title="Run Python in a persistent interpreter",
        description=(
            "Run Python code in the container's persistent Python 3.11 interpreter (a REPL) and get its stdout, "
            "stderr and return code. Variables, imports and functions persist between calls (restart: true gives a "
            "fresh interpreter); top-level await works (asyncio.gather too); the value of a final bare expression is "
            "printed. A traceback is returned on stderr with a non-zero return_code. "
            + workspace
            + "The interpreter shares files with bash_code_execution, not variables. Each call gets a fresh, empty "
            "$OUTPUT_DIR (os.environ['OUTPUT_DIR']): files written at its top level are returned as output files. "
            f"Each cell may run {settings.code_cell_timeout:g} s of wall-clock time; a longer one is interrupted and "
            "its output says detection_timeout (the interpreter keeps its state). "
            + _limits(settings).replace(f"{settings.call_timeout:g} s per call, ", "")
        ),
        input_schema=input_schema(CodeInput),
        output_schema=CODE_OUTPUT_SCHEMA,
        annotations=types.ToolAnnotations(title="Run Python in a persistent interpreter", open_world_hint=settings.network),
    )
    by_name = {BASH: bash, EDITOR: editor, CODE: code}
    return [by_name[name] for name in ALL_TOOLS if name in settings.tools]


@dataclass
class AppState:
    settings: Settings
    backend: Backend
    store: FileStore
    http_limiter: CallRateLimiter | None = None
    """Paces HTTP principals' tool calls (None: unlimited)."""
    code_tools: CodeTools | None = None
    """The tools code_execution's code may call (programmatic tool calling); None: none."""


def create_backend(settings: Settings, store: FileStore) -> Backend:
    if settings.backend == "hosted":
        from .backends.hosted import HostedBackend

        return HostedBackend(settings, store)
    from .backends.docker import DockerBackend

    return DockerBackend(settings, store)


def principal_of(ctx: ServerRequestContext[Any, Any]) -> str:
    """``local`` over stdio; the authenticated principal (set by http_app's auth) over HTTP."""
    request = ctx.request
    state = getattr(request, "state", None)
    return getattr(state, "principal", None) or "local"


def session_key_of(ctx: ServerRequestContext[Any, Any], principal: str) -> str:
    """What one "session" (one container, created lazily) means on each transport.

    stdio / in-process: the server serves one client for its lifetime, so the process is the
    session. HTTP with an ``Mcp-Session-Id`` (handshake era): that session. Session-less HTTP
    (2026-07-28 requests carry no session): one default container per principal; clients reach
    others through ``container_id``.
    """
    if ctx.request is None:
        return "local:process"
    connection = getattr(ctx.session, "_connection", None)  # the SDK has no public accessor yet
    session_id = getattr(connection, "session_id", None)
    return f"{principal}:{session_id}" if session_id else f"{principal}:default"


def _fit(text: str, limit: int) -> str:
    """Keep the human-readable text within the size budget the result announces
    (``anthropic/maxResultSizeChars``): head and tail kept, the middle replaced by a marker."""
    if len(text) <= limit:
        return text
    marker = "\n[... {} characters omitted from this text; structuredContent has the full result ...]\n"
    keep = max(0, limit - len(marker.format(len(text))))
    head = keep // 2
    return text[:head] + marker.format(len(text) - keep) + text[len(text) - (keep - head):]


def _human_text(tool: str, block: Any, outcome: Outcome | None, error: CodeExecError | None) -> str:
    if error is not None:
        text = f"Error ({error.error_code}): {error.message}"
        if error.detail:
            text += f"\n\nOutput before the error:\n{error.detail}"
        return text
    data = block.model_dump(exclude_none=True)
    if data["type"] in ("bash_code_execution_result", "code_execution_result"):
        parts = []
        if data["stdout"]:
            parts.append(data["stdout"])
        if data["stderr"]:
            parts.append(f"[stderr]\n{data['stderr']}")
        parts.append(f"[exit code {data['return_code']}]")
        if outcome is not None and outcome.files:
            parts.append("[output files] " + ", ".join(f"{f.filename} ({f.file_id})" for f in outcome.files))
        return "\n".join(parts)
    if data["type"] == "text_editor_code_execution_view_result":
        if data["file_type"] != "text":
            return f"[{data['file_type']} file, {len(data['content'])} base64 characters]"
        return data["content"]
    if data["type"] == "text_editor_code_execution_create_result":
        return "File updated." if data["is_file_update"] else "File created."
    if data["type"] == "text_editor_code_execution_str_replace_result":
        return "\n".join(data.get("lines") or []) or "Replaced."
    return str(data)


def _downscale(data: bytes, max_bytes: int) -> tuple[bytes, str] | None:
    """Shrink an image until it fits ``max_bytes`` (clients reject big ones); None if impossible."""
    try:
        from PIL import Image
    except ImportError:
        return None
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB") if image.mode not in ("RGB", "L") else image.copy()
    for _ in range(8):
        image.thumbnail((max(1, image.width * 3 // 4), max(1, image.height * 3 // 4)))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
        if out.tell() <= max_bytes:
            return out.getvalue(), "image/jpeg"
    return None


async def _image_bytes(state: AppState, file_id: str, principal: str) -> bytes | None:
    """The stored bytes of an output image (fetched first where the backend keeps them remotely)."""
    fetch = getattr(state.backend, "fetch_file", None)
    try:
        if fetch is not None:
            await fetch(file_id, None if principal == "local" else principal)
        return await anyio.to_thread.run_sync(state.store.blob_path(file_id).read_bytes)
    except (CodeExecError, OSError) as exc:
        log.warning("output image %s not shown inline: %s", file_id, exc)
        return None


async def _file_contents(state: AppState, files: list[ProducedFile], principal: str) -> list[Any]:
    contents: list[Any] = []
    for f in files:
        data = None
        if f.mime_type in ("image/png", "image/jpeg", "image/gif", "image/webp"):
            data = await _image_bytes(state, f.file_id, principal)
        if data:
            mime = f.mime_type
            if len(data) > state.settings.max_image_bytes:
                shrunk = await anyio.to_thread.run_sync(_downscale, data, state.settings.max_image_bytes)
                data, mime = shrunk if shrunk else (b"", mime)
            if data:
                contents.append(types.ImageContent(type="image", data=base64.b64encode(data).decode(), mime_type=mime))
        contents.append(
            types.ResourceLink(
                type="resource_link", name=f.filename, uri=FILE_URI + f.file_id, mime_type=f.mime_type, size=f.size,
                description=f"Output file {f.filename} ({f.size} bytes)",
            )
        )
    return contents


async def call_tool(state: AppState, tool: str, arguments: dict[str, Any], ctx: CallContext) -> types.CallToolResult:
    """Run one tool call and shape the MCP result. Every CodeExecError becomes a hosted error block here."""
    outcome: Outcome | None = None
    error: CodeExecError | None = None
    try:
        if ctx.paced and state.http_limiter is not None:
            wait = state.http_limiter.admit(ctx.principal)
            if wait:
                raise TooManyRequests(
                    f"rate limit: {state.settings.http_calls_per_minute:g} tool calls a minute per client "
                    f"(bursts of {state.settings.http_call_burst}); retry in {wait:.1f} s"
                )
        request = validate_input(tool, arguments)
        if isinstance(request, BashInput):
            outcome = await state.backend.bash(request, ctx)
        elif isinstance(request, CodeInput):
            outcome = await state.backend.code(request, ctx, state.code_tools)
        else:
            outcome = await state.backend.editor(request, ctx)
        block = outcome.block
    except CodeExecError as exc:
        error = exc
        block = error_block(tool, exc)
        if exc.error_code == "unavailable" and not isinstance(exc, ContainerExpired):
            # The server's side failed (engine, container, agent): the operator needs the why.
            log.warning("%s call answered unavailable: %s", tool, exc.message)
    is_error = error is not None or block.type.endswith("_tool_result_error")
    text = _valid_unicode(_fit(_human_text(tool, block, outcome, error), state.settings.max_result_chars))
    content: list[Any] = [types.TextContent(type="text", text=text)]
    if outcome is not None and outcome.files:
        content += await _file_contents(state, outcome.files, ctx.principal)
    meta: dict[str, Any] = {"anthropic/maxResultSizeChars": state.settings.max_result_chars}
    container = outcome.container if outcome is not None else getattr(error, "container", None)
    if container is not None:
        meta["container"] = container.meta()
    if outcome is not None:
        meta.update(outcome.meta)
    return types.CallToolResult(
        content=content, structured_content=_valid_unicode(block.model_dump(exclude_none=True)), is_error=is_error, _meta=meta
    )


def create_server(
    settings: Settings, *, backend: Backend | None = None, store: FileStore | None = None,
    code_tools: CodeTools | None = None,
) -> Server[AppState]:
    """``code_tools``: functions code_execution's code may call (programmatic tool calling)."""
    @asynccontextmanager
    async def lifespan(_: Server[AppState]) -> AsyncIterator[AppState]:
        async with AsyncExitStack() as stack:
            file_store = store or await anyio.to_thread.run_sync(
                lambda: FileStore(settings.files_dir, settings.file_retention_days)
            )
            the_backend = backend or create_backend(settings, file_store)
            if hasattr(the_backend, "__aenter__"):
                await stack.enter_async_context(the_backend)  # type: ignore[arg-type]
            else:
                await the_backend.start()
                stack.push_async_callback(the_backend.aclose)
            limiter = CallRateLimiter(settings.http_calls_per_minute, settings.http_call_burst) if settings.http_calls_per_minute else None
            yield AppState(settings, the_backend, file_store, limiter, code_tools)

    tools = tool_definitions(settings)

    async def list_tools(ctx: ServerRequestContext[AppState], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def handle_call_tool(ctx: ServerRequestContext[AppState], params: types.CallToolRequestParams) -> types.CallToolResult:
        if params.name not in settings.tools:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {_valid_unicode(params.name)}")
        principal = principal_of(ctx)

        async def progress(elapsed: float, message: str) -> None:
            # A no-op unless the caller asked for progress (token on JSON-RPC, callback in-process).
            await ctx.session.report_progress(round(elapsed, 1), None, message or f"running for {elapsed:.0f} s")

        call_ctx = CallContext(principal=principal, session_key=session_key_of(ctx, principal), progress=progress,
                               paced=ctx.request is not None and principal != "local")
        return await call_tool(ctx.lifespan_context, params.name, params.arguments or {}, call_ctx)

    async def list_resources(ctx: ServerRequestContext[AppState], params: Any) -> types.ListResourcesResult:
        state = ctx.lifespan_context
        records = await anyio.to_thread.run_sync(lambda: state.store.list(principal=_owner_filter(ctx)))
        return types.ListResourcesResult(
            resources=[
                types.Resource(name=r.filename, uri=FILE_URI + r.id, mime_type=r.mime_type, size=r.size,
                               description=f"{r.origin} file from {r.container_id or 'upload'}, {r.created_at.isoformat()}")
                for r in records
            ]
        )

    async def list_templates(ctx: ServerRequestContext[AppState], params: Any) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(name="file", uri_template=FILE_URI + "{file_id}",
                                       description="A file produced by a tool call or uploaded, by file id.")
            ]
        )

    async def read_resource(ctx: ServerRequestContext[AppState], params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        state = ctx.lifespan_context
        uri = str(params.uri)
        if not uri.startswith(FILE_URI):
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown resource: {uri}")
        file_id = uri[len(FILE_URI):]
        fetch = getattr(state.backend, "fetch_file", None)
        try:
            if fetch is not None:
                await fetch(file_id, _owner_filter(ctx))
            record = await anyio.to_thread.run_sync(state.store.get, file_id, _owner_filter(ctx))
            data = await anyio.to_thread.run_sync(state.store.blob_path(record.id).read_bytes)
        except (StoredFileNotFound, CodeExecError):
            raise MCPError(code=types.INVALID_PARAMS, message=f"Resource not found: {uri}") from None
        if record.mime_type.startswith("text/") or record.mime_type in ("application/json", "application/xml"):
            try:
                text = data.decode("utf-8")
                return types.ReadResourceResult(
                    contents=[types.TextResourceContents(uri=uri, text=text, mime_type=record.mime_type)]
                )
            except UnicodeDecodeError:
                pass
        return types.ReadResourceResult(
            contents=[types.BlobResourceContents(uri=uri, blob=base64.b64encode(data).decode(), mime_type=record.mime_type)]
        )

    return Server(
        "mcp-codeexec",
        version=__version__,
        title="Code execution (bash, text editor, Python REPL) in local sandboxes",
        instructions=(
            "bash_code_execution, text_editor_code_execution and code_execution (a persistent Python interpreter) "
            "behave like Anthropic's hosted code execution tool. Files persist in /workspace; write files to "
            "$OUTPUT_DIR to hand them back to the user."
        ),
        lifespan=lifespan,
        on_list_tools=list_tools,
        on_call_tool=handle_call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
    )


def _owner_filter(ctx: ServerRequestContext[AppState]) -> str | None:
    principal = principal_of(ctx)
    return None if principal == "local" else principal
