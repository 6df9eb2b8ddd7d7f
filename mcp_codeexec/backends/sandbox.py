"""The sandbox backend: what a sandbox *is*, on any engine. Each MCP session gets a hardened
sandbox; calls travel as one framed request over the sandbox's byte stream to the agent running as
its PID 1. Sessions -> sandboxes, the warm pool, idle stop, uploads and the calls live here once;
how a sandbox is created, found, stopped, removed and reached is the engine's (``engines.base.Engine``:
``engines.docker`` or ``engines.kubernetes``, built from the settings by ``engines.build``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import mimetypes
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from .. import mount_choice
from ..agent_client import AgentConnection, AgentGone
from ..checkpoint import Checkpointer, CheckpointFailed
from ..config import MiB, Settings
from ..engines import build_engine
from ..engines.base import POOL_KEEPALIVE_SECONDS, POOL_OWNER, CreateTicket, Engine, SandboxRecord
from ..errors import (
    CodeExecError,
    ContainerExpired,
    ExecutionTimeExceeded,
    FileNotFound,
    InvalidToolInput,
    OutputFileTooLarge,
    TooManyRequests,
    Unavailable,
)
from ..files import FileStore, PendingFile
from ..schemas import (
    BashInput,
    BashOutputBlock,
    BashResult,
    CodeInput,
    CodeOutputBlock,
    CodeResult,
    CreateResult,
    EditorInput,
    StrReplaceResult,
    ViewResult,
)
from ..skills import SkillNotFound, SkillSet, catalog_for
from .base import CallContext, CodeTools, ContainerInfo, Outcome, ProducedFile

log = logging.getLogger(__name__)

INPUT_DIR = "/workspace/inputs"
# The pool follows demand: new sessions within POOL_BURST_WINDOW count as one burst, and the pool
# grows to the largest recent burst (at most pool_max, and at most POOL_MEMORY_SHARE of the host's
# available memory at POOL_CONTAINER_BYTES each: an idle warm container's cgroup + its shim, as the
# bench measures it), then shrinks back to pool_size after pool_shrink_seconds without new sessions.
POOL_BURST_WINDOW = 10.0
POOL_CONTAINER_BYTES = 16 * MiB
POOL_MEMORY_SHARE = 0.25
POOL_RETRY_SECONDS = 10.0
LEADER_RECHECK_SECONDS = 1.0
SHARED_USE_SECONDS = 10.0
QUOTA_LOCK_WAIT = 60.0  # another replica making this principal's container: a create takes seconds
"""Replicas record a container's use in the database at most this often (idle stop reads it)."""
"""How often a follower replica's pool filler checks whether it has become the leader."""
# While sessions are taking containers (a burst), refilling waits: its starts would take the CPU
# the sessions' first calls (and their own starts) need right now.
POOL_REFILL_QUIET = 0.5
STDIO_SESSION = "local:process"  # the session key of a stdio (or in-process) server: see server.session_key_of
_AGENT_ERRORS: dict[str, type[CodeExecError]] = {
    "invalid_tool_input": InvalidToolInput,
    "file_not_found": FileNotFound,
    "output_file_too_large": OutputFileTooLarge,
    "execution_time_exceeded": ExecutionTimeExceeded,
    "unavailable": Unavailable,
    "too_many_requests": TooManyRequests,
}


