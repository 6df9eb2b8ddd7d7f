"""The hosted backend: each call is executed by Anthropic's hosted code-execution tool.

This module is the only importer of ``anthropic`` for execution. The hosted tool is reachable only
through the model, so one call travels as one beta Messages request::

    tools=[{"type": "code_execution_20250825", "name": "code_execution"}], tool_choice={"type": "any"},
    container=<the session's hosted container, once known>, a minimal instruction carrying the input

and the answer is read back from the response: the first ``server_tool_use`` block must name the
requested sub-tool with exactly the requested input, and the ``content`` of its
``*_tool_result`` block becomes our result block unchanged. ``pause_turn`` is continued by sending
the assistant content back (a bounded number of times).

Decisions:

* **Forcing the tool.** ``tool_choice={"type": "any"}``: with ``code_execution`` the only tool,
  "any" means "call that tool", and it is the form the API is known to accept alongside server
  tools. (``{"type": "tool", "name": "code_execution"}`` names the parent tool, not the
  ``bash_code_execution`` / ``text_editor_code_execution`` sub-tool, so it forces no more.)
* **A different input is an error, never a substitution.** If the model's ``server_tool_use``
  names another sub-tool or carries another input (keys whose value is ``null`` are treated as
  absent; nothing else is normalised), the call fails with
  ``Unavailable("hosted model sent a different input: ...")``. The hosted tool may already have run
  the model's version; the message says so, and the container it ran in is still recorded for the
  session. Tool calls the model makes *after* the matched one are reported in
  ``_meta.hosted.extra_tool_calls``.
* **Extensions the hosted tool lacks.** ``restart`` on bash is refused (``invalid_tool_input``);
  ``view_range`` is forwarded as part of the input.
* **Result shape.** The hosted ``content`` object is validated into our ``schemas`` models, which
  forbid extra fields. A field the hosted API sends that the SDK's class does not define is dropped
  and named in ``_meta.hosted.dropped_fields``. An error code outside the SDK's literals becomes
  the nearest one (``string_not_found`` → ``invalid_tool_input``, others → ``unavailable``) with the
  original in ``_meta.hosted.original_error_code``; ``container_expired`` raises ``ContainerExpired``.
* **Errors** are translated in one place, ``map_api_error``. 429 → ``TooManyRequests``; 5xx, 529 and
  connection failures → ``Unavailable``; both only after ``hosted_max_retries`` retries with
  exponential backoff (``retry-after`` honoured, capped). 401/403 → ``Unavailable`` naming
  ``ANTHROPIC_API_KEY``. A 4xx that says the container expired or does not exist →
  ``ContainerExpired`` (and the session forgets it, so its next call gets a fresh container).
  A request that timed out is not retried: the hosted tool may already be running it.
* **Files.** Output ``file_id``s are the hosted Files API ids and stay our ids. Their metadata is
  read right away (filename, size, type), their bytes only on demand: ``fetch_file`` downloads and
  caches them in the local store. Uploads (``attach_file``) go to the hosted Files API and are
  referenced by ``container_upload`` blocks in the next request for that container.
"""

from __future__ import annotations

import inspect
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Self, TypeVar

import anthropic
import anyio
import anyio.to_thread
from pydantic import BaseModel, ValidationError

from ..config import Settings
from ..errors import CodeExecError, ContainerExpired, FileNotFound, InvalidToolInput, TooManyRequests, Unavailable
from ..schemas import (
    BashError,
    BashInput,
    BashResult,
    CodeError,
    CodeInput,
    CodeResult,
    CreateResult,
    EditorError,
    EditorInput,
    ResultBlock,
    StrReplaceResult,
    ViewResult,
)
from .base import CallContext, CodeTools, ContainerInfo, Outcome, ProducedFile

log = logging.getLogger(__name__)

T = TypeVar("T")

BASH = "bash_code_execution"
EDITOR = "text_editor_code_execution"
PARENT_TOOL = "code_execution"
CODE = "code_execution"
"""The REPL sub-tool of ``code_execution_20260120`` / ``20260521``: the same name as the parent tool."""
FILES_BETA = "files-api-2025-04-14"
API_KEY_ENV = "ANTHROPIC_API_KEY"
INPUT_DIR = "$INPUT_DIR"
"""Where ``container_upload`` files appear in the hosted container (its input directory)."""

TOOL_CHOICE: dict[str, Any] = {"type": "any"}

SYSTEM_PROMPT = (
    "You are a relay between a program and the code execution tool. The user message holds one "
    "tool call as JSON. Make exactly that call, once: the named tool with exactly the given input, "
    "every string byte for byte (do not fix, reformat, shorten, complete or explain anything). "
    "Make no other tool call. When the result arrives, reply with the single word: done."
)

