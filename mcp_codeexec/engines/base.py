"""What every engine provides, and the engine-independent pieces of a sandbox's identity.

The lifecycle (``backends.sandbox``: sessions, warm pool, idle stop, reaping policy, uploads, calls)
talks to an engine only through ``Engine``: create, find, stop, remove, claim, reap, and open the
agent's byte stream. ``engines.docker`` and ``engines.kubernetes`` implement it; ``engines.build``
makes the one ``Settings.engine`` names. The blocking methods are called off the event loop
(``anyio.to_thread``); only ``open_stream`` is async, since it yields an anyio stream.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio.abc

if TYPE_CHECKING:
    from ..skills import SkillSet

POOL_OWNER = ""

POOL_SILENCE_SECONDS = 45.0
"""An unclaimed pool container whose server sends nothing for this long exits (and is auto-removed)."""
POOL_KEEPALIVE_SECONDS = 15.0
"""How often a server pings its pool containers (well inside POOL_SILENCE_SECONDS)."""


def installation_label(data_dir: Path) -> str:
    """Which data directory (file store, workspaces) a container belongs to."""
    import hashlib

    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


PID_NAMESPACE = _pid_namespace()
SERVER_TAG = f"{socket.gethostname()}:{os.getpid()}:{time.time():.0f}:{PID_NAMESPACE}"
"""Identifies this server process (also its leader Lease identity); a pool container whose server
process is gone is a leftover. The PID namespace tells apart servers in containers that share the
host name: pods with hostNetwork all have the node's, and each is PID 1 of its own namespace."""


def server_alive(tag: str) -> bool:
    host, _, rest = tag.partition(":")
    pid, _, rest = rest.partition(":")
    started, _, pidns = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's server: not ours to judge
    if pidns and pidns != PID_NAMESPACE:
        return True  # another container's server on this host: its pids are not ours to look up
    if tag == SERVER_TAG:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = _process_state(int(pid))
    if proc is not None:
        state, start = proc
        if state == "Z":
            return False  # exited, not yet collected by its parent
        if started.isdigit() and start > int(started) + 5:
            return False  # the pid was reused: this process started after the server tagged it
    return True


def _process_state(pid: int) -> tuple[str, float] | None:
    """(state letter, start time in epoch seconds) of a process, from /proc; None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        with open("/proc/stat") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        return fields[0], boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def new_container_id() -> str:
    return "container_" + secrets.token_hex(12)


def is_valid_container_id(value: str) -> bool:
    return value.startswith("container_") and len(value) == 34 and all(c in "0123456789abcdef" for c in value[10:])


def utcnow() -> datetime:
    return datetime.now(timezone.utc)



@dataclass(frozen=True)
class SandboxRecord:
    """What the labels (and the ownership file) say about one sandbox container."""

    id: str
    ref: str
    """The engine's own name for it (Docker: the container id; Kubernetes: the pod name)."""
    created: datetime
    expires: datetime
    owner: str
    pool: bool
    quota: str
    status: str
    install: str
    server: str
    skills: tuple[dict[str, str], ...] = ()
    image: str = ""
    mounts: str = ""
    """The host folders it was made with (the mounts label, encoded)."""

    @property
    def expired(self) -> bool:
        return utcnow() >= self.expires



class Leases:
    """Which sandboxes a live server is using for a session: an exclusive ``flock`` on
    ``<data>/leases/<id>.lock``, held while the server uses the sandbox. The kernel drops it when the
    process ends, however it ends (kill -9 included), so a stale lease cannot exist. The file's
    mtime, touched on taking and on letting go, says when the sandbox was last used."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._held: dict[str, int] = {}

    def _path(self, cid: str) -> Path:
        return self.root / f"{cid}.lock"

    def acquire(self, cid: str) -> bool:
        if cid in self._held:
            return True
        fd = os.open(self._path(cid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.utime(fd)
        self._held[cid] = fd
        return True

    def holds(self, cid: str) -> bool:
        return cid in self._held

    def in_use(self, cid: str) -> bool:
        """Held by this process or another live one."""
        if cid in self._held:
            return True
        try:
            fd = os.open(self._path(cid), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def last_used(self, cid: str) -> float | None:
        try:
            return self._path(cid).stat().st_mtime
        except FileNotFoundError:
            return None

    def release(self, cid: str) -> None:
        fd = self._held.pop(cid, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.utime(fd)
            os.close(fd)

    def release_all(self) -> None:
        for cid in list(self._held):
            self.release(cid)

    def forget(self, cid: str) -> None:
        if cid not in self._held:
            with contextlib.suppress(FileNotFoundError):
                self._path(cid).unlink()



class CreateTicket:
    """Between a create running in a worker thread and the caller awaiting it: a caller that gives
    up (cancelled) either stops the create from delivering, or learns what was made to remove it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._abandoned = False
        self._made: str | None = None

    def deliver(self, cid: str) -> bool:
        with self._lock:
            if not self._abandoned:
                self._made = cid
            return not self._abandoned

    def abandon(self) -> str | None:
        """Give up; returns the id of a sandbox that was already delivered (the caller removes it)."""
        with self._lock:
            self._abandoned = True
            return self._made


class Engine(Protocol):
    """How one engine makes, finds, stops and removes sandboxes and reaches their agent.

    ``handle`` is the engine's own object for a sandbox (a docker-py ``Container``, a pod dict),
    passed back to ``open_stream`` untouched: the lifecycle never looks inside it."""

    name: str
    closing: threading.Event
    """Set at shutdown: creates still running in worker threads remove what they make."""
    leases: Leases
    stoppable: bool
    """Whether ``stop`` keeps the files (else the lifecycle never stops an idle sandbox)."""
    stream_resume_seconds: float
    """How long a broken agent stream is retried under running requests (0: never). Worth it where
    the stream crosses an API server that restarts while sandboxes live on (Kubernetes)."""

    def resolve_image(self) -> str: ...

    def create(self, owner: str, *, pool: bool = False, ticket: CreateTicket | None = None,
               skills: SkillSet | None = None) -> tuple[SandboxRecord, Any]:
        """A started sandbox (its agent may still be starting). A pool sandbox has no owner yet."""
        ...

    def find(self, cid: str) -> tuple[SandboxRecord, Any]:
        """The live sandbox ``cid`` (started or rebuilt around its workspace); ContainerExpired."""
        ...

    def claim(self, record: SandboxRecord, owner: str) -> None:
        """Hand a pool sandbox to ``owner``."""

    def stop(self, cid: str) -> None:
        """Free an idle sandbox's memory; its files stay, and ``find`` brings it back."""

    def remove(self, cid: str) -> None: ...

    def reap(self) -> list[str]:
        """Remove expired and leftover sandboxes; the ids removed."""
        ...

    def resumable(self, owner: str) -> list[str]:
        """``owner``'s unexpired sandboxes, most recently used first."""
        ...

    def drain_creates(self, timeout: float) -> bool: ...

    async def open_stream(self, record: SandboxRecord, handle: Any) -> tuple[anyio.abc.ByteStream, bool]:
        """The agent's byte stream and whether it carries Docker's stdout/stderr multiplexing."""
        ...