def _thread(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    return anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


@dataclass
class Sandbox:
    record: SandboxRecord
    conn: AgentConnection
    owner: str
    last_used: float = field(default_factory=time.monotonic)
    inflight: int = 0
    repl_alive: bool = False
    """The container's Python interpreter holds state (as of the last code_execution call)."""
    too_big_to_checkpoint: bool = False
    """It used more than ``checkpoint_max_bytes`` at its idle stop: kept running instead."""
    services_alive: bool = False
    """Services (the `services` tool) were running as of the last services call: idle stops wait longer."""
    terminal: anyio.Lock = field(default_factory=anyio.Lock)
    """Bash calls wait here, not in the agent's queue: the host-side deadline of a call must not
    count the time it waited behind earlier calls (the agent runs one bash call at a time)."""

    @property
    def info(self) -> ContainerInfo:
        return ContainerInfo(self.record.id, self.record.expires, self.record.skills)


def write_repl_marker(data_dir: Path, container_id: str, alive: bool, idle_stop_seconds: float) -> None:
    """``<data>/repl/<id>.json``: whether the sandbox's Python interpreter holds state, and the idle
    limit that applies to it, for ``containers ls`` (another process)."""
    import json

    directory = data_dir / "repl"
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{container_id}.tmp"
    tmp.write_text(json.dumps({"alive": alive, "idle_stop_seconds": idle_stop_seconds, "updated": time.time()}))
    tmp.replace(directory / f"{container_id}.json")


def read_repl_marker(data_dir: Path, container_id: str) -> dict[str, Any] | None:
    import json

    try:
        return json.loads((data_dir / "repl" / f"{container_id}.json").read_text())
    except (OSError, ValueError):
        return None


def queue_upload(pending_dir: Path, file_id: str, filename: str, container_id: str) -> None:
    """Mark a stored file for delivery into ``container_id``; whichever server next calls into that
    container delivers it first. Works across processes (the CLI queues, the server delivers)."""
    queue = pending_dir / container_id
    queue.mkdir(parents=True, exist_ok=True)
    tmp = queue / f".{file_id}.tmp"
    tmp.write_text(filename)
    tmp.replace(queue / file_id)


class SandboxBackend:
    """The tools in sandboxes of one engine (``settings.backend``: docker or kubernetes)."""

    def __init__(self, settings: Settings, store: FileStore, engine: Engine | None = None) -> None:
        self.settings = settings
        self.store = store
        self.name = engine.name if engine is not None else settings.backend
        self._given_engine = engine
        self._manager: Engine | None = None  # the engine, once connected, its image checked and its leftovers reaped
        self._sandboxes: dict[str, Sandbox] = {}
        self._sessions: dict[str, str] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._pool: list[Sandbox] = []
        self._pool_wanted = anyio.Event()
        self._pool_changed = anyio.Event()  # set (and replaced) when a fill attempt ends
        self._pool_fills = 0  # pool containers being started
        self._pool_promised = 0  # sessions waiting for a container the filler is starting
        self._pool_demand: deque[float] = deque()  # when recent sessions asked for a new container
        self._pool_peak = 0  # the largest recent burst
        self._pool_peak_at = 0.0
        self._pool_retry_at = 0.0  # after a failed start, the pool waits before trying again
        self._pool_last_demand = 0.0
        # Starts at once, pool and sessions alike: a burst's starts finish one after another
        # instead of all at the end, and the engine is not thrashed.
        self._create_limiter = anyio.CapacityLimiter(settings.create_concurrency)
        self.first_reap_done = anyio.Event()  # the start-up reap (in the background) has finished
        self._tg: TaskGroup | None = None
        self._stack = AsyncExitStack()
        self.pending_dir = settings.data_dir / "pending"
        self._checkpoints: Checkpointer | None = None  # idle checkpoints with memory (runsc), see checkpoint.py
        # Replicas sharing a database set this to their leader election (mcp_codeexec/leader.py):
        # only the leader keeps a warm pool, reaps and prunes files. One server always leads.
        self.is_leader: Callable[[], bool] = lambda: True
        # ... and this to the shared session → container map (pg_store.SharedSessionMap), so a
        # session continues in its container whichever replica serves its next request.
        self.session_map: Any = None
        self._shared_use: dict[str, float] = {}  # when this replica last recorded a container's use

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> SandboxBackend:
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        try:
            await self._manager_or_raise()
        except Unavailable as exc:
            log.warning("%s backend not ready yet: %s", self.name, exc.message)
        except BaseException:
            # Cancelled while starting (a signal during start-up): leave the task group we entered,
            # or the caller's cancel scopes unwind out of order.
            self._tg.cancel_scope.cancel()
            await self._stack.aclose()  # not in a shield: that scope would sit inside the task group's
            raise
        self._tg.start_soon(self._reaper)
        if self.settings.pool_size > 0:
            self._tg.start_soon(self._pool_filler)
            self._tg.start_soon(self._pool_keepalive)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._tg is not None
        if self._manager is not None:
            self._manager.closing.set()  # creates still running remove what they make
        with anyio.CancelScope(shield=True):
            # Save before cancelling the task group: it holds each connection's reader, and a
            # cancelled reader closes its stream under the save request.
            for sandbox in self._sandboxes.values():
                await self._save_state(sandbox)  # the container keeps running: so does its interpreter
        self._tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            pool, self._pool = self._pool, []
            for sandbox in pool:
                await sandbox.conn.aclose()
                if self._manager is not None:
                    try:
                        await anyio.to_thread.run_sync(self._manager.remove, sandbox.record.id)
                    except Unavailable as exc:
                        log.warning("removing pool container %s: %s", sandbox.record.id, exc.message)
            for sandbox in self._sandboxes.values():
                await sandbox.conn.aclose()
            if self._manager is not None and not await anyio.to_thread.run_sync(self._manager.drain_creates, 30.0):
                log.warning("a sandbox create was still running at exit; its container removes itself")
            if self._manager is not None:
                self._manager.leases.release_all()  # the sandboxes are free for the next session to resume
        await self._stack.aclose()  # exits the task group: must not happen inside another cancel scope

    def idle_limit(self, sandbox: Sandbox) -> float:
        """Seconds idle before a stop: longer while its Python interpreter holds state (a stop loses it)."""
        if self._checkpointable(sandbox):
            return self.settings.idle_stop_seconds  # its checkpoint keeps the interpreter's state
        held = sandbox.repl_alive or sandbox.services_alive  # a stop loses the interpreter / the services
        if held and self.settings.repl_idle_stop_seconds > 0 and self.settings.idle_stop_seconds > 0:
            return max(self.settings.idle_stop_seconds, self.settings.repl_idle_stop_seconds)
        if held and self.settings.repl_idle_stop_seconds <= 0:
            return 0.0
        return self.settings.idle_stop_seconds

    @property
    def checkpointing(self) -> bool:
        return self._checkpoints is not None and self._checkpoints.enabled

    def _checkpointable(self, sandbox: Sandbox) -> bool:
        # Services are not checkpointed (their listening sockets were not tried through a restore).
        return (sandbox.repl_alive and not sandbox.services_alive and self.checkpointing
                and not sandbox.too_big_to_checkpoint)

    async def _too_big_to_checkpoint(self, sandbox: Sandbox) -> bool:
        """Check (once per idle stop) that its checkpoint stays within ``checkpoint_max_bytes``."""
        if not self._checkpointable(sandbox) or self._checkpoints is None:
            return False
        used = await _thread(self._checkpoints.memory_bytes, sandbox.record.ref)
        if used is None or used <= self.settings.checkpoint_max_bytes:
            return False
        log.info("sandbox %s: uses %d MiB, more than checkpoint_max_bytes: kept running (repl_idle_stop_seconds)",
                 sandbox.record.id, used // MiB)
        sandbox.too_big_to_checkpoint = True
        return True

    async def _checkpoint(self, sandbox: Sandbox) -> bool:
        """Checkpoint an idle sandbox whose interpreter holds state (the engine stops it); False: not done."""
        if not self._checkpointable(sandbox) or self._checkpoints is None:
            return False
        try:
            stats = await _thread(self._checkpoints.create, sandbox.record.ref)
        except CheckpointFailed as exc:
            log.warning("sandbox %s: idle checkpoint failed (%s); stopping it, its interpreter is lost", sandbox.record.id, exc)
            return False
        log.info("sandbox %s: checkpointed with its memory in %.2f s (%s bytes)", sandbox.record.id, stats.seconds,
                 stats.size_bytes if stats.size_bytes is not None else "?")
        return True

    async def _save_state(self, sandbox: Sandbox, reason: str | None = None) -> None:
        """Ask the agent to copy the shell state onto the workspace (it lives on tmpfs while running);
        ``reason`` is what the next code_execution call's stderr says lost the interpreter."""
        if sandbox.conn.closed.is_set():
            return
        try:
            await sandbox.conn.request({"op": "save_state", **({"reason": reason} if reason else {})}, timeout=5)
        except AgentGone as exc:
            log.info("sandbox %s: shell state not saved: %s", sandbox.record.id, exc.message)

    async def _manager_or_raise(self) -> Engine:
        if self._manager is None:
            manager = self._given_engine or await _thread(build_engine, self.settings)
            # Idle checkpoints with memory are a Docker + runsc feature (checkpoint.py); other engines have none.
            self._checkpoints = await _thread(manager.checkpointer) if hasattr(manager, "checkpointer") else None
            await _thread(manager.resolve_image)
            self._manager = manager
            # The first reap runs beside the session: with many leftovers (or a busy engine) it
            # takes seconds, and clients give up on an `initialize` that waits for it. It is safe
            # beside this server's own creates, as it is beside other live servers'.
            if self._tg is not None:
                self._tg.start_soon(self._reap_once)
        return self._manager

    async def _reap_once(self) -> None:
        assert self._manager is not None
        if not self.is_leader():  # the leader reaps (for every server sharing its engine)
            self.first_reap_done.set()
            return
        try:
            removed = await _thread(self._manager.reap)
        except Unavailable as exc:
            log.warning("reaper: %s", exc.message)
            return
        finally:
            self.first_reap_done.set()
        if removed:
            log.info("reaped %d expired or leftover sandboxes", len(removed))
        for cid in removed:
            gone = self._sandboxes.pop(cid, None)
            if gone is not None:
                await gone.conn.aclose()

    async def _reaper(self) -> None:
        while True:
            await anyio.sleep(self.settings.reap_interval_seconds)
            if self._manager is None:
                continue
            removed = []
            try:
                if self.is_leader():
                    removed = await _thread(self._manager.reap)
                    await _thread(self.store.prune)
            except Unavailable as exc:
                log.warning("reaper: %s", exc.message)
                continue
            for cid in removed:
                gone = self._sandboxes.pop(cid, None)
                if gone is not None:
                    await gone.conn.aclose()
            await self._stop_idle()

    async def _stop_idle(self) -> None:
        """Idle sandboxes are stopped to free memory; the next call starts them again, files intact."""
        if self._manager is None:
            return
        now = time.monotonic()
        for cid, sandbox in list(self._sandboxes.items()):
            limit = self.idle_limit(sandbox)
            if limit <= 0 or not self._manager.stoppable or sandbox.inflight or now - sandbox.last_used < limit:
                continue
            if self.session_map is not None and await self._used_elsewhere(cid, limit):
                continue  # idle here, busy on another replica: not ours to stop
            async with self._lock(cid):
                if sandbox.inflight or now - sandbox.last_used < limit or self._sandboxes.get(cid) is not sandbox:
                    continue
                if await self._too_big_to_checkpoint(sandbox):
                    continue  # its idle limit is now repl_idle_stop_seconds
                del self._sandboxes[cid]
                # The reason is read only by a fresh interpreter: after a checkpoint, one that failed to restore.
                checkpointing = self._checkpointable(sandbox)
                restore_note = "; no memory checkpoint could be restored" if checkpointing else ""
                await self._save_state(sandbox, reason=f"idle for {now - sandbox.last_used:.0f} s{restore_note}")
                if sandbox.repl_alive and not checkpointing:
                    await _thread(write_repl_marker, self.settings.data_dir, cid, False, self.settings.idle_stop_seconds)
                await sandbox.conn.aclose()
                try:
                    if not await self._checkpoint(sandbox):
                        await _thread(self._manager.stop, cid)
                except Unavailable as exc:
                    log.warning("stopping idle sandbox %s: %s", cid, exc.message)
                await _thread(self._manager.leases.release, cid)

    async def _note_use(self, cid: str) -> None:
        """Replicas: tell the others this container is in use (at most every SHARED_USE_SECONDS)."""
        if self.session_map is None:
            return
        now = time.monotonic()
        every = min(SHARED_USE_SECONDS, self.settings.idle_stop_seconds / 4 or SHARED_USE_SECONDS)
        if now - self._shared_use.get(cid, -every) < every:
            return
        self._shared_use[cid] = now
        try:
            await _thread(self.session_map.touch, cid)
        except Unavailable as exc:
            log.warning("sandbox %s: use not recorded: %s", cid, exc.message)

    async def _used_elsewhere(self, cid: str, limit: float) -> bool:
        try:
            used = await _thread(self.session_map.last_used, cid)
        except Unavailable:
            return True  # cannot tell: stopping it under another replica's call would be worse
        return used is not None and time.time() - used < limit

    def pool_target(self) -> int:
        """How many warm containers the pool holds now: pool_size, or the last burst's size while it is recent."""
        s = self.settings
        if s.pool_size <= 0 or not self.is_leader():
            return 0
        if time.monotonic() - self._pool_peak_at > s.pool_shrink_seconds:
            self._pool_peak = 0
        if self._pool_peak <= s.pool_size:
            return s.pool_size
        return max(s.pool_size, min(self._pool_peak, s.pool_max, pool_memory_cap()))

    def _note_demand(self) -> None:
        now = time.monotonic()
        demand = self._pool_demand
        demand.append(now)
        while demand and now - demand[0] > POOL_BURST_WINDOW:
            demand.popleft()
        self._pool_peak = max(self._pool_peak if now - self._pool_peak_at <= self.settings.pool_shrink_seconds else 0, len(demand))
        self._pool_peak_at = self._pool_last_demand = now
        self._pool_wanted.set()

    async def _pool_filler(self) -> None:
        """Keeps the pool at its target: up to create_concurrency starts at once (they overlap
        well: much of a start is waiting on dockerd and containerd), extra containers removed when
        the target falls."""
        assert self._tg is not None
        self._pool_fills += 1  # a session arriving meanwhile waits for this check's outcome
        try:
            resumes = await self._first_session_resumes()
        finally:
            self._pool_fills -= 1
        if resumes:
            # The stdio server's one session will resume a sandbox: a warm container would only be
            # made and removed again (clients that start a server per call would pay it every call).
            log.info("pool: not filled (the session resumes an idle sandbox)")
            self._pool_fill_ended()
            return
        announced = False
        while True:
            self._pool_wanted = anyio.Event()
            target = self.pool_target()
            while len(self._pool) > target:
                self._tg.start_soon(self._discard, self._pool.pop())
            wait: float | None = None
            now = time.monotonic()
            quiet_at = self._pool_last_demand + POOL_REFILL_QUIET
            if now < max(self._pool_retry_at, quiet_at) and len(self._pool) < target:
                wait = max(self._pool_retry_at, quiet_at) - now
            else:
                while len(self._pool) + self._pool_fills < target and self._pool_fills < self.settings.create_concurrency:
                    self._pool_fills += 1
                    self._tg.start_soon(self._fill_one)
            full = len(self._pool) >= target and self._pool_fills == 0
            if full and not announced:
                log.info("pool: %d/%d warm containers ready", len(self._pool), target)
            announced = full
            if target > self.settings.pool_size:  # wake up to shrink when the burst is over
                shrink_at = self._pool_peak_at + self.settings.pool_shrink_seconds - now + 0.01
                wait = shrink_at if wait is None else min(wait, shrink_at)
            if not self.is_leader():  # look again soon: this replica may take over
                wait = LEADER_RECHECK_SECONDS if wait is None else min(wait, LEADER_RECHECK_SECONDS)
            with anyio.move_on_after(wait if wait is not None else float("inf")):
                await self._pool_wanted.wait()

    async def _fill_one(self) -> None:
        try:
            manager = await self._manager_or_raise()
            sandbox = await self._start_new(manager, owner="", pool=True)
        except (CodeExecError, OSError) as exc:  # e.g. a full disk: retry later, never take the server down
            log.warning("pool: %s", getattr(exc, "message", None) or exc)
            self._pool_retry_at = time.monotonic() + POOL_RETRY_SECONDS
        else:
            self._pool.append(sandbox)
        finally:
            self._pool_fills -= 1
            self._pool_fill_ended()

    async def _first_session_resumes(self) -> bool:
        if self.settings.transport != "stdio" or not self.settings.resume_sandbox:
            return False
        try:
            manager = await self._manager_or_raise()
            return bool(await _thread(manager.resumable, "local"))
        except Unavailable:
            return False

    async def _pool_keepalive(self) -> None:
        """Unclaimed pool containers exit when their server has been silent for a while (the agent's
        POOL_SILENCE): tell ours we are alive."""
        while True:
            await anyio.sleep(POOL_KEEPALIVE_SECONDS)
            for sandbox in list(self._pool):
                with contextlib.suppress(AgentGone):
                    await sandbox.conn.request({"op": "ping"}, timeout=10)

    async def _tell_claimed(self, sandbox: Sandbox) -> None:
        """The container is a session's now: its agent must not exit when this server goes."""
        with contextlib.suppress(AgentGone):
            await sandbox.conn.notify({"op": "claim"})

    def _pool_fill_ended(self) -> None:
        self._pool_wanted.set()
        self._pool_changed.set()
        self._pool_changed = anyio.Event()

    async def _from_pool(self) -> Sandbox | None:
        """A live pool sandbox, or None. When the pool is empty while the filler is starting one, the
        first session to ask waits for that one: it is further along than a new start would be."""
        waited = False
        while True:
            while self._pool:
                sandbox = self._pool.pop(0)
                self._pool_wanted.set()
                if not sandbox.conn.closed.is_set():
                    return sandbox
                assert self._tg is not None
                self._tg.start_soon(self._discard, sandbox)  # died while waiting: never handed out
            if waited or self._pool_fills <= self._pool_promised:
                return None
            waited = True
            self._pool_promised += 1
            try:
                with anyio.move_on_after(60):
                    await self._pool_changed.wait()
            finally:
                self._pool_promised -= 1

    async def _discard(self, sandbox: Sandbox) -> None:
        await sandbox.conn.aclose()
        if self._manager is not None:
            try:
                await _thread(self._manager.remove, sandbox.record.id)
            except Unavailable as exc:
                log.warning("removing dead pool container %s: %s", sandbox.record.id, exc.message)

    # --- containers -------------------------------------------------------------------------

    async def _connect(self, record: SandboxRecord, handle: Any, owner: str) -> Sandbox:
        manager = self._manager
        assert manager is not None and self._tg is not None
        stream, docker_mux = await manager.open_stream(record, handle)

        async def reconnect() -> tuple[Any, bool]:
            # Only a live sandbox of the same id is attached again; the agent's hello then tells
            # whether it is still the same container life (engines/base.py, stream_resume_seconds).
            again, again_handle = await _thread(manager.find, record.id)
            return await manager.open_stream(again, again_handle)

        conn = AgentConnection(stream, docker_mux=docker_mux, name=record.id, reconnect=reconnect,
                               resume_seconds=getattr(manager, "stream_resume_seconds", 0.0))
        self._tg.start_soon(conn.run_reader)
        try:
            await conn.hello(timeout=30)
        except AgentGone:
            await conn.aclose()
            raise Unavailable(f"the sandbox {record.id} did not start its agent") from None
        return Sandbox(record, conn, owner)

    async def _start_new(self, manager: Engine, *, owner: str, pool: bool, skills: SkillSet | None = None,
                         extra_mounts: list[Any] | None = None) -> Sandbox:
        ticket = CreateTicket()
        try:
            async with self._create_limiter:
                # Host folders are a Docker engine feature: other engines are only asked for what they know.
                extra = {"extra_mounts": extra_mounts} if extra_mounts else {}
                record, container = await _thread(lambda: manager.create(owner, pool=pool, ticket=ticket, skills=skills,
                                                                         **extra))
        except anyio.get_cancelled_exc_class():
            # The create carries on in its worker thread: it removes what it makes, or (made
            # already) we do. Nothing is left behind that no session and no pool knows of.
            made = ticket.abandon()
            if made is not None:
                with anyio.CancelScope(shield=True):
                    await _thread(manager.remove, made)
            raise
        try:
            return await self._connect(record, container, owner)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _thread(manager.remove, record.id)
            raise

    async def _new_for(self, owner: str, wanted: tuple[Any, ...] | None = None, mounts: Any = None) -> Sandbox:
        if owner == "local":  # the stdio user: no container quota
            return await self._make_for(owner, wanted, mounts)
        # Counting the principal's sandboxes and making one more is one step: per principal here,
        # and across replicas under the shared map's lock, or two creates at once both pass.
        async with self._lock(f"quota:{owner}"):
            shared = self.session_map if hasattr(self.session_map, "lock_principal") else None
            if shared is not None and not await _thread(shared.lock_principal, owner, QUOTA_LOCK_WAIT):
                raise TooManyRequests(f"another server has been making a container for this principal for "
                                      f"{QUOTA_LOCK_WAIT:.0f} s; retry shortly")
            try:
                sandbox = await self._make_for(owner, wanted, mounts)
                self._sandboxes[sandbox.record.id] = sandbox  # counted by the next create at once
                return sandbox
            finally:
                if shared is not None:
                    with anyio.CancelScope(shield=True):
                        await _thread(shared.unlock_principal, owner)

    async def _make_for(self, owner: str, wanted: tuple[Any, ...] | None, mounts: Any) -> Sandbox:
        owned = sum(1 for s in self._sandboxes.values() if s.owner == owner)
        if owner != "local" and self.session_map is not None and owned < self.settings.max_containers_per_principal:
            # Replicas: the quota counts the principal's running sandboxes on the engine, whichever replica made them.
            manager = await self._manager_or_raise()
            owned = max(owned, await _thread(lambda: sum(1 for r, _ in manager.list(all_=False) if r.owner == owner)))
        if owner != "local" and owned >= self.settings.max_containers_per_principal:
            raise TooManyRequests(f"at most {self.settings.max_containers_per_principal} containers per principal")
        manager = await self._manager_or_raise()
        skills = await _thread(_skill_set, self.settings, owner, wanted)
        # Pool containers carry the folder skills only: they fit only a sandbox that wants just those.
        poolable = [s.container_entry() for s in skills.skills] == [dict(e) for e in _folder_entries(self.settings)]
        names = mount_choice.selection(mounts)
        extra = await _thread(mount_choice.resolve_selected, self.settings, names, owner) if names else None
        poolable = poolable and not extra  # pool containers have the operator's mounts only
        if self.settings.pool_size > 0:
            self._note_demand()
        sandbox = await self._from_pool() if poolable else None
        if sandbox is not None:
            try:
                await _thread(manager.claim, sandbox.record, owner)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._discard(sandbox)  # neither in the pool nor anyone's: do not leak it
                raise
            sandbox.owner = owner
            sandbox.record = dataclasses.replace(sandbox.record, owner=owner, pool=False)
            await self._tell_claimed(sandbox)
            return sandbox
        return await self._start_new(manager, owner=owner, pool=False, skills=skills, extra_mounts=extra)

    async def _reattach(self, cid: str, owner: str) -> Sandbox:
        manager = await self._manager_or_raise()
        record, container = await _thread(manager.find, cid)
        if record.pool and record.owner == POOL_OWNER:
            raise ContainerExpired(cid)  # a server's warm container, not handed out yet: nobody's to use
        if record.owner not in (owner, "") and owner != "local":
            raise ContainerExpired(cid)  # never reveal another principal's container
        try:
            return await self._connect(record, container, record.owner or owner)
        except Unavailable as exc:
            # The container runs but its agent does not answer: user code stopped it (SIGSTOP
            # reaches PID 1 under gVisor) or it is wedged. Restart the container (the workspace
            # stays) rather than failing every later call the same way.
            log.warning("sandbox %s: %s; restarting the container", cid, exc.message)
            await _thread(manager.stop, cid)
            record, container = await _thread(manager.find, cid)
            return await self._connect(record, container, record.owner or owner)

    def _lock(self, key: str) -> anyio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = anyio.Lock()
        return lock

    async def sandbox_for(self, ctx: CallContext, container_id: str | None) -> Sandbox:
        """The sandbox a call runs in: the named one, else the session's (created lazily)."""
        if container_id is not None:
            async with self._lock(container_id):
                sandbox = self._sandboxes.get(container_id)
                if sandbox is not None and sandbox.owner not in (ctx.principal, "local") and ctx.principal != "local":
                    raise ContainerExpired(container_id)
                if sandbox is None or sandbox.conn.closed.is_set() or sandbox.record.expired:
                    # (expired: the engine's find says so, even before its reaper or deadline removes it)
                    sandbox = await self._reattach(container_id, ctx.principal)
                    self._sandboxes[container_id] = sandbox
                await _check_skills(self.settings, sandbox, ctx)
                self._sessions.setdefault(ctx.session_key, container_id)
                await self._lease(container_id)
                return sandbox
        async with self._lock(ctx.session_key):
            cid = self._sessions.get(ctx.session_key)
            if cid is None and self.session_map is not None:
                cid = await _thread(self.session_map.get, ctx.session_key)
            sandbox = self._sandboxes.get(cid) if cid else None
            if sandbox is not None and not sandbox.conn.closed.is_set() and not sandbox.record.expired:
                await _check_skills(self.settings, sandbox, ctx)
                return sandbox
            sandbox = None
            if cid is not None:
                try:
                    async with self._lock(cid):  # not halfway through its idle stop (a checkpoint takes seconds)
                        sandbox = await self._reattach(cid, ctx.principal)
                except ContainerExpired:
                    # The session's own container was removed or expired: like the hosted tool,
                    # the session continues in a fresh one (an explicit container_id still errors).
                    log.warning("session container %s is gone; starting a fresh one", cid)
            elif ctx.session_key == STDIO_SESSION and ctx.principal == "local" and self.settings.resume_sandbox:
                sandbox = await self._resume(ctx.principal, ctx.mounts)
            if sandbox is not None:
                await _check_skills(self.settings, sandbox, ctx)
            if sandbox is None:
                sandbox = await self._new_for(ctx.principal, ctx.skills, ctx.mounts)
            self._sandboxes[sandbox.record.id] = sandbox
            self._sessions[ctx.session_key] = sandbox.record.id
            if self.session_map is not None and sandbox.record.id != cid:
                await _thread(self.session_map.set, ctx.session_key, sandbox.record.id)
            await self._lease(sandbox.record.id)
            return sandbox

    async def _lease(self, cid: str) -> None:
        """Mark the sandbox as in use by this server (no other server resumes or evicts it)."""
        if self._manager is not None and not self._manager.leases.holds(cid):
            try:
                await _thread(self._manager.leases.acquire, cid)
            except OSError as exc:
                log.warning("sandbox %s: cannot take its lease: %s", cid, exc)

    async def _resume(self, principal: str, mounts: Any = None) -> Sandbox | None:
        """A new stdio session continues in the local user's most recently used sandbox that no
        live server is using: clients that start a server per tool call (langchain-mcp-adapters'
        default) keep their files, shell state and container. ``resume_sandbox = false`` (``serve
        --fresh``) starts fresh instead."""
        manager = await self._manager_or_raise()
        for cid in await _thread(manager.resumable, principal):
            if not await _thread(manager.leases.acquire, cid):
                continue  # another server took it meanwhile
            try:
                sandbox = await self._reattach(cid, principal)
            except (ContainerExpired, Unavailable) as exc:
                log.info("not resuming sandbox %s: %s", cid, exc.message)
                await _thread(manager.leases.release, cid)
                continue
            if not await _thread(mount_choice.matches, self.settings, sandbox.record.mounts, mounts, principal):
                await sandbox.conn.aclose()  # made with other named mounts: not this session's to resume
                await _thread(manager.leases.release, cid)
                continue
            log.info("resuming sandbox %s (the most recent one no server is using)", cid)
            return sandbox
        return None

    async def end_session(self, session_key: str) -> None:
        self._sessions.pop(session_key, None)
        self._locks.pop(session_key, None)

    async def aclose(self) -> None:
        await self.__aexit__(None, None, None)

    async def start(self) -> None:
        await self.__aenter__()

    # --- calls ------------------------------------------------------------------------------

    async def _call(
        self, sandbox: Sandbox, message: dict[str, Any], *, timeout: float, on_frame: Any = None, terminal: bool = False
    ) -> dict[str, Any]:
        sandbox.inflight += 1
        try:
            await self._note_use(sandbox.record.id)
            await self._deliver_pending(sandbox)
            async with sandbox.terminal if terminal else contextlib.nullcontext():
                reply = await sandbox.conn.request(message, on_frame=on_frame, timeout=timeout)
        except AgentGone as exc:
            self._sandboxes.pop(sandbox.record.id, None)
            raise Unavailable(
                f"{exc.message}. The container may have been stopped or removed; the next call "
                f"reconnects to {sandbox.record.id} if it still exists."
            ) from exc
        finally:
            sandbox.inflight -= 1
            sandbox.last_used = time.monotonic()
            with anyio.CancelScope(shield=True):
                await self._note_use(sandbox.record.id)
        if reply["type"] == "error":
            error = _AGENT_ERRORS.get(reply.get("code", ""), Unavailable)(reply.get("message") or "sandbox error")
            error.container = sandbox.info
            raise error
        return reply["result"]

    async def sandbox_manager(self) -> Engine:
        """The engine-side manager (snapshots.py forks and snapshots through it)."""
        return await self._manager_or_raise()

    async def agent_request(
        self, ctx: CallContext, container_id: str | None, message: dict[str, Any], *, timeout: float = 30.0
    ) -> tuple[dict[str, Any], Sandbox]:
        """One agent op in the caller's sandbox (the session's, or ``container_id``): the hook for
        extensions beyond the hosted tools (services.py)."""
        sandbox = await self.sandbox_for(ctx, container_id)
        return await self._call(sandbox, message, timeout=timeout), sandbox

    async def bash(self, request: BashInput, ctx: CallContext) -> Outcome:
        sandbox = await self.sandbox_for(ctx, request.container_id)
        s = self.settings
        receiver = _FileReceiver(self.store, ctx.principal, sandbox.record.id, s.max_output_file_bytes)
        started = time.monotonic()

        async def on_frame(frame: dict[str, Any], blob: bytes) -> None:
            if frame["type"] == "file":
                receiver.chunk(frame, blob)
            elif frame["type"] == "progress" and ctx.progress is not None:
                tail = (frame.get("stdout_tail") or "") + (frame.get("stderr_tail") or "")
                await ctx.progress(time.monotonic() - started, tail[-2000:])

        message = {
            "op": "bash",
            "command": request.command,
            "timeout": s.call_timeout,
            "restart": request.restart,
            "max_output": s.max_output_bytes,
            "max_spill": s.max_spill_bytes,
            "max_file": s.max_output_file_bytes,
            "progress_interval": s.progress_interval if ctx.progress is not None else None,
        }
        try:
            result = await self._call(sandbox, message, timeout=s.call_timeout + 30, on_frame=on_frame, terminal=True)
            files = await receiver.commit_all()
        finally:
            receiver.abort_all()
        if result.get("timed_out"):
            err = ExecutionTimeExceeded(
                f"the command ran past the {s.call_timeout:g} s limit and was stopped",
                detail=(result.get("stdout", "") + result.get("stderr", ""))[-4000:],
            )
            err.container = sandbox.info
            raise err
        block = BashResult(
            stdout=result["stdout"],
            stderr=result["stderr"],
            return_code=result["return_code"],
            content=[BashOutputBlock(file_id=f.file_id) for f in files],
        )
        return Outcome(block, sandbox.info, files)

    async def code(self, request: CodeInput, ctx: CallContext, tools: CodeTools | None = None) -> Outcome:
        """A cell in the container's persistent interpreter. The agent enforces the cell limit (an
        interrupted cell is a normal result saying ``detection_timeout``); the host's backstop (the
        limit plus the time tool calls were pending, plus a margin) answers execution_time_exceeded."""
        sandbox = await self.sandbox_for(ctx, request.container_id)
        s = self.settings
        receiver = _FileReceiver(self.store, ctx.principal, sandbox.record.id, s.max_output_file_bytes)
        started = time.monotonic()
        pending: dict[str, float] = {}
        waited = 0.0  # seconds with at least one tool call pending (the cell's clock is paused then)
        busy_since = 0.0  # when the current run of pending calls began
        max_in_flight = tools.max_in_flight if tools else s.tools_max_in_flight
        pending_timeout = tools.pending_timeout if tools else s.tools_pending_timeout

        def admit_tool(frame: dict[str, Any]) -> str | None:
            """Register a tool call (None: run it; else the refusal). The agent bounds the calls
            already; the host holds the same bound itself and ignores a call id already running,
            so frames that reach the channel by another way (see SECURITY.md) gain nothing."""
            nonlocal busy_since
            call_id = frame.get("call_id")
            if not isinstance(call_id, str) or call_id in pending:
                return ""  # malformed or a replay of a call in progress: not answered
            if len(pending) >= max_in_flight:
                return f"more than {max_in_flight} tool calls in flight"
            if not pending:
                busy_since = time.monotonic()
            pending[call_id] = time.monotonic()
            return None

        async def refuse_tool(rid: int, frame: dict[str, Any], why: str) -> None:
            with contextlib.suppress(AgentGone):
                await sandbox.conn.notify({"op": "tool_result", "target": rid, "call_id": frame["call_id"],
                                           "text": why, "is_error": True})

        async def run_tool(rid: int, frame: dict[str, Any]) -> None:
            nonlocal waited
            call_id = str(frame.get("call_id"))
            try:
                text, is_error = await _run_code_tool(tools, frame, pending_timeout)
            finally:
                if pending.pop(call_id, None) is not None and not pending:
                    waited += time.monotonic() - busy_since
            if len(text) > MAX_TOOL_RESULT_CHARS:
                text = text[:MAX_TOOL_RESULT_CHARS] + f"\n[... tool result cut at {MAX_TOOL_RESULT_CHARS} characters ...]"
            try:
                await sandbox.conn.notify({"op": "tool_result", "target": rid, "call_id": call_id,
                                           "text": text, "is_error": is_error})
            except AgentGone:
                pass  # the call is over or the sandbox went away; the code sees its own failure

        message = {
            "op": "python",
            "code": request.code,
            "timeout": s.code_cell_timeout,
            "restart": request.restart,
            "max_output": s.max_output_bytes,
            "max_spill": s.max_spill_bytes,
            "max_file": s.max_output_file_bytes,
            "progress_interval": s.progress_interval if ctx.progress is not None else None,
            "tools": [f.spec() for f in tools.functions] if tools else [],
            "pending_timeout": pending_timeout,
            "max_in_flight": max_in_flight,
        }
        backstop = s.code_cell_timeout + REPL_BACKSTOP_MARGIN
        result: dict[str, Any] | None = None
        failure: CodeExecError | None = None
        running = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:

                async def on_frame(frame: dict[str, Any], blob: bytes) -> None:
                    if frame["type"] == "file":
                        receiver.chunk(frame, blob)
                    elif frame["type"] == "tool_call":
                        refusal = admit_tool(frame)
                        if refusal is None:
                            tg.start_soon(run_tool, frame["id"], frame)
                        elif refusal:
                            tg.start_soon(refuse_tool, frame["id"], frame, refusal)
                    elif frame["type"] == "progress" and ctx.progress is not None:
                        tail = (frame.get("stdout_tail") or "") + (frame.get("stderr_tail") or "")
                        await ctx.progress(time.monotonic() - started, tail[-2000:])

                async def watchdog() -> None:
                    await running.wait()  # the clock starts when the cell does, not while it waits for the terminal
                    begun = time.monotonic()
                    while True:
                        now = time.monotonic()
                        paused = waited + (now - busy_since if pending else 0.0)
                        left = begun + backstop + paused - now
                        if left <= 0:
                            tg.cancel_scope.cancel()
                            return
                        await anyio.sleep(min(left, 1.0))

                tg.start_soon(watchdog)
                try:
                    async with sandbox.terminal:
                        running.set()
                        result = await self._call(sandbox, message, timeout=10 * 24 * 3600, on_frame=on_frame)
                except InvalidToolInput as exc:
                    failure = exc
                    if "unknown op 'python'" in exc.message:  # an image built before the REPL existed
                        failure = Unavailable(
                            f"the sandbox image of {sandbox.record.id} has no Python REPL (its agent predates "
                            "code_execution); rebuild it with `mcp-codeexec image build`"
                        )
                        failure.container = sandbox.info
                except CodeExecError as exc:
                    failure = exc  # raised below, outside the task group (which would wrap it in a group)
                tg.cancel_scope.cancel()
            if failure is not None:
                raise failure
            if result is None:
                err = ExecutionTimeExceeded(f"the cell did not finish within {backstop:g} s (the server's backstop)")
                err.container = sandbox.info
                raise err
            files = await receiver.commit_all()
        finally:
            receiver.abort_all()
        alive = bool(result.get("repl_alive"))
        if alive != sandbox.repl_alive:
            sandbox.repl_alive = alive
            await _thread(write_repl_marker, self.settings.data_dir, sandbox.record.id, alive, self.idle_limit(sandbox))
        if result.get("timed_out"):
            err = ExecutionTimeExceeded(
                "the cell was stopped", detail=(result.get("stdout", "") + result.get("stderr", ""))[-4000:]
            )
            err.container = sandbox.info
            raise err
        block = CodeResult(
            stdout=result["stdout"],
            stderr=result["stderr"],
            return_code=result["return_code"],
            content=[CodeOutputBlock(file_id=f.file_id) for f in files],
        )
        meta = {"codeexec/repl": {"restarted": result.get("restarted"), "interrupted": bool(result.get("interrupted"))}}
        return Outcome(block, sandbox.info, files, meta=meta)

    async def editor(self, request: EditorInput, ctx: CallContext) -> Outcome:
        message = _editor_message(request, self.settings)
        sandbox = await self.sandbox_for(ctx, request.container_id)
        result = await self._call(sandbox, message, timeout=self.settings.call_timeout + 30)
        if request.command == "view":
            block: Any = ViewResult(**result)
        elif request.command == "create":
            block = CreateResult(**result)
        else:
            block = StrReplaceResult(**result)
        return Outcome(block, sandbox.info)

    # --- uploads ------------------------------------------------------------------------------

    async def attach_file(self, file_id: str, container_id: str, principal: str) -> str:
        """Queue a stored file for the container; it lands in /workspace/inputs before the next call
        (immediately when this server holds the container)."""
        record = await _thread(self.store.get, file_id, None if principal == "local" else principal)
        await self._check_owner(container_id, principal)
        await _thread(queue_upload, self.pending_dir, record.id, record.filename, container_id)
        sandbox = self._sandboxes.get(container_id)
        if sandbox is not None and not sandbox.conn.closed.is_set():
            await self._deliver_pending(sandbox)
        return f"{INPUT_DIR}/{record.filename}"

    async def _check_owner(self, container_id: str, principal: str) -> None:
        """Only the owner (or the local user) may touch a container; others get container_expired."""
        sandbox = self._sandboxes.get(container_id)
        if sandbox is not None:
            owner = sandbox.owner
        else:
            manager = await self._manager_or_raise()
            record, _ = await _thread(manager.find, container_id)
            owner = record.owner
        if principal != "local" and owner not in (principal, ""):
            raise ContainerExpired(container_id)

    async def _deliver_pending(self, sandbox: Sandbox) -> None:
        queue = self.pending_dir / sandbox.record.id
        if not queue.is_dir():  # one stat per call when nothing is queued
            return
        for marker in sorted(await _thread(lambda: list(queue.iterdir()))):
            if marker.name.startswith("."):
                continue
            filename = marker.read_text()
            await self._put_file(sandbox, marker.name, f"{INPUT_DIR}/{filename}")
            marker.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            queue.rmdir()

    async def _put_file(self, sandbox: Sandbox, file_id: str, path: str) -> None:
        blob_path = self.store.blob_path(file_id)

        async def chunks() -> AsyncIterator[bytes]:
            async with await anyio.open_file(blob_path, "rb") as fh:
                while chunk := await fh.read(1024 * 1024):
                    yield chunk

        await sandbox.conn.put_file(path, chunks())


MAX_TOOL_RESULT_CHARS = 4 * 1024 * 1024  # a tool result passed into the code (the frame stays far below the agent's cap)
REPL_BACKSTOP_MARGIN = 35.0  # past the cell limit: the agent's interrupt grace, a restart, output files


async def _run_code_tool(tools: CodeTools | None, frame: dict[str, Any], pending_timeout: float) -> tuple[str, bool]:
    """Run one tool call from the code; every failure becomes an is_error text for the code."""
    name, arguments = frame.get("name"), frame.get("input")
    if tools is None or not any(f.name == name for f in tools.functions):
        return f"unknown tool {name!r}", True
    if not isinstance(arguments, dict):
        return "a tool takes one dict of arguments", True
    with anyio.move_on_after(pending_timeout + 5):
        try:
            text, is_error = await tools.call(str(name), arguments)
        except CodeExecError as exc:
            return f"{exc.error_code}: {exc.message}", True
        except Exception as exc:  # noqa: BLE001 - a foreign tool handler's failure is the code's to see
            log.warning("tool %s called from code failed: %r", name, exc)
            return f"the tool failed: {type(exc).__name__}: {exc}", True
        return str(text), bool(is_error)
    return f"no response from the tool within {pending_timeout:g} s", True


def _skill_set(settings: Settings, principal: str, wanted: tuple[Any, ...] | None) -> SkillSet:
    """The skills a new container of ``principal`` gets; SkillNotFound becomes invalid_tool_input."""
    catalog = catalog_for(settings)
    try:
        return catalog.default_for(principal) if wanted is None else catalog.resolve(wanted, principal)
    except SkillNotFound as exc:
        raise InvalidToolInput(str(exc)) from None


def _folder_entries(settings: Settings) -> list[dict[str, str]]:
    return catalog_for(settings).folder_set().entries()


async def _check_skills(settings: Settings, sandbox: Sandbox, ctx: CallContext) -> None:
    """A container keeps the skills (and named mounts) it was created with: selecting others is refused."""
    if ctx.mounts is not None:
        try:
            await _thread(mount_choice.check_existing, settings, sandbox.record.mounts, ctx.mounts, sandbox.record.id,
                          ctx.principal)
        except InvalidToolInput as err:
            err.container = sandbox.info
            raise
    if ctx.skills is None:
        return
    wanted = (await _thread(_skill_set, settings, ctx.principal, ctx.skills)).entries()
    have = [dict(e) for e in sandbox.record.skills]
    if wanted != have:
        err = InvalidToolInput(
            f"container {sandbox.record.id} was created with the skills {have or 'none'}; a container's skills are fixed "
            f"when it is created. Use a new container for {wanted or 'no skills'}."
        )
        err.container = sandbox.info
        raise err


def _editor_message(request: EditorInput, settings: Settings) -> dict[str, Any]:
    """The agent request for a validated editor input (EditorInput checked the per-command fields)."""
    if request.command == "view":
        return {
            "op": "view", "path": request.path, "view_range": request.view_range,
            "max_bytes": settings.max_view_bytes, "max_media_bytes": settings.max_view_media_bytes,
        }
    if request.command == "create":
        return {"op": "create", "path": request.path, "file_text": request.file_text}
    return {"op": "str_replace", "path": request.path, "old_str": request.old_str, "new_str": request.new_str}


class _FileReceiver:
    """Streams output-file frames into the store; commits only when the whole call succeeded."""

    def __init__(self, store: FileStore, principal: str, container_id: str, max_size: int) -> None:
        self.store = store
        self.principal = principal
        self.container_id = container_id
        self.max_size = max_size
        self.pending: dict[str, PendingFile] = {}

    def chunk(self, frame: dict[str, Any], blob: bytes) -> None:
        name = frame["name"]
        pending = self.pending.get(name)
        if pending is None:
            mime = mimetypes.guess_type(name)[0]
            pending = self.store.begin(
                filename=name, origin="output", principal=self.principal, container_id=self.container_id,
                mime_type=mime, max_size=self.max_size,
            )
            self.pending[name] = pending
        pending.write(blob)

    async def commit_all(self) -> list[ProducedFile]:
        produced = []
        for name, pending in list(self.pending.items()):
            record = await _thread(pending.commit)
            del self.pending[name]
            produced.append(ProducedFile(record.id, record.filename, record.size, record.mime_type))
        return produced

    def abort_all(self) -> None:
        for pending in self.pending.values():
            pending.abort()
        self.pending.clear()


def pool_memory_cap() -> int:
    """The most warm containers POOL_MEMORY_SHARE of the host's available memory holds (Linux; a
    large number where /proc/meminfo cannot be read)."""
    try:
        with open("/proc/meminfo") as fh:
            kib = next(int(line.split()[1]) for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return 1 << 16
    return int(kib * 1024 * POOL_MEMORY_SHARE // POOL_CONTAINER_BYTES)
