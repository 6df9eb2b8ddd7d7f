"""The MCP surface: two tools with the hosted inputs and results, and the file store as resources.

Built on the low-level ``mcp`` server so that ``outputSchema``, ``structuredContent``, ``isError``
and ``_meta`` are exactly what the hosted tool's contract says. Imports neither docker nor
anthropic: the backend does the work.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import logging
import re
import weakref
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.shared.exceptions import MCPError

from . import __version__
from .backends.base import Backend, CallContext, CodeTools, Outcome, ProducedFile
from .config import Settings
from .database import open_file_store, open_leader, open_rate_limiter, open_session_map
from .errors import CodeExecError, ContainerExpired, TooManyRequests, Unavailable, error_block
from .files import FileStore, StoredFileNotFound, guess_mime, is_file_id
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
from .shutdown import Shutdown
from .skills import Catalog, Skill, SkillInvalid, catalog_for
from . import mount_choice, services, snapshots
from .tools.listing import render_listing
from .tools.registry import ToolRegistry, registry_from_settings

log = logging.getLogger(__name__)

FILE_URI = "codeexec://files/"
RESOURCE_PAGE = 100
"""Files per ``resources/list`` page."""
SKILL_URI = "codeexec://skills/"
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
    network = "network access enabled" if settings.network is True else "no network access (no internet, no DNS)"
    if settings.network == "allowlist":
        network = "no network except HTTPS to " + ", ".join(settings.allow_hosts) + " through a proxy (no DNS)"
    return (
        f"Limits: {settings.cpus:g} CPU, {settings.memory_bytes / 2**30:g} GiB RAM, "
        f"{settings.disk_bytes / 2**30:g} GiB workspace disk, {settings.call_timeout:g} s per call, {network}."
    )


def _skills_note(settings: Settings, extra: list[Skill] | None = None) -> str:
    """Level-1 disclosure of the skills every sandbox has: name, path and description, nothing more."""
    skills = list(catalog_for(settings).folder) + list(extra or [])
    if not skills:
        return ""
    uploaded = {id(s) for s in extra or []}
    return " Skills in /skills (read the SKILL.md before using one): " + "; ".join(
        f"{s.name} ({s.path}/SKILL.md{', uploaded: in containers created after the upload' if id(s) in uploaded else ''}): "
        f"{s.description}" for s in skills
    ) + "."


def _functions_note(code_tools: CodeTools | None) -> str:
    """Programmatic tool calling: the functions code_execution's code may call, one line each."""
    if code_tools is None or not code_tools.functions:
        return ""
    return (
        "\n\nFunctions the code may call (async, one dict argument, a string result; `await name({...})`, "
        "`asyncio.gather` for several; `list_tools()` returns their full schemas):\n" + render_listing(code_tools.functions)
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
            + _skills_note(settings)
        ),
        input_schema=input_schema(BashInput),
        output_schema=BASH_OUTPUT_SCHEMA,
        annotations=types.ToolAnnotations(title="Run a bash command", open_world_hint=bool(settings.network)),
    )
    editor = types.Tool(
        name=EDITOR,
        title="View, create or edit a file",
        description=(
            "View, create or edit files in the code-execution container. Commands: "
            "view (path; optional view_range [start, end], end -1 = end of file; a directory gives a listing), "
            "create (path, file_text; creates parent directories, overwrites an existing file), "
            "str_replace (path, old_str, new_str; old_str must occur exactly once). "
            "Relative paths resolve against /workspace. " + workspace + _limits(settings) + _skills_note(settings)
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
            + _skills_note(settings)
        ),
        input_schema=input_schema(CodeInput),
        output_schema=CODE_OUTPUT_SCHEMA,
        annotations=types.ToolAnnotations(title="Run Python in a persistent interpreter", open_world_hint=bool(settings.network)),
    )
    by_name = {BASH: bash, EDITOR: editor, CODE: code}
    published = [by_name[name] for name in ALL_TOOLS if name in settings.tools]
    if settings.services:  # not a hosted tool: opt-in (services.py)
        published.append(services.tool_definition(settings))
    if settings.snapshots:  # not a hosted tool: opt-in (snapshots.py)
        published.append(snapshots.tool_definition(settings))
    return published