_RESULT_MODELS: dict[str, dict[str, type[BaseModel]]] = {
    BASH: {
        "bash_code_execution_result": BashResult,
        "bash_code_execution_tool_result_error": BashError,
    },
    EDITOR: {
        "text_editor_code_execution_view_result": ViewResult,
        "text_editor_code_execution_create_result": CreateResult,
        "text_editor_code_execution_str_replace_result": StrReplaceResult,
        "text_editor_code_execution_tool_result_error": EditorError,
    },
    CODE: {
        "code_execution_result": CodeResult,
        "code_execution_tool_result_error": CodeError,
    },
}
_ERROR_CODES: dict[str, frozenset[str]] = {
    BASH: frozenset(
        {"invalid_tool_input", "unavailable", "too_many_requests", "execution_time_exceeded", "output_file_too_large"}
    ),
    EDITOR: frozenset(
        {"invalid_tool_input", "unavailable", "too_many_requests", "execution_time_exceeded", "file_not_found"}
    ),
    CODE: frozenset({"invalid_tool_input", "unavailable", "too_many_requests", "execution_time_exceeded"}),
}
_CAMEL = {
    "numLines": "num_lines",
    "startLine": "start_line",
    "totalLines": "total_lines",
    "oldStart": "old_start",
    "oldLines": "old_lines",
    "newStart": "new_start",
    "newLines": "new_lines",
    "isFileUpdate": "is_file_update",
    "fileType": "file_type",
}
_EXPIRED_CONTAINER = re.compile(
    r"container(?!_upload).{0,120}?(expired|not found|does not exist|doesn't exist|no longer|unknown|invalid|gone)"
    r"|(expired|unknown|invalid)\s+container",
    re.IGNORECASE | re.DOTALL,
)
"""A 4xx message about the container the request named (e.g. "Container container_... has expired",
"container_expired: ...", "container not found")."""


def beta_for(tool_version: str) -> str:
    """The ``anthropic-beta`` value of a tool version: ``code_execution_20250825`` →
    ``code-execution-2025-08-25``."""
    m = re.fullmatch(r"code_execution_(\d{4})(\d{2})(\d{2})", tool_version)
    if not m:
        raise ValueError(f"not a code execution tool version: {tool_version!r}")
    return "code-execution-{}-{}-{}".format(*m.groups())


def _now() -> datetime:
    return datetime.now(UTC)


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)  # 3.11 reads "Z"
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _strip_nulls(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if v is not None}


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- errors ----------------------------------------------------------------------------------------


def map_api_error(
    exc: BaseException, *, container_id: str | None = None, file_id: str | None = None, what: str = "request"
) -> CodeExecError:
    """The one place where an ``anthropic`` SDK failure becomes one of ours.

    ``container_id``: the container the request named (a 4xx saying it expired or does not exist
    → ``ContainerExpired``); ``file_id``: the file a Files API request named (404 → ``FileNotFound``).
    """
    if isinstance(exc, CodeExecError):
        return exc
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        kind = exc.type or ""
        detail = exc.api_message or exc.message
        rid = f" (request-id {exc.request_id})" if exc.request_id else ""
        if file_id is not None and status in (404, 410):
            return FileNotFound(f"file not found on the hosted Files API: {file_id} ({detail})")
        if status == 429 or kind == "rate_limit_error":
            return TooManyRequests(f"the hosted API is rate limiting this key (HTTP 429): {detail}{rid}")
        if status in (401, 403) or kind in ("authentication_error", "permission_error"):
            return Unavailable(
                f"the hosted API rejected the credentials (HTTP {status}: {detail}){rid}; check {API_KEY_ENV}"
            )
        if (
            container_id
            and 400 <= status < 500
            and ("container" in (exc.error_code or "") or _EXPIRED_CONTAINER.search(detail or ""))
        ):
            return ContainerExpired(container_id, f"the hosted API says: {detail}")
        if status == 529 or kind == "overloaded_error":
            return Unavailable(f"the hosted API is overloaded (HTTP {status}): {detail}{rid}")
        if status >= 500:
            return Unavailable(f"the hosted API failed (HTTP {status} {kind}): {detail}{rid}")
        return Unavailable(f"the hosted API refused the {what} (HTTP {status} {kind}): {detail}{rid}")
    if isinstance(exc, anthropic.APITimeoutError):
        return Unavailable(f"the hosted API did not answer the {what} in time (not retried: it may still run)")
    if isinstance(exc, anthropic.APIConnectionError):
        return Unavailable(f"cannot reach the hosted API: {exc.message}")
    if isinstance(exc, anthropic.AnthropicError):
        return Unavailable(f"hosted API client error: {exc}")
    return Unavailable(f"hosted backend failure: {type(exc).__name__}: {exc}")


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, anthropic.APITimeoutError):
        return False
    if isinstance(exc, anthropic.APIConnectionError):
        return True
    if isinstance(exc, anthropic.APIStatusError):
        should = exc.response.headers.get("x-should-retry")
        if should in ("true", "false"):
            return should == "true"
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return False


def _retry_after(exc: BaseException) -> float | None:
    if not isinstance(exc, anthropic.APIStatusError):
        return None
    headers = exc.response.headers
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    if (value := headers.get("retry-after")) is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, (parsedate_to_datetime(value) - _now()).total_seconds())
            except (TypeError, ValueError):
                return None
    return None


# --- bookkeeping ---------------------------------------------------------------------------------


@dataclass
class _RemoteFile:
    """A hosted output file known by id and metadata; its bytes are fetched on demand."""

    file_id: str
    filename: str
    size: int
    mime_type: str
    principal: str
    container_id: str | None


@dataclass
class _Turn:
    """What one call's exchange with the Messages API produced."""

    content: dict[str, Any] | None = None
    container: ContainerInfo | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    request_ids: list[str] = field(default_factory=list)
    model: str | None = None
    message_id: str | None = None
    requests: int = 0
    extra_tool_calls: int = 0


def _add_usage(total: dict[str, Any], usage: dict[str, Any] | None) -> None:
    for key, value in (usage or {}).items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, dict) and key == "server_tool_use":
            inner = total.setdefault(key, {})
            for k, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    inner[k] = inner.get(k, 0) + v


# --- the backend ---------------------------------------------------------------------------------


