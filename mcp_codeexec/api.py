"""The Python API for agent frameworks: one sandbox in an ``async with``, no MCP in between.

    from mcp_codeexec import Sandbox

    async with Sandbox() as sb:
        result = await sb.bash("python3 -c 'print(6 * 7)'")
        print(result.stdout)            # "42\\n"
        await sb.code("x = 6 * 7")      # the container's persistent Python interpreter
        print((await sb.code("print(x)")).stdout)   # "42\\n"

Every call returns the hosted tool's own block model (``schemas.BashResult``, ``ViewResult``, ...).
Failures of a call come back as data — ``BashError`` / ``EditorError`` blocks with the hosted
``error_code`` — exactly as the hosted tool reports them; only failing to get a sandbox at all
(engine down, image missing) raises, from ``async with``, as ``errors.Unavailable``.

A ``Sandbox`` drives a backend directly (``SandboxBackend`` by default, ``HostedBackend`` with
``backend="hosted"``, or any object implementing ``backends.base.Backend``). The container it
creates is removed when the block ends unless ``keep=True``; a container named by
``container_id`` is attached to and kept.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from .backends.base import Backend, CallContext, CodeTools, Outcome
from .config import Settings, load_settings
from .database import open_file_store
from .errors import CodeExecError, Unavailable, error_block
from .files import FileStore, StoredFileNotFound
from .inputs import BASH, CODE, EDITOR, validate_input
from .schemas import (
    BashError,
    BashInput,
    BashResult,
    CodeError,
    CodeInput,
    CodeResult,
    CreateResult,
    EditorError,
    StrReplaceResult,
    ViewResult,
)

log = logging.getLogger(__name__)

LOCAL_PRINCIPAL = "local"

BashBlock = BashResult | BashError
ViewBlock = ViewResult | EditorError
CreateBlock = CreateResult | EditorError
StrReplaceBlock = StrReplaceResult | EditorError
CodeBlock = CodeResult | CodeError


def settings_with(settings: Settings | None, overrides: dict[str, Any]) -> Settings:
    """``settings`` (or freshly loaded ones) with ``overrides`` applied and validated."""
    if settings is None:
        return load_settings(**overrides)
    if not overrides:
        return settings
    data = settings.model_dump(exclude={"anthropic_api_key"})
    data["ANTHROPIC_API_KEY"] = overrides.pop("anthropic_api_key", settings.anthropic_api_key)
    data.update(overrides)
    return type(settings).model_validate(data)


def _create_backend(settings: Settings, store: FileStore) -> Backend:
    if settings.backend == "hosted":
        from .backends.hosted import HostedBackend

        return HostedBackend(settings, store)
    from .backends.sandbox import SandboxBackend

    return SandboxBackend(settings, store)


class Sandbox:
    """One code-execution container, for the length of an ``async with`` block.

    ``settings``: a ``Settings`` (default: loaded from env / TOML like the server does);
    ``**overrides``: settings fields to change (``call_timeout=10``, ``runtime="runsc"``); among them
    ``image="NAME"`` (a derived image from ``image build --name NAME``, or any tag) and
    ``mounts=["/host/dir", "/host/out:/workspace/out:rw"]`` with ``allowed_mount_roots=[...]``:
    host folders fixed for this sandbox's lifetime (see mounts.py).
    ``container_id``: attach to an existing container (its files are there) instead of making one.
    ``keep``: keep the container after the block (default: only when ``container_id`` was given).
    ``backend`` / ``store``: bring your own (tests, custom engines); they are not closed here.
    ``tools``: host Python functions the sandbox code may call, ``{name: sync or async callable}``
    (see ``tools.callables``); in the REPL each is ``await name({...})`` returning a string.
    ``skills``: skills for the container, besides the ``--skills`` folder ones every sandbox has:
    ``{"type": "custom" | "anthropic", "skill_id": ..., "version"?: ...}`` items (the hosted
    ``container.skills``) or bare skill ids; they appear read-only at ``/skills/<name>/``. Default:
    the folder skills plus every skill the principal uploaded. Fixed when the container is made.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        container_id: str | None = None,
        *,
        keep: bool | None = None,
        backend: Backend | None = None,
        store: FileStore | None = None,
        principal: str = LOCAL_PRINCIPAL,
        tools: Mapping[str, Callable[..., Any]] | CodeTools | None = None,
        skills: list[Any] | None = None,
        snapshot: str | None = None,
        **overrides: Any,
    ) -> None:
        # A Sandbox uses exactly one container: a warm pool would only start containers for nobody.
        overrides.setdefault("pool_size", 0)
        self.settings = settings_with(settings, overrides)
        self.principal = principal
        self.snapshot_name = snapshot
        """Start from this workspace snapshot (``Sandbox.snapshot``, ``snapshots save``): a new
        sandbox with a copy of its files."""
        self.keep = keep if keep is not None else container_id is not None
        self._container_id = container_id
        self._backend = backend
        self._store = store
        self._stack: AsyncExitStack | None = None
        self._ctx = CallContext(principal=principal, session_key=f"api:{secrets.token_hex(6)}",
                                skills=tuple(skills) if skills is not None else None)
        self.last_outcome: Outcome | None = None
        """The full outcome of the latest call (container, produced files with names and sizes)."""
        self.code_tools: CodeTools | None = self._tools_from(tools)
        """What the sandbox code may call (``backend.code(..., tools=sb.code_tools)``)."""

    def _tools_from(self, tools: Mapping[str, Callable[..., Any]] | CodeTools | None) -> CodeTools | None:
        if tools is None or isinstance(tools, CodeTools):
            return tools
        from .tools.callables import code_tools_from_callables

        return code_tools_from_callables(
            tools,
            max_in_flight=self.settings.tools_max_in_flight,
            pending_timeout=self.settings.tools_pending_timeout,
        )

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def container_id(self) -> str | None:
        """The container this sandbox runs in (known after ``async with`` for the docker backend,
        after the first call for backends that create containers lazily)."""
        return self._container_id

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError("use the Sandbox inside `async with`")
        return self._backend

    @property
    def store(self) -> FileStore:
        if self._store is None:
            raise RuntimeError("use the Sandbox inside `async with`")
        return self._store

    async def __aenter__(self) -> Sandbox:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            if self._store is None:
                settings = self.settings
                self._store = await anyio.to_thread.run_sync(
                    lambda: open_file_store(settings)
                )
                stack.callback(self._store.close)
            # Callbacks run last-in first-out: the container is removed after the backend closed
            # its connection to it.
            stack.push_async_callback(self._remove_container)
            if self._backend is None:
                backend = _create_backend(self.settings, self._store)
                if hasattr(backend, "__aenter__"):
                    await stack.enter_async_context(backend)  # type: ignore[arg-type]
                else:
                    await backend.start()
                    stack.push_async_callback(backend.aclose)
                self._backend = backend
            await self._acquire()
        except BaseException:
            await stack.aclose()  # not inside a shield: the backend's task group must exit in its own scope
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def _acquire(self) -> None:
        """Get the container now when the backend can (docker): errors surface at ``async with``."""
        sandbox_for = getattr(self._backend, "sandbox_for", None)
        if sandbox_for is None:
            return
        if self.snapshot_name is not None and self._container_id is None:
            from .snapshots import SnapshotStore

            name, principal = self.snapshot_name, self.principal
            self._container_id = await anyio.to_thread.run_sync(
                lambda: SnapshotStore(self.settings).start(self._manager(), name, principal))
        sandbox = await sandbox_for(self._ctx, self._container_id)
        self._container_id = sandbox.record.id

    async def _remove_container(self) -> None:
        if self.keep or self._container_id is None:
            return
        if getattr(self._backend, "name", None) not in ("docker", "kubernetes"):
            return
        from .engines import build_engine

        cid = self._container_id
        settings = self.settings

        def remove() -> None:
            build_engine(settings).remove(cid)

        try:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove)
        except Unavailable as exc:
            log.warning("could not remove sandbox %s: %s", cid, exc.message)

    # --- the three tools ----------------------------------------------------------------------

    async def code(self, code: str, *, restart: bool = False, tools: CodeTools | None = None) -> CodeBlock:
        """Run Python in the container's persistent interpreter (variables persist between calls;
        top-level ``await`` works); ``tools``: functions the code may call (``await name({...})``)."""
        return await self.call_tool(CODE, {"code": code, "restart": restart}, tools=tools)  # type: ignore[return-value]

    async def bash(self, command: str, *, restart: bool = False) -> BashBlock:
        """Run ``command`` in the container's shell (cwd and exported variables persist)."""
        return await self.call_tool(BASH, {"command": command, "restart": restart})  # type: ignore[return-value]

    async def view(self, path: str, view_range: list[int] | tuple[int, int] | None = None) -> ViewBlock:
        """A file's text (or base64 of an image / PDF), or a directory listing."""
        arguments: dict[str, Any] = {"command": "view", "path": path}
        if view_range is not None:
            arguments["view_range"] = list(view_range)
        return await self.call_tool(EDITOR, arguments)  # type: ignore[return-value]

    async def create(self, path: str, text: str) -> CreateBlock:
        """Write ``text`` to ``path`` (parents created, an existing file overwritten)."""
        return await self.call_tool(EDITOR, {"command": "create", "path": path, "file_text": text})  # type: ignore[return-value]

    async def str_replace(self, path: str, old: str, new: str) -> StrReplaceBlock:
        """Replace the one occurrence of ``old`` in ``path`` by ``new``."""
        arguments = {"command": "str_replace", "path": path, "old_str": old, "new_str": new}
        return await self.call_tool(EDITOR, arguments)  # type: ignore[return-value]

    async def call_tool(self, name: str, arguments: dict[str, Any], *, tools: CodeTools | None = None) -> Any:
        """Run one hosted tool call by name with the hosted input; return the hosted result block.

        ``container_id`` in ``arguments`` is ignored: a Sandbox always runs in its own container.
        """
        if name not in (BASH, EDITOR, CODE):
            raise ValueError(f"unknown tool {name!r} (expected {BASH}, {EDITOR} or {CODE})")
        backend = self.backend
        try:
            request = validate_input(name, {**arguments, "container_id": self._container_id})
            if isinstance(request, BashInput):
                outcome = await backend.bash(request, self._ctx)
            elif isinstance(request, CodeInput):
                from .tools.callables import combine_code_tools

                outcome = await backend.code(request, self._ctx, combine_code_tools(self.code_tools, tools))
            else:
                outcome = await backend.editor(request, self._ctx)
        except CodeExecError as exc:
            if exc.error_code == "unavailable":
                log.warning("%s call answered unavailable: %s", name, exc.message)
            self.last_outcome = None
            if exc.container is not None and self._container_id is None:
                self._container_id = exc.container.id
            return error_block(name, exc)
        self.last_outcome = outcome
        if outcome.container is not None and self._container_id is None:
            self._container_id = outcome.container.id
        return outcome.block

    async def _run_code(self, request: Any, tools: Mapping[str, Callable[..., Any]] | CodeTools | None = None) -> Outcome:
        """``backend.code(request)`` with this sandbox's tools, plus per-call ``tools`` (which win
        on a name clash). For backends without a ``code`` tool this raises ``Unavailable``."""
        from .tools.callables import combine_code_tools

        code = getattr(self.backend, "code", None)
        if code is None:
            raise Unavailable(f"the {getattr(self.backend, 'name', '?')} backend has no code_execution tool")
        combined = combine_code_tools(self.code_tools, self._tools_from(tools))
        outcome: Outcome = await code(request, self._ctx, tools=combined)
        self.last_outcome = outcome
        if outcome.container is not None and self._container_id is None:
            self._container_id = outcome.container.id
        return outcome

    # --- snapshots and forks (snapshots.py) ----------------------------------------------------

    def _manager(self) -> Any:
        from .engines.docker import SandboxManager, connect

        return SandboxManager(self.settings, connect(timeout=30))

    async def snapshot(self, name: str, *, replace: bool = False) -> dict[str, Any]:
        """Save this sandbox's workspace as snapshot ``name`` (a consistent copy: the filesystem is
        frozen while it is copied); ``Sandbox(snapshot=name)`` starts new sandboxes from it."""
        from .snapshots import SnapshotStore

        cid = self._require_container()
        snap = await anyio.to_thread.run_sync(
            lambda: SnapshotStore(self.settings).save(self._manager(), cid, name, self.principal, replace=replace))
        return snap.as_dict()

    async def fork(self) -> str:
        """A new sandbox with a copy of this one's workspace (its own id, owner record and limits);
        returns its container id. It is kept: attach with ``Sandbox(container_id=...)`` (``keep=False``
        to remove it at the end of that block)."""
        from .snapshots import fork

        cid = self._require_container()
        return await anyio.to_thread.run_sync(lambda: fork(self._manager(), cid, self.principal))

    def _require_container(self) -> str:
        if self._container_id is None:
            raise RuntimeError("use the Sandbox inside `async with` (its container is made there)")
        return self._container_id

    # --- services (not hosted; see services.py) -------------------------------------------------

    async def _services(self, arguments: dict[str, Any]) -> dict[str, Any]:
        from . import services

        request = services.validate({**arguments, "container_id": self._container_id})
        result, _ = await services.run(self.backend, request, self._ctx, self.settings)
        return result

    async def start_service(self, name: str, command: str) -> dict[str, Any]:
        """Start ``command`` (bash) as a service: it keeps running after this call, until
        ``stop_service`` or the container's end. Returns its entry (name, pid, status, ...).
        Failures raise ``errors.CodeExecError`` (e.g. ``InvalidToolInput`` past ``services_max``)."""
        return (await self._services({"action": "start", "name": name, "command": command}))["service"]

    async def services(self) -> list[dict[str, Any]]:
        """Every service: name, pid, command, status (running/exited), exit_code, uptime_seconds."""
        return (await self._services({"action": "list"}))["services"]

    async def service_logs(self, name: str, tail: int | None = None) -> str:
        """The newest ``tail`` bytes (default 20,000) of the service's output, stdout and stderr together."""
        return (await self._services({"action": "logs", "name": name, "tail": tail}))["output"]

    async def stop_service(self, name: str) -> dict[str, Any]:
        """SIGTERM every process of the service, SIGKILL after 2 s; returns its last entry."""
        return (await self._services({"action": "stop", "name": name}))["service"]

    # --- files --------------------------------------------------------------------------------

    async def upload(self, data: str | Path | bytes, filename: str | None = None) -> str:
        """Store a file and place it in the container's ``/workspace/inputs``; return its file id.

        ``data``: a path on this machine, or the bytes themselves (then ``filename`` is required).
        """
        store = self.store
        if isinstance(data, (bytes, bytearray, memoryview)):
            if not filename:
                raise ValueError("upload of bytes needs a filename")
            payload = bytes(data)
            record = await anyio.to_thread.run_sync(
                lambda: store.add_bytes(payload, filename=filename, origin="upload", principal=self.principal)
            )
        else:
            path = Path(data)
            record = await anyio.to_thread.run_sync(
                lambda: store.add_path(path, filename=filename, origin="upload", principal=self.principal)
            )
        if self._container_id is None:
            await self.bash("true")  # backends that create containers lazily: make it exist
        if self._container_id is None:
            raise Unavailable("no container to upload into")
        await self.backend.attach_file(record.id, self._container_id, self.principal)
        return record.id

    async def download(self, file_id: str) -> bytes:
        """The bytes of a stored file: an output file (``BashResult.content[i].file_id``) or an upload."""
        fetch = getattr(self.backend, "fetch_file", None)
        if fetch is not None:
            await fetch(file_id)
        store = self.store
        owner = None if self.principal == LOCAL_PRINCIPAL else self.principal

        def read() -> bytes:
            store.get(file_id, owner)
            return store.blob_path(file_id).read_bytes()

        try:
            return await anyio.to_thread.run_sync(read)
        except (StoredFileNotFound, FileNotFoundError):
            raise FileNotFoundError(f"no stored file {file_id!r}") from None


__all__ = ["Sandbox", "settings_with"]