@dataclass
class AppState:
    settings: Settings
    backend: Backend
    store: FileStore
    http_limiter: CallRateLimiter | None = None
    """Paces HTTP principals' tool calls (None: unlimited)."""
    code_tools: CodeTools | None = None
    """Tools every principal's code_execution code may call (tests, embedders); None: none."""
    registry: ToolRegistry | None = None
    """Upstream MCP servers' tools (``tools_config``), per principal."""

    def tools_for(self, principal: str) -> CodeTools | None:
        """What ``principal``'s code may call: its upstream tools, else the fixed set."""
        found = self.registry.for_principal(principal) if self.registry is not None else None
        return found or self.code_tools


def create_backend(settings: Settings, store: FileStore) -> Backend:
    if settings.backend == "hosted":
        from .backends.hosted import HostedBackend

        return HostedBackend(settings, store)
    from .backends.sandbox import SandboxBackend

    return SandboxBackend(settings, store)


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


BUDGET_META = "anthropic/maxResultSizeChars"
_SPILL_MARKER = re.compile(r"\n\[\.\.\. (\d+) bytes omitted([^\n\]]*) \.\.\.\]\n")
_FITTED_FIELDS = ("stdout", "stderr", "content", "error_message")


def _js_length(value: Any) -> int:
    """The length Claude Code measures: JSON.stringify of structuredContent, in UTF-16 code units."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return len(text) if text.isascii() else len(text.encode("utf-16-le", "surrogatepass")) // 2


def _cut_middle(text: str, chars: int) -> str:
    """``text`` with about ``chars`` fewer characters, cut around its middle. An agent truncation
    marker stays (with its spill path) and its byte count grows by what was cut; else one is added."""
    found = _SPILL_MARKER.search(text)
    if found is None:
        keep = max(0, len(text) - chars)
        head, tail = text[: keep // 2], text[len(text) - (keep - keep // 2):] if keep else ""
        cut = text[len(head): len(text) - len(tail)]
        return f"{head}\n[... {len(cut.encode('utf-8', 'surrogatepass'))} bytes omitted from this result ...]\n{tail}"
    head, tail = text[: found.start()], text[found.end():]
    from_head = min(len(head), (chars + 1) // 2 + max(0, chars // 2 - len(tail)))
    from_tail = min(len(tail), chars - from_head)
    cut = head[len(head) - from_head:] + tail[:from_tail]
    omitted = int(found.group(1)) + len(cut.encode("utf-8", "surrogatepass"))
    return f"{head[: len(head) - from_head]}\n[... {omitted} bytes omitted{found.group(2)} ...]\n{tail[from_tail:]}"


def _fit_view(block: dict[str, Any], budget: int) -> dict[str, Any]:
    """A text view whose JSON is over budget (escaping: a NUL costs six characters) shows the lines
    that fit, or the start of its one line, as the agent does for files over the view limit."""
    content: str = block["content"]

    def fits(text: str) -> bool:
        return _js_length({**block, "content": text}) <= budget

    if fits(content):
        return block
    lines = content.splitlines(keepends=True)
    lo, hi = 0, len(lines)  # the most whole lines that fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits("".join(lines[:mid])) else (lo, mid - 1)
    if lo:
        shown = "".join(lines[:lo])
    else:
        first = lines[0] if lines else ""
        lo_c, hi_c = 0, len(first)
        while lo_c < hi_c:
            mid = (lo_c + hi_c + 1) // 2
            lo_c, hi_c = (mid, hi_c) if fits(first[:mid]) else (lo_c, mid - 1)
        shown = first[:lo_c]
    fitted = {**block, "content": shown}
    if "num_lines" in block:
        fitted["num_lines"] = max(1, len(shown.splitlines())) if shown else 0
    return fitted


def _fit_block(block: dict[str, Any], budget: int) -> tuple[dict[str, Any], int]:
    """Keep the structuredContent JSON within the announced budget: Claude Code shows the model that
    JSON (not the text content), and replaces a larger one with a 2 KB preview. Command output
    shrinks in its middle, so head, tail, the marker and the spill path stay; a view shows the lines
    that fit. Returns the block and its JSON length (``_js_length``)."""
    if block.get("file_type") in ("image", "pdf"):
        return block, _js_length(block)  # the file itself: shown as an image / document, not cut
    if block.get("file_type") == "text":
        fitted = _fit_view(block, budget)
        return fitted, _js_length(fitted)
    for _ in range(8):
        length = _js_length(block)
        excess = length - budget
        if excess <= 0:
            return block, length
        sizes = {k: _js_length(v) for k in _FITTED_FIELDS if isinstance(v := block.get(k), str) and v}
        if not sizes:
            return block, length
        total = sum(sizes.values())
        for field, size in sizes.items():  # each field gives its share, so none is emptied for another
            text = block[field]
            share = -(-(excess + 128) * size // total)
            chars = min(len(text), -(-share * len(text) // size))  # escaping makes a char cost more than one
            block = {**block, field: _cut_middle(text, chars)}
    return block, _js_length(block)


def _with_result_budget(tools: list[types.Tool], settings: Settings) -> list[types.Tool]:
    """Announce the result budget on each tool: Claude Code takes it from the tool definition and
    then keeps results up to it whole, instead of cutting at 50,000 characters (or 25,000 tokens)."""
    return [t.model_copy(update={"meta": {**(t.meta or {}), BUDGET_META: settings.max_result_chars}}) for t in tools]


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


_IMAGE_MIMES = ("image/png", "image/jpeg", "image/gif", "image/webp")


async def _media_view(state: AppState, path: str, block: Any, container: Any) -> tuple[str, list[Any]]:
    """An image or PDF view: a text that says what the file is (never its base64, which clients
    would show the model as text), and the file itself as MCP content: an image, or a PDF as an
    embedded resource (clients that take documents read it; Claude Code saves it for its Read tool)."""
    data = base64.b64decode(block.content)
    mime = guess_mime(path, data[:64])
    contents: list[Any] = []
    if block.file_type == "image" and mime in _IMAGE_MIMES:
        shown, shown_mime = data, mime
        if len(data) > state.settings.max_image_bytes:
            shrunk = await anyio.to_thread.run_sync(_downscale, data, state.settings.max_image_bytes)
            shown, shown_mime = shrunk if shrunk else (b"", mime)
        if shown:
            contents.append(types.ImageContent(type="image", data=base64.b64encode(shown).decode(), mime_type=shown_mime))
    elif block.file_type == "pdf":
        where = f"codeexec://containers/{container.id if container else 'unknown'}/{path.lstrip('/')}"
        contents.append(types.EmbeddedResource(
            type="resource", resource=types.BlobResourceContents(uri=where, blob=block.content, mime_type="application/pdf")
        ))
    attached = "attached below" if contents else "not attached (too large to show)"
    text = (f"{path}: {block.file_type} file, {mime}, {len(data)} bytes; {attached}. "
            "structuredContent holds the hosted view block with the file as base64.")
    return text, contents


async def call_tool(state: AppState, tool: str, arguments: dict[str, Any], ctx: CallContext) -> types.CallToolResult:
    """Run one tool call and shape the MCP result. Every CodeExecError becomes a hosted error block here."""
    outcome: Outcome | None = None
    error: CodeExecError | None = None
    request: BashInput | EditorInput | None = None
    try:
        if ctx.paced and state.http_limiter is not None:
            limiter = state.http_limiter
            wait = (await anyio.to_thread.run_sync(limiter.admit, ctx.principal) if getattr(limiter, "blocking", False)
                    else limiter.admit(ctx.principal))
            if wait:
                raise TooManyRequests(
                    f"rate limit: {state.settings.http_calls_per_minute:g} tool calls a minute per client "
                    f"(bursts of {state.settings.http_call_burst}); retry in {wait:.1f} s"
                )
        request = validate_input(tool, arguments)
        if isinstance(request, BashInput):
            outcome = await state.backend.bash(request, ctx)
        elif isinstance(request, CodeInput):
            outcome = await state.backend.code(request, ctx, state.tools_for(ctx.principal))
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
    media: list[Any] = []
    if isinstance(request, EditorInput) and outcome is not None and getattr(block, "file_type", "text") in ("image", "pdf"):
        text, media = await _media_view(state, request.path, block, outcome.container)
    else:
        text = _human_text(tool, block, outcome, error)
    text = _valid_unicode(_fit(text, state.settings.max_result_chars))
    content: list[Any] = [types.TextContent(type="text", text=text), *media]
    if outcome is not None and outcome.files:
        content += await _file_contents(state, outcome.files, ctx.principal)
    fitted, length = _fit_block(block.model_dump(exclude_none=True), state.settings.max_result_chars)
    structured = _valid_unicode(fitted)  # a surrogate and its U+FFFD are one UTF-16 unit each: same length
    # Honest per result: a media view carries its file beyond the text budget.
    meta: dict[str, Any] = {BUDGET_META: max(state.settings.max_result_chars, len(text), length)}
    container = outcome.container if outcome is not None else getattr(error, "container", None)
    if container is not None:
        meta["container"] = container.meta()
    if outcome is not None:
        meta.update(outcome.meta)
    return types.CallToolResult(
        content=content, structured_content=structured, is_error=is_error, _meta=meta
    )


async def answer_call(state: AppState, shutdown: Shutdown, tool: str, arguments: dict[str, Any],
                      ctx: CallContext) -> types.CallToolResult:
    """One hosted tool's call, counted by the shutdown: the SDK's handler and the direct stdio path
    (direct_calls.py) both answer through here."""
    if not shutdown.closing:
        with shutdown.call():
            return await call_tool(state, tool, arguments, ctx)
    # Stopped by the shutdown (its command was killed in the sandbox), or arrived during it.
    refusing = dataclasses.replace(state, backend=_Refusing(shutdown.reason or "the server is shutting down"))  # type: ignore[arg-type]
    return await call_tool(refusing, tool, arguments, ctx)


class _Refusing:
    """Stands in for the backend once the server is shutting down: every call is answered
    ``unavailable`` with the reason, shaped like any other result by ``call_tool``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def bash(self, request: Any, ctx: CallContext) -> Outcome:
        raise Unavailable(f"{self.reason}; retry the call when it is back")

    editor = bash

    async def code(self, request: Any, ctx: CallContext, tools: CodeTools | None = None) -> Outcome:
        return await self.bash(request, ctx)