class HostedBackend:
    """Passthrough to the hosted ``code_execution`` tool (see the module docstring)."""

    name = "hosted"

    def __init__(
        self,
        settings: Settings,
        store: Any,
        *,
        max_continuations: int = 4,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        retry_budget: float = 20.0,
        request_timeout: float = 600.0,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.max_continuations = max_continuations
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.retry_budget = retry_budget
        """Total seconds a call may spend waiting between retries; a longer wait gives up at once."""
        self.request_timeout = request_timeout
        self._sleep = sleep or anyio.sleep
        self._client: anthropic.AsyncAnthropic | None = None
        self._sessions: dict[str, str] = {}
        """MCP session key → hosted container id."""
        self._owners: dict[str, str] = {}
        """hosted container id → principal that created or first used it."""
        self._uploads: dict[str, list[str]] = {}
        """hosted container id → hosted file ids to send as ``container_upload`` next time."""
        self._remote: dict[str, _RemoteFile] = {}
        self._local_alias: dict[str, str] = {}
        """hosted file id → local store id, when the store cannot keep the hosted id."""
        self._uploaded: dict[str, str] = {}
        """local store id → hosted file id (an upload is sent once)."""
        self._locks: dict[str, anyio.Lock] = {}
        self._beta = beta_for(settings.hosted_tool_version)
        self._container_skills: dict[str, list[dict[str, str]]] = {}
        """hosted container id → the ``container.skills`` it was created with (sent with each request)."""

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._ensure_client()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _ensure_client(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            key = self.settings.anthropic_api_key
            if not key or not key.strip():
                raise Unavailable(
                    f"the hosted backend needs an Anthropic API key: set {API_KEY_ENV} (or use --backend docker)"
                )
            self._client = anthropic.AsyncAnthropic(
                api_key=key.strip(),
                base_url=self.settings.anthropic_base_url,
                max_retries=0,
                timeout=self.request_timeout,
            )
        return self._client

    async def check(self) -> dict[str, Any]:
        """One cheap authenticated request (the configured model's metadata), for ``doctor``."""
        client = self._ensure_client()
        model = await self._with_retries(
            lambda: client.models.retrieve(self.settings.hosted_model), what="model lookup"
        )
        return {"model": model.id, "display_name": getattr(model, "display_name", None)}

    async def end_session(self, session_key: str) -> None:
        """The hosted container stays alive (until it expires) and can be named by id."""
        self._sessions.pop(session_key, None)
        self._locks.pop(f"session:{session_key}", None)

    # --- the two tools -----------------------------------------------------------------------

    async def bash(self, request: BashInput, ctx: CallContext) -> Outcome:
        if request.restart:
            raise InvalidToolInput(
                "restart is not supported by the hosted backend (the hosted bash tool has no such input)"
            )
        return await self._execute(BASH, {"command": request.command}, request.container_id, ctx)

    async def editor(self, request: EditorInput, ctx: CallContext) -> Outcome:
        return await self._execute(EDITOR, editor_input(request), request.container_id, ctx)

    async def code(self, request: CodeInput, ctx: CallContext, tools: CodeTools | None = None) -> Outcome:
        """A REPL cell on the hosted tool: ``code_execution_20260120`` (or ``hosted_code_tool_version``),
        ``server_tool_use {name: "code_execution", input: {code}}`` → ``code_execution_tool_result``."""
        if request.restart:
            raise InvalidToolInput(
                "restart is not supported by the hosted backend (the hosted code_execution tool has no such input)"
            )
        # Tools the code may call are declared to the hosted tool; its pauses on them are answered
        # here (``answer_code_pauses``) until the cell's result arrives: the client sees one result.
        code_tools = tools if tools is not None and tools.functions else None
        return await self._execute(CODE, {"code": request.code}, request.container_id, ctx, code_tools=code_tools)

    async def _execute(
        self, tool: str, tool_input: dict[str, Any], container_override: str | None, ctx: CallContext,
        *, code_tools: CodeTools | None = None,
    ) -> Outcome:
        client = self._ensure_client()
        if container_override is not None:
            owner = self._owners.get(container_override)
            if owner is not None and ctx.principal != "local" and owner not in (ctx.principal, "local"):
                raise ContainerExpired(container_override)
            lock_key = f"container:{container_override}"
        else:
            lock_key = f"session:{ctx.session_key}"
        async with self._lock(lock_key):
            container_id = container_override or self._sessions.get(ctx.session_key)
            # A new hosted container gets the sandbox's skills; a known one keeps those it has.
            skills = self._container_skills.get(container_id or "")
            if skills is None and container_id is None:
                skills = await self._hosted_skills(client, ctx)
            uploads = self._uploads.pop(container_id, []) if container_id else []
            started = time.monotonic()
            turn: _Turn | None = None
            try:
                turn = await self._with_progress(
                    ctx, started, self._run_turn(client, tool, tool_input, container_id, uploads, skills=skills,
                                                        code_tools=code_tools)
                )
                if turn.container is not None:
                    self._remember(ctx, turn.container.id, container_override)
                    if skills:
                        self._container_skills.setdefault(turn.container.id, skills)
                block, notes = self._to_block(
                    tool, turn.content or {}, turn.container.id if turn.container else container_id
                )
            except _Failure as failure:  # the API answered at least once: uploads were delivered
                if failure.container is not None:
                    self._remember(ctx, failure.container.id, container_override)
                failure.error.container = failure.container  # type: ignore[attr-defined]
                if isinstance(failure.error, ContainerExpired):
                    self._forget_container(failure.error.container_id)
                raise failure.error from None
            except CodeExecError as exc:
                if isinstance(exc, ContainerExpired):
                    self._forget_container(exc.container_id)
                elif turn is not None:
                    exc.container = turn.container  # type: ignore[attr-defined]
                elif container_id and uploads:  # never delivered: keep them for the next request
                    self._uploads.setdefault(container_id, [])[:0] = uploads
                raise
        assert turn is not None
        duration_ms = int((time.monotonic() - started) * 1000)

        if container_id and turn.container is not None and turn.container.id != container_id:
            notes["container_replaced"] = container_id
        files: list[ProducedFile] = []
        if isinstance(block, (BashResult, CodeResult)):
            cid = turn.container.id if turn.container else container_id
            for out in block.content:
                files.append(await self._register_output(out.file_id, ctx.principal, cid, notes))

        hosted_meta: dict[str, Any] = {
            "model": turn.model or self.settings.hosted_model,
            "request_id": turn.request_ids[-1] if turn.request_ids else None,
            "message_id": turn.message_id,
            "duration_ms": duration_ms,
            "requests": turn.requests,
        }
        if len(turn.request_ids) > 1:
            hosted_meta["request_ids"] = turn.request_ids
        if turn.extra_tool_calls:
            hosted_meta["extra_tool_calls"] = turn.extra_tool_calls
        hosted_meta.update(notes)
        return Outcome(block, container=turn.container, files=files, meta={"usage": turn.usage, "hosted": hosted_meta})

    def _remember(self, ctx: CallContext, container_id: str, container_override: str | None) -> None:
        self._owners.setdefault(container_id, ctx.principal)
        if container_override is None or ctx.session_key not in self._sessions:
            self._sessions[ctx.session_key] = container_id

    # --- one exchange ------------------------------------------------------------------------

    def request_params(
        self, tool: str, tool_input: dict[str, Any], container_id: str | None, uploads: list[str],
        skills: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        """The keyword arguments of the first ``beta.messages.create`` of a call."""
        instruction = (
            f"Call the `{tool}` tool with exactly this input:\n"
            f"<input>\n{json.dumps(tool_input, ensure_ascii=False)}\n</input>"
        )
        user_content: list[dict[str, Any]] = [{"type": "container_upload", "file_id": f} for f in uploads]
        user_content.append({"type": "text", "text": instruction})
        # The REPL needs 20260120 or later; those versions are GA (no beta header of their own).
        version = self.settings.hosted_code_tool_version if tool == CODE else self.settings.hosted_tool_version
        betas = ([] if tool == CODE else [self._beta]) + ([FILES_BETA] if uploads else [])
        params: dict[str, Any] = {
            "model": self.settings.hosted_model,
            "max_tokens": self.settings.hosted_max_tokens,
            "system": SYSTEM_PROMPT,
            "messages": [{"role": "user", "content": user_content}],
            "tools": [{"type": version, "name": PARENT_TOOL}],
            "tool_choice": dict(TOOL_CHOICE),
            "betas": betas,
        }
        if not betas:
            del params["betas"]
        if skills:
            params["container"] = {"id": container_id, "skills": skills} if container_id else {"skills": skills}
        elif container_id:
            params["container"] = container_id
        return params

    async def _hosted_skills(self, client: anthropic.AsyncAnthropic, ctx: CallContext) -> list[dict[str, str]]:
        """The hosted ``container.skills`` for a new container: Anthropic's by reference, ours
        uploaded to the hosted Skills API once (by content digest) and named by id and version."""
        from ..skills import SkillNotFound, SkillRef, catalog_for

        catalog = catalog_for(self.settings)
        refs = [SkillRef.parse(r) for r in ctx.skills] if ctx.skills is not None else []
        params = [{"type": "anthropic", "skill_id": r.skill_id, "version": r.version} for r in refs if r.type == "anthropic"]
        try:
            local = await anyio.to_thread.run_sync(
                lambda: catalog.default_for(ctx.principal) if ctx.skills is None
                else catalog.resolve([r for r in refs if r.type != "anthropic"], ctx.principal)
            )
        except SkillNotFound as exc:
            raise InvalidToolInput(str(exc)) from None
        for skill in local.skills:
            if skill.type == "anthropic":  # a local stand-in for one of Anthropic's: use the real one
                if not any(p["skill_id"] == skill.skill_id for p in params):
                    params.append({"type": "anthropic", "skill_id": skill.skill_id, "version": "latest"})
                continue
            params.append(await self._uploaded_skill(client, skill))
        return params

    async def _uploaded_skill(self, client: anthropic.AsyncAnthropic, skill: Any) -> dict[str, str]:
        cache_path = self.settings.data_dir / "skills" / "hosted.json"
        key = f"{self.settings.anthropic_base_url or 'api'}|{skill.digest}"

        def cached() -> dict[str, Any]:
            try:
                data = json.loads(cache_path.read_text())
            except (OSError, ValueError):
                return {}
            return data if isinstance(data, dict) else {}

        known = (await anyio.to_thread.run_sync(cached)).get(key)
        if isinstance(known, dict) and isinstance(known.get("skill_id"), str) and isinstance(known.get("version"), str):
            return {"type": "custom", "skill_id": known["skill_id"], "version": known["version"]}
        entries = await anyio.to_thread.run_sync(skill.load)
        files = [(f"{skill.name}/{path}", data) for path, _, data in entries]
        created = await self._with_retries(
            lambda: client.beta.skills.create(files=files, display_name=skill.name, timeout=self.request_timeout),
            what="skill upload",
        )
        entry = {"skill_id": created.id, "version": created.latest_version_id}

        def store() -> None:
            data = cached()
            data[key] = entry
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(cache_path)

        await anyio.to_thread.run_sync(store)
        log.info("uploaded skill %s to the hosted Skills API as %s", skill.name, created.id)
        return {"type": "custom", **entry}

    async def _run_turn(
        self,
        client: anthropic.AsyncAnthropic,
        tool: str,
        tool_input: dict[str, Any],
        container_id: str | None,
        uploads: list[str],
        *,
        skills: list[dict[str, str]] | None = None,
        code_tools: CodeTools | None = None,
    ) -> _Turn:
        params = self.request_params(tool, tool_input, container_id, uploads, skills)
        if code_tools is not None:
            params["tools"] += ptc_tool_params(code_tools)
            params.pop("tool_choice", None)  # the PTC docs: forcing a tool is not supported with them
        history = [params["messages"][0]]
        assistant: list[dict[str, Any]] = []
        turn = _Turn()
        matched: str | None = None
        texts: list[str] = []
        expected = _strip_nulls(tool_input)

        for round_no in range(self.max_continuations + 1):
            if assistant:
                params["messages"] = [*history, {"role": "assistant", "content": list(assistant)}]
            try:
                named = params.get("container")
                data, request_id = await self._create(
                    client, params, container_id=named.get("id") if isinstance(named, dict) else named
                )
            except CodeExecError as exc:
                if turn.requests:  # a continuation failed: the first request did reach the container
                    raise _Failure(exc, turn.container) from exc
                raise
            turn.requests += 1
            if request_id:
                turn.request_ids.append(request_id)
            _add_usage(turn.usage, data.get("usage"))
            responses = [data]
            if code_tools is not None:
                responses = await answer_code_pauses(self, client, params, data, code_tools, turn)
                if len(responses) > 1:
                    # The paused turns and their tool_results are the history a continuation resends.
                    history, assistant = list(params["messages"]), []
            for n, data in enumerate(responses):
                self._take_response(turn, data, params, skills)
                # Only the last response's blocks are an unfinished assistant turn (the paused ones are in history).
                into = assistant if n == len(responses) - 1 else []
                matched = self._take_blocks(turn, tool, tool_input, expected, data, into, texts, matched)

            if turn.content is not None:
                return turn
            stop = data.get("stop_reason")
            if stop != "pause_turn":
                if matched is None:
                    said = f": {_short(' '.join(texts), 200)!r}" if texts else ""
                    raise _Failure(
                        Unavailable(f"the hosted model did not call {tool} (stop_reason {stop}){said}"), turn.container
                    )
                raise _Failure(
                    Unavailable(f"the hosted turn ended (stop_reason {stop}) without a result for the {tool} call"),
                    turn.container,
                )
            log.debug("pause_turn after request %d; continuing", round_no + 1)
        raise _Failure(
            Unavailable(
                f"the hosted turn was still paused after {self.max_continuations} continuations without a result"
            ),
            turn.container,
        )

    @staticmethod
    def _take_response(turn: _Turn, data: dict[str, Any], params: dict[str, Any], skills: list[dict[str, str]] | None) -> None:
        """What a response says of the turn: model, message id, the container (continuations name it)."""
        turn.model = data.get("model") or turn.model
        turn.message_id = data.get("id") or turn.message_id
        container = data.get("container")
        if isinstance(container, dict) and container.get("id"):
            expires = _parse_time(container.get("expires_at")) or (_now() + timedelta(days=30))
            loaded = tuple(s for s in container.get("skills") or () if isinstance(s, dict))
            turn.container = ContainerInfo(str(container["id"]), expires, loaded)
            params["container"] = {"id": turn.container.id, "skills": skills} if skills else turn.container.id

    @staticmethod
    def _take_blocks(
        turn: _Turn, tool: str, tool_input: dict[str, Any], expected: Any, data: dict[str, Any],
        assistant: list[dict[str, Any]], texts: list[str], matched: str | None,
    ) -> str | None:
        """A response's content blocks: the server_tool_use that must match our input, its result,
        the model's text. Returns the matched server_tool_use id."""
        for block in data.get("content") or []:
            if not isinstance(block, dict):
                continue
            assistant.append(block)
            btype = block.get("type")
            if btype == "server_tool_use":
                if matched is None:
                    got_input = block.get("input") if isinstance(block.get("input"), dict) else {}
                    if block.get("name") != tool or _strip_nulls(got_input) != expected:
                        raise _Failure(
                            Unavailable(
                                f"hosted model sent a different input: expected {tool} {_short(tool_input)}, "
                                f"got {block.get('name')} {_short(block.get('input'))}; the hosted tool may "
                                "have run the model's version. Nothing was substituted; retry the call."
                            ),
                            turn.container,
                        )
                    matched = block.get("id")
                else:
                    turn.extra_tool_calls += 1
            elif btype == f"{tool}_tool_result" and matched is not None and block.get("tool_use_id") == matched:
                if turn.content is None:
                    turn.content = block.get("content") if isinstance(block.get("content"), dict) else {}
            elif btype == "text" and block.get("text"):
                texts.append(str(block["text"]))
        return matched

    async def _create(
        self, client: anthropic.AsyncAnthropic, params: dict[str, Any], *, container_id: str | None
    ) -> tuple[dict[str, Any], str | None]:
        async def once() -> tuple[dict[str, Any], str | None]:
            try:
                raw = await client.beta.messages.with_raw_response.create(**params, timeout=self.request_timeout)
            except (TypeError, ValueError) as exc:  # the SDK refused our parameters before sending
                raise Unavailable(f"the anthropic SDK refused the request: {exc}") from exc
            body = await raw.read()
            try:
                data = json.loads(body)
            except ValueError as exc:
                raise Unavailable(f"the hosted API sent a response that is not JSON: {body[:200]!r}") from exc
            if not isinstance(data, dict):
                raise Unavailable("the hosted API sent a response that is not a message object")
            return data, raw.request_id

        return await self._with_retries(once, container_id=container_id, what="code execution request")

    async def _with_retries(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        container_id: str | None = None,
        file_id: str | None = None,
        what: str = "request",
    ) -> T:
        attempts = max(0, self.settings.hosted_max_retries) + 1
        waited = 0.0
        for attempt in range(attempts):
            try:
                return await fn()
            except anthropic.AnthropicError as exc:
                delay = self._delay(attempt, exc)
                if attempt + 1 < attempts and _retryable(exc) and waited + delay <= self.retry_budget:
                    log.info("hosted API %s failed (%s); retry %d in %.2fs", what, exc, attempt + 1, delay)
                    await self._sleep(delay)
                    waited += delay
                    continue
                raise map_api_error(exc, container_id=container_id, file_id=file_id, what=what) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, exc: BaseException) -> float:
        hinted = _retry_after(exc)
        if hinted is not None:
            return min(hinted, self.backoff_cap)
        return min(self.backoff_base * (2**attempt) * random.uniform(0.75, 1.25), self.backoff_cap)

    async def _with_progress(self, ctx: CallContext, started: float, work: Awaitable[T]) -> T:
        """Await ``work``, sending a progress notification every ``progress_interval`` meanwhile."""
        progress = ctx.progress
        if progress is None or self.settings.progress_interval <= 0:
            return await work
        results: list[T] = []
        errors: list[Exception] = []

        async def tick() -> None:
            while True:
                await anyio.sleep(self.settings.progress_interval)
                try:
                    await progress(time.monotonic() - started, "waiting for the hosted code-execution tool")
                except Exception:  # the caller's callback: a client gone must not fail the call
                    log.debug("progress notification failed", exc_info=True)
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            try:
                results.append(await work)
            except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group (no ExceptionGroup)
                errors.append(exc)
            finally:
                tg.cancel_scope.cancel()
        if errors:
            raise errors[0]
        return results[0]

    # --- result blocks -----------------------------------------------------------------------

    def _to_block(
        self, tool: str, content: dict[str, Any], container_id: str | None
    ) -> tuple[ResultBlock, dict[str, Any]]:
        """The hosted ``content`` object as our block (see the module docstring for what may change)."""
        notes: dict[str, Any] = {}
        ctype = content.get("type")
        if tool == EDITOR and ctype == "text_editor_code_execution_result":  # the docs' prose form
            content = _from_prose_form(content)
            ctype = content.get("type")
            notes["normalised_from"] = "text_editor_code_execution_result"
        models = _RESULT_MODELS[tool]
        model = models.get(str(ctype))
        if model is None:
            raise Unavailable(f"the hosted {tool} result has an unexpected type {ctype!r}: {_short(content)}")
        if model in (BashError, EditorError, CodeError):
            code = content.get("error_code")
            if code == "container_expired":
                raise ContainerExpired(
                    container_id or "?",
                    str(content.get("error_message") or "the hosted tool reports container_expired"),
                )
            if code not in _ERROR_CODES[tool]:
                notes["original_error_code"] = code
                content = dict(content)
                content["error_code"] = "invalid_tool_input" if code == "string_not_found" else "unavailable"
                if model is EditorError and not content.get("error_message"):
                    content["error_message"] = f"hosted error code {code}"
        allowed = set(model.model_fields)
        dropped = sorted(k for k in content if k not in allowed)
        if dropped:
            notes["dropped_fields"] = dropped
        try:
            block = model.model_validate({k: v for k, v in content.items() if k in allowed})
        except ValidationError as exc:
            raise Unavailable(f"the hosted {tool} result does not match its schema: {exc.errors()[:3]}") from exc
        return block, notes  # type: ignore[return-value]

    # --- containers --------------------------------------------------------------------------

    def _lock(self, key: str) -> anyio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = anyio.Lock()
        return lock

    def _forget_container(self, container_id: str | None) -> None:
        if not container_id:
            return
        for session, cid in list(self._sessions.items()):
            if cid == container_id:
                del self._sessions[session]

    def session_container(self, session_key: str) -> str | None:
        """The hosted container id a session is using, if it has made a call."""
        return self._sessions.get(session_key)

    # --- files -------------------------------------------------------------------------------

    async def _register_output(
        self, file_id: str, principal: str, container_id: str | None, notes: dict[str, Any]
    ) -> ProducedFile:
        """Remember an output file by its hosted id; read its metadata now, its bytes later."""
        client = self._ensure_client()
        try:
            meta = await self._with_retries(
                lambda: client.beta.files.retrieve_metadata(file_id, betas=[FILES_BETA]), what="file metadata lookup"
            )
            remote = _RemoteFile(file_id, meta.filename, meta.size_bytes, meta.mime_type, principal, container_id)
        except CodeExecError as exc:  # the call itself succeeded: report the file without its details
            notes.setdefault("file_metadata_errors", {})[file_id] = exc.message
            remote = _RemoteFile(file_id, file_id, 0, "application/octet-stream", principal, container_id)
        self._remote[file_id] = remote
        if remote.mime_type.startswith("image/") and self._store_keeps_ids():
            # The server shows images inline, reading them from the store: fetch those now.
            try:
                await self.fetch_file(file_id, principal)
            except CodeExecError as exc:
                notes.setdefault("file_fetch_errors", {})[file_id] = exc.message
        return ProducedFile(remote.file_id, remote.filename, remote.size, remote.mime_type)

    def _store_keeps_ids(self) -> bool:
        """Whether the store can keep a hosted file under the hosted id (``begin(file_id=...)``)."""
        try:
            return "file_id" in inspect.signature(self.store.begin).parameters
        except (TypeError, ValueError, AttributeError):
            return False

    async def fetch_file(self, file_id: str, principal: str | None = None) -> Any:
        """The store's ``FileRecord`` for a hosted output file, downloading it on first use.

        ``principal`` set (and not ``"local"``) → the file must have been produced for that
        principal. A hosted id this process never saw is fetched only for trusted callers
        (``principal`` None or ``"local"``). Raises ``FileNotFound`` otherwise.
        """
        who = None if principal in (None, "local") else principal
        local_id = self._local_alias.get(file_id, file_id)
        try:
            return await anyio.to_thread.run_sync(self.store.get, local_id, who)
        except (KeyError, LookupError, ValueError):
            pass
        remote = self._remote.get(file_id)
        if remote is None and who is not None:
            raise FileNotFound(f"file not found: {file_id}")
        if remote is not None and who is not None and remote.principal != who:
            raise FileNotFound(f"file not found: {file_id}")
        client = self._ensure_client()
        if remote is None:
            meta = await self._with_retries(
                lambda: client.beta.files.retrieve_metadata(file_id, betas=[FILES_BETA]),
                file_id=file_id,
                what="file metadata lookup",
            )
            remote = _RemoteFile(file_id, meta.filename, meta.size_bytes, meta.mime_type, principal or "local", None)
            self._remote[file_id] = remote

        async def download() -> bytes:
            response = await client.beta.files.download(file_id, betas=[FILES_BETA])
            return await response.read()

        data = await self._with_retries(download, file_id=file_id, what="file download")
        limit = self.settings.max_output_file_bytes
        if len(data) > limit:
            raise Unavailable(f"hosted file {file_id} is {len(data)} bytes, above the {limit}-byte limit")
        record = await anyio.to_thread.run_sync(self._store_bytes, remote, data)
        if record.id != file_id:
            self._local_alias[file_id] = record.id
        return record

    def _store_bytes(self, remote: _RemoteFile, data: bytes) -> Any:
        kwargs: dict[str, Any] = {
            "filename": remote.filename,
            "origin": "hosted",
            "principal": remote.principal,
            "container_id": remote.container_id,
            "mime_type": remote.mime_type,
        }
        if self._store_keeps_ids():
            kwargs["file_id"] = remote.file_id
        try:
            return self.store.add_bytes(data, **kwargs)
        except FileExistsError:  # a concurrent fetch of the same file won
            return self.store.get(remote.file_id)

    async def attach_file(self, file_id: str, container_id: str, principal: str) -> str:
        """Upload a stored file to the hosted Files API (once) and queue a ``container_upload`` of
        it for the next request on ``container_id``. Returns where it will appear."""
        owner = self._owners.get(container_id)
        if owner is not None and principal != "local" and owner not in (principal, "local"):
            raise ContainerExpired(container_id)
        who = None if principal == "local" else principal
        record, data = await anyio.to_thread.run_sync(self._read_stored, file_id, who)
        hosted_id = self._uploaded.get(record.id)
        if hosted_id is None:
            if record.origin == "hosted" or file_id in self._remote:
                hosted_id = file_id  # already on the hosted side
            else:
                client = self._ensure_client()
                meta = await self._with_retries(
                    lambda: client.beta.files.upload(
                        file=(record.filename, data, record.mime_type), betas=[FILES_BETA]
                    ),
                    what="file upload",
                )
                hosted_id = meta.id
            self._uploaded[record.id] = hosted_id
        self._owners.setdefault(container_id, principal)
        queue = self._uploads.setdefault(container_id, [])
        if hosted_id not in queue:
            queue.append(hosted_id)
        return f"{INPUT_DIR}/{record.filename}"

    def _read_stored(self, file_id: str, principal: str | None) -> tuple[Any, bytes]:
        local_id = self._local_alias.get(file_id, file_id)
        try:
            record, fh = self.store.open_with_record(local_id, principal)
        except (KeyError, LookupError, ValueError) as exc:
            raise FileNotFound(f"file not found: {file_id}") from exc
        with fh:
            return record, fh.read()


class _Failure(Exception):
    """Carries an error out of a turn together with the container the turn ran in."""

    def __init__(self, error: CodeExecError, container: ContainerInfo | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.container = container


def editor_input(request: EditorInput) -> dict[str, Any]:
    """The hosted ``text_editor_code_execution`` input for a request (only the fields its command uses)."""
    out: dict[str, Any] = {"command": request.command, "path": request.path}
    if request.command == "view":
        if request.view_range is not None:
            if len(request.view_range) != 2:
                raise InvalidToolInput("view_range must be [start_line, end_line]")
            out["view_range"] = list(request.view_range)
    elif request.command == "create":
        if request.file_text is None:
            raise InvalidToolInput("create needs file_text")
        out["file_text"] = request.file_text
    else:
        if request.old_str is None or request.new_str is None:
            raise InvalidToolInput("str_replace needs old_str and new_str")
        out["old_str"] = request.old_str
        out["new_str"] = request.new_str
    return out


def _from_prose_form(content: dict[str, Any]) -> dict[str, Any]:
    """The docs' prose example form (``text_editor_code_execution_result`` with camelCase fields)
    rewritten as the SDK's typed block."""
    fields = {_CAMEL.get(k, k): v for k, v in content.items() if k != "type"}
    if "is_file_update" in fields:
        kind = "text_editor_code_execution_create_result"
    elif "lines" in fields or "old_start" in fields:
        kind = "text_editor_code_execution_str_replace_result"
    else:
        kind = "text_editor_code_execution_view_result"
    return {"type": kind, **fields}


# --- programmatic tool calling: the hosted code pauses for tools that run here ---------------------
#
# With tools declared ``allowed_callers: ["code_execution_20260120"]``, the hosted code calling one
# ends the response with ``stop_reason: "tool_use"`` and ``tool_use`` blocks whose ``caller`` is
# ``{"type": "code_execution_20260120", "tool_id": <the server_tool_use id>}``. The server runs
# them (``CodeTools.call``: the upstream registry) and continues with a user message of only
# ``tool_result`` blocks, the same ``tools`` and the ``container`` id, until a response is not such
# a pause; the MCP client sees the one result at the end. The REPL passthrough uses these pieces:
# ``params["tools"] += ptc_tool_params(tools)`` for its request, then ``answer_code_pauses`` on
# each response (its returned responses hold the ``server_tool_use`` to match and, last, the
# ``code_execution_tool_result``). The PTC docs list "forcing a call through tool_choice" as
# unsupported with PTC tools: a request declaring them should not force a tool (unverified live).

PTC_CALLER = "code_execution_20260120"
MAX_CODE_PAUSES = 500
"""Pauses one call may answer (each is one more request): a runaway loop of calls ends."""


def ptc_tool_params(tools: CodeTools | None) -> list[dict[str, Any]]:
    """The ``tools`` entries declaring ``tools``' functions as callable from the hosted code."""
    if tools is None:
        return []
    return [
        {
            "name": f.name,
            "description": f.description or f.name,
            "input_schema": f.input_schema or {"type": "object"},
            "allowed_callers": [PTC_CALLER],
        }
        for f in tools.functions
    ]


def pending_code_calls(content: list[Any]) -> list[dict[str, Any]]:
    """The ``tool_use`` blocks of a response that the hosted code made (its caller is code execution)."""
    calls = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_use":
            caller = block.get("caller")
            if isinstance(caller, dict) and str(caller.get("type", "")).startswith("code_execution_"):
                calls.append(block)
    return calls


async def answer_code_calls(calls: list[dict[str, Any]], tools: CodeTools | None) -> list[dict[str, Any]]:
    """Run the calls (in parallel, at most ``max_in_flight`` at once, each within the pending
    timeout); one ``tool_result`` per call, in the calls' order."""
    known = {f.name for f in tools.functions} if tools is not None else set()
    results: list[dict[str, Any]] = [{} for _ in calls]
    limiter = anyio.CapacityLimiter(tools.max_in_flight if tools is not None else 1)

    async def one(index: int, call: dict[str, Any]) -> None:
        name = str(call.get("name"))
        arguments = call.get("input") if isinstance(call.get("input"), dict) else {}
        if tools is None or name not in known:
            text, is_error = f"tool {name!r} is not configured on this mcp-codeexec server", True
        else:
            async with limiter:
                # A backstop: the registry bounds its own calls by the pending timeout, with a better message.
                with anyio.move_on_after(tools.pending_timeout + 1) as scope:
                    text, is_error = await tools.call(name, arguments)
                if scope.cancelled_caught:
                    text, is_error = f"tool {name!r} did not answer within {tools.pending_timeout:g}s", True
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call.get("id"), "content": text}
        if is_error:
            result["is_error"] = True
        results[index] = result

    async with anyio.create_task_group() as tg:
        for index, call in enumerate(calls):
            tg.start_soon(one, index, call)
    return results


async def answer_code_pauses(
    backend: HostedBackend,
    client: anthropic.AsyncAnthropic,
    params: dict[str, Any],
    data: dict[str, Any],
    tools: CodeTools | None,
    turn: _Turn | None = None,
) -> list[dict[str, Any]]:
    """``data`` answered ``params``; while it is a pause on code calls, answer them and continue.

    ``params["messages"]`` grows by each paused assistant turn and its ``tool_result`` message;
    ``params["container"]`` follows the responses. Returns every response, ``data`` first, the
    last one not a code-call pause (``turn``, when given, counts the requests and usage).
    """
    responses = [data]
    for _ in range(MAX_CODE_PAUSES):
        content = [b for b in data.get("content") or [] if isinstance(b, dict)]
        calls = pending_code_calls(content)
        if data.get("stop_reason") != "tool_use" or not calls:
            return responses
        container = data.get("container")
        if isinstance(container, dict) and container.get("id"):
            params["container"] = str(container["id"])
        elif not params.get("container"):
            log.warning("hosted code paused on %d tool call(s) without a container id", len(calls))
        log.debug("hosted code paused on %s", [c.get("name") for c in calls])
        results = await answer_code_calls(calls, tools)
        params["messages"] = [
            *params["messages"],
            {"role": "assistant", "content": content},
            {"role": "user", "content": results},
        ]
        data, request_id = await backend._create(client, params, container_id=params.get("container"))
        responses.append(data)
        if turn is not None:
            turn.requests += 1
            if request_id:
                turn.request_ids.append(request_id)
            _add_usage(turn.usage, data.get("usage"))
    raise Unavailable(f"the hosted code paused for tools more than {MAX_CODE_PAUSES} times; stopped")


def create_hosted_backend(settings: Settings, store: Any) -> HostedBackend:
    return HostedBackend(settings, store)