class CodeExecServer(Server[AppState]):
    """Announces ``tools.listChanged`` on handshake-era connections too: an upstream's new tools
    change code_execution's description (at 2026-07-28 the listen handler's presence says it).

    While its lifespan runs, ``app_state`` and ``shutdown`` let a transport answer the hosted
    tools' calls itself (direct_calls.py); ``direct_tools`` names the tools it may answer."""

    app_state: AppState | None = None
    shutdown: Shutdown | None = None
    direct_tools: frozenset[str] = frozenset()

    def create_initialization_options(self, notification_options: NotificationOptions | None = None,
                                      *args: Any, **kwargs: Any) -> Any:
        return super().create_initialization_options(notification_options or NotificationOptions(tools_changed=True),
                                                     *args, **kwargs)


def create_server(
    settings: Settings, *, backend: Backend | None = None, store: FileStore | None = None,
    code_tools: CodeTools | None = None, shutdown: Shutdown | None = None,
) -> Server[AppState]:
    """``code_tools``: functions every caller's code_execution code may call (programmatic tool
    calling), besides the upstream MCP servers of ``tools_config``."""
    shutdown = shutdown or Shutdown()

    try:
        catalog = catalog_for(settings)  # validated here: a server with a bad SKILL.md does not start
    except SkillInvalid as exc:
        raise SystemExit(f"mcp-codeexec: refusing to start: invalid skill: {exc}") from None

    # Who hears that the tool list changed: 2026-07-28 clients through `subscriptions/listen`,
    # older ones by a notification on each connection that listed the tools.
    bus = InMemorySubscriptionBus()
    listeners: weakref.WeakSet[Any] = weakref.WeakSet()

    async def announce_tools_changed() -> None:
        await bus.publish(ToolsListChanged())
        for connection in list(listeners):
            with anyio.move_on_after(1), contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                await connection.send_tool_list_changed()

    @asynccontextmanager
    async def lifespan(server: Server[AppState]) -> AsyncIterator[AppState]:
        async with AsyncExitStack() as stack:
            file_store = store or await anyio.to_thread.run_sync(
                lambda: open_file_store(settings)
            )
            the_backend = backend or create_backend(settings, file_store)
            leader = await anyio.to_thread.run_sync(open_leader, settings)  # None: one server, it leads
            if leader is not None:
                stack.push_async_callback(anyio.to_thread.run_sync, leader.stop)
                if hasattr(the_backend, "is_leader"):
                    the_backend.is_leader = leader.is_leader
                if hasattr(the_backend, "session_map"):
                    the_backend.session_map = await anyio.to_thread.run_sync(open_session_map, settings)
            if hasattr(the_backend, "__aenter__"):
                await stack.enter_async_context(the_backend)  # type: ignore[arg-type]
            else:
                await the_backend.start()
                stack.push_async_callback(the_backend.aclose)
            limiter = await anyio.to_thread.run_sync(open_rate_limiter, settings)
            registry = None
            if settings.tools_config is not None:
                registry = await stack.enter_async_context(registry_from_settings(settings))
                registry.on_change(announce_tools_changed)
            state = AppState(settings, the_backend, file_store, limiter, code_tools, registry=registry)
            server.app_state = state  # type: ignore[attr-defined]
            try:
                yield state
            finally:
                server.app_state = None  # type: ignore[attr-defined]

    tools = _with_result_budget(tool_definitions(settings), settings)

    async def list_tools(ctx: ServerRequestContext[AppState], params: Any) -> types.ListToolsResult:
        principal = principal_of(ctx)
        # ctx.session is per request; the connection it wraps (mcp 2.3 keeps it as ``_connection``,
        # no public accessor on this context) lives as long as the client and sends on its own channel.
        with contextlib.suppress(TypeError):  # a type without weak references hears nothing
            listeners.add(getattr(ctx.session, "_connection", ctx.session))
        uploaded = await anyio.to_thread.run_sync(catalog.uploaded, principal)
        code_tools = ctx.lifespan_context.tools_for(principal)
        if not uploaded and code_tools is None:
            return types.ListToolsResult(tools=tools)
        # The caller's uploaded skills are in its new sandboxes too: name them like the folder ones;
        # the functions its code may call are listed on code_execution (one line each).
        note = _skills_note(settings, uploaded)
        base = _skills_note(settings)
        functions = _functions_note(code_tools)
        listed = []
        for t in tools:
            if t.name in (BASH, EDITOR, CODE):
                description = (t.description or "").removesuffix(base) + note + (functions if t.name == CODE else "")
                t = t.model_copy(update={"description": description})
            listed.append(t)
        return types.ListToolsResult(tools=listed)

    async def handle_call_tool(ctx: ServerRequestContext[AppState], params: types.CallToolRequestParams) -> types.CallToolResult:
        extension = {services.SERVICES: settings.services and services.call,
                     snapshots.SNAPSHOTS: settings.snapshots and snapshots.call}.get(params.name)
        if extension:  # the opt-in, non-hosted tools
            principal = principal_of(ctx)
            ext_ctx = CallContext(principal=principal, session_key=session_key_of(ctx, principal),
                                  mounts=mount_choice.raw_selection(params.meta))
            if shutdown.closing:
                return services.error_result(Unavailable(f"{shutdown.reason or 'the server is shutting down'}; retry the call when it is back"))
            with shutdown.call():
                return await extension(ctx.lifespan_context.backend, params.arguments or {}, ext_ctx, settings)
        if params.name not in settings.tools:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {_valid_unicode(params.name)}")
        principal = principal_of(ctx)

        async def progress(elapsed: float, message: str) -> None:
            # A no-op unless the caller asked for progress (token on JSON-RPC, callback in-process).
            await ctx.session.report_progress(round(elapsed, 1), None, message or f"running for {elapsed:.0f} s")

        call_ctx = CallContext(principal=principal, session_key=session_key_of(ctx, principal), progress=progress,
                               paced=ctx.request is not None and principal != "local",
                               mounts=mount_choice.raw_selection(params.meta))
        return await answer_call(ctx.lifespan_context, shutdown, params.name, params.arguments or {}, call_ctx)

    async def list_resources(ctx: ServerRequestContext[AppState], params: Any) -> types.ListResourcesResult:
        # Paged, newest first: the store holds every file of every earlier session (30 days of them).
        # The cursor is the last file id of the previous page.
        state = ctx.lifespan_context
        cursor = getattr(params, "cursor", None) or None
        if cursor is not None and not is_file_id(cursor):
            raise MCPError(code=types.INVALID_PARAMS, message=f"Invalid cursor: {_valid_unicode(cursor)}")
        try:
            records = await anyio.to_thread.run_sync(
                lambda: state.store.list(principal=_owner_filter(ctx), limit=RESOURCE_PAGE + 1, after_id=cursor)
            )
        except StoredFileNotFound:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Invalid cursor: {cursor}") from None
        page = records[:RESOURCE_PAGE]
        skill_resources = [] if cursor else await anyio.to_thread.run_sync(_skill_resources, catalog, principal_of(ctx))
        return types.ListResourcesResult(
            resources=skill_resources + [
                types.Resource(name=r.filename, uri=FILE_URI + r.id, mime_type=r.mime_type, size=r.size,
                               description=f"{r.origin} file from {r.container_id or 'upload'}, {r.created_at.isoformat()}")
                for r in page
            ],
            next_cursor=page[-1].id if len(records) > RESOURCE_PAGE else None,
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
        if uri.startswith(SKILL_URI):
            return await anyio.to_thread.run_sync(_read_skill_md, catalog, uri, principal_of(ctx))
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

    server = CodeExecServer(
        "mcp-codeexec",
        version=__version__,
        title="Code execution (bash, text editor, Python REPL) in local sandboxes",
        instructions=(
            "bash_code_execution, text_editor_code_execution and code_execution (a persistent Python interpreter) "
            "behave like Anthropic's hosted code execution tool. Files persist in /workspace; write files to "
            "$OUTPUT_DIR to hand them back to the user."
            + ("\n\n" + catalog.describe() if catalog.folder else "")
        ),
        lifespan=lifespan,
        on_list_tools=list_tools,
        on_call_tool=handle_call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_subscriptions_listen=ListenHandler(bus),
    )
    server.shutdown = shutdown
    if settings.direct_calls:
        server.direct_tools = frozenset(t for t in settings.tools if t in (BASH, EDITOR, CODE))
    return server


def _owner_filter(ctx: ServerRequestContext[AppState]) -> str | None:
    principal = principal_of(ctx)
    return None if principal == "local" else principal


def _skill_uri(skill: Skill) -> str:
    # Folder skills by name; uploaded ones by id (two principals may upload the same name).
    return f"{SKILL_URI}{skill.skill_id if skill.origin == 'upload' else skill.name}/SKILL.md"


def _skill_resources(catalog: Catalog, principal: str) -> list[types.Resource]:
    """Each available skill's SKILL.md (the only part of a skill offered as context)."""
    return [
        types.Resource(name=f"{s.name}/SKILL.md", uri=_skill_uri(s), mime_type="text/markdown",
                       description=f"Skill {s.name} ({s.path}/ in the sandbox): {s.description}")
        for s in list(catalog.folder) + catalog.uploaded(principal)
    ]


def _read_skill_md(catalog: Catalog, uri: str, principal: str) -> types.ReadResourceResult:
    for skill in list(catalog.folder) + catalog.uploaded(principal):
        if _skill_uri(skill) == uri:
            text = next(data for path, _, data in skill.load() if path == "SKILL.md").decode("utf-8")
            return types.ReadResourceResult(contents=[types.TextResourceContents(uri=uri, text=text, mime_type="text/markdown")])
    raise MCPError(code=types.INVALID_PARAMS, message=f"Resource not found: {uri}")
