#!/usr/bin/env python3
"""The mcp-codeexec in-container agent (docs/DESIGN.md, "Agent protocol v1").

It runs as PID 1 of every sandbox container, as uid 1000, and serves framed requests on its
stdin/stdout: ``bash`` (one terminal, calls serialised), the editor ops (``view``, ``create``,
``str_replace``), file transfer (``put_file``, ``get_file``), ``hello``, ``ping``, ``cancel`` and
``claim``.
As PID 1 it is also the container's init: one reaper thread collects every child and orphan.

Stdlib only, one file, Python 3.9+. It cannot import ``mcp_codeexec``, so it carries its own copy
of the few framing lines of ``mcp_codeexec/protocol.py``.

Environment (for tests on the host): ``CODEEXEC_WORKSPACE`` (default ``/workspace``) and
``CODEEXEC_STATE_DIR`` (default ``/tmp/.codeexec``). ``CODEEXEC_*`` variables are not passed on
to commands.
"""

from __future__ import annotations


def _run_from_bytecode() -> None:
    """Run the agent as an imported module in a fresh interpreter (same pid: execv).

    A script's parse tree stays alive until the script ends (CPython frees it after running the
    module), so the agent run as the entrypoint script kept ~6 MiB of AST for its whole life: half
    an idle sandbox's memory. Imported, the module comes from the image's .pyc (or is compiled and
    its tree freed at once). Called before the imports below, which only the fresh interpreter
    then does: ~10 ms of CPU per container start. The REPL child (``--repl``) is not re-executed
    (its fds stay as they are). If the exec fails, the agent runs here as before.
    """
    import os
    import sys

    if sys.argv[1:2] == ["--repl"] or not sys.executable:
        return
    path = os.path.abspath(__file__)
    boot = (
        "import sys\n"
        "from importlib.machinery import SourceFileLoader\n"
        f"sys.argv[0] = {path!r}\n"
        "loader = SourceFileLoader('codeexec_agent', sys.argv[0])\n"
        "module = type(sys)('codeexec_agent')\n"
        "module.__file__, module.__loader__ = sys.argv[0], loader\n"
        "sys.modules['codeexec_agent'] = module\n"
        "loader.exec_module(module)\n"
        "module.main()\n"
    )
    try:
        # -S: the agent needs the standard library only (site's .pth files cost time and memory).
        os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", boot, *sys.argv[1:]])
    except OSError as exc:
        os.write(2, f"codeexec-agent: cannot re-execute from bytecode ({exc}); running as a script\n".encode())


if __name__ == "__main__":
    _run_from_bytecode()

import base64
import codecs
import errno
import json
import keyword
import os
import queue
import select
import selectors
import signal
import stat
import struct
import sys
import threading
import time


class _OnFirstUse:
    """A module imported when first used: ``shutil`` (bz2, lzma, fnmatch) and ``traceback``
    (linecache, tokenize) are ~1 MiB of an idle agent and needed only on rare paths."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str):
        import importlib

        module = importlib.import_module(self._name)
        globals()[self._name] = module
        return getattr(module, attr)


shutil = _OnFirstUse("shutil")
traceback = _OnFirstUse("traceback")

AGENT_VERSION = "1.2.2"

# -- framing: a copy of mcp_codeexec/protocol.py -------------------------------------------------
HEADER = struct.Struct(">II")
MAX_JSON = 128 * 1024 * 1024
MAX_BLOB = 4 * 1024 * 1024
CHUNK = 1024 * 1024

# -- configuration ---------------------------------------------------------------------------------
WORKSPACE = os.path.abspath(os.environ.get("CODEEXEC_WORKSPACE", "/workspace"))
STATE_DIR = os.path.abspath(os.environ.get("CODEEXEC_STATE_DIR", "/tmp/.codeexec"))
STATE_FILE = os.path.join(STATE_DIR, "state")  # written by the EXIT trap of each bash call
# The state file lives on tmpfs (an ext4 rewrite per call costs ~1.5 ms); `save_state` copies it to the
# workspace before the host stops the container, and start-up restores it, so a stopped and restarted
# container keeps its shell's working directory and exported variables.
STATE_BACKUP = os.path.join(WORKSPACE, ".codeexec", "shell-state")
COMMAND_FILE = os.path.join(STATE_DIR, "command")  # the user command, sourced by the script
# Where the command goes when the state dir's tmpfs is full (user code filled /tmp): the workspace,
# else (short commands) the script itself. A full /tmp must never stop the command that empties it.
COMMAND_FALLBACK = os.path.join(WORKSPACE, ".codeexec", "command")
INLINE_COMMAND_LIMIT = 96 * 1024  # below Linux's 128 KiB limit on one argv string
OUTPUTS_DIR = os.path.join(WORKSPACE, ".codeexec", "outputs")
SPILL_DIR = os.path.join(WORKSPACE, ".codeexec", "spill")
INPUT_DIR = os.path.join(WORKSPACE, "inputs")
# A warm pool container (CODEEXEC_POOL=1) that is not yet handed out (op `claim`) belongs to the
# server that made it and nobody else: when that server is gone (its attach stream ends, or it sends
# nothing, not even its keep-alive pings, for this long) the agent exits and the engine removes
# the container (AutoRemove). So a killed server's pool never outlives it by more than this.
POOL_MODE = os.environ.get("CODEEXEC_POOL") == "1"
POOL_SILENCE = float(os.environ.get("CODEEXEC_POOL_SILENCE", "45"))
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Defaults for fields the host normally sends.
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_OUTPUT = 256 * 1024
DEFAULT_MAX_SPILL = 64 * 1024 * 1024
DEFAULT_MAX_FILE = 100 * 1024 * 1024
DEFAULT_VIEW_MAX = 16 * 1024 * 1024
DEFAULT_EDIT_MAX = 64 * 1024 * 1024  # str_replace reads the whole file into memory

TERM_GRACE = 0.5  # seconds between SIGTERM and SIGKILL at the deadline
DRAIN_LIMIT = 1.0  # seconds to wait for the pipes' EOF after the sweep
KILL_WAIT_LIMIT = 10.0  # seconds to wait for bash's exit status after SIGKILL
QUIET_LIMIT = 3.0  # seconds to wait, after a sweep that killed something, for the processes to go
PROGRESS_TAIL_CHARS = 2000
MIN_PROGRESS_INTERVAL = 0.02
SPILL_KEEP = 4  # spill files of the newest calls kept
MAX_PATH_BYTES = 4096
BINARY_SNIFF = 8192
MAX_LISTING = 10000
MAX_UPLOADS = 64

LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines() splits on

O_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _log(message: str) -> None:
    try:
        os.write(2, (f"codeexec-agent: {message}\n").encode("utf-8", "backslashreplace"))
    except OSError:
        pass


class ToolError(Exception):
    """A failure reported to the host as an ``error`` frame with a hosted error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> ToolError:
    return ToolError("invalid_tool_input", message)


def _os_error(exc: OSError, shown: str) -> ToolError:
    if exc.errno == errno.ENOENT:
        return ToolError("file_not_found", f"The path {shown} does not exist.")
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return _invalid(f"{shown}: {reason}")


# -- request field validation ----------------------------------------------------------------------
def _field_str(req: dict, key: str, default: str | None = None) -> str:
    value = req.get(key)
    if value is None:
        value = default
    if not isinstance(value, str):
        raise _invalid(f"{key!r} must be a string")
    return value


def _field_int(req: dict, key: str, default: int, minimum: int = 0) -> int:
    value = req.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _invalid(f"{key!r} must be an integer >= {minimum}")
    return value


def _field_seconds(req: dict, key: str, default: float | None) -> float | None:
    value = req.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise _invalid(f"{key!r} must be a positive number of seconds")
    return float(value)


def _encode_text(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise _invalid(f"{what} is not valid Unicode (lone surrogate)") from None


# -- UTF-8 helpers ---------------------------------------------------------------------------------
def cut_head(data: bytes) -> bytes:
    """Drop an incomplete UTF-8 sequence at the end of ``data``."""
    end = len(data)
    i = end - 1
    while i >= 0 and end - i < 4 and (data[i] & 0xC0) == 0x80:
        i -= 1
    if i < 0:
        return data
    lead = data[i]
    need = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
    return data[:i] if i + need > end else data


def cut_tail(data: bytes) -> bytes:
    """Drop continuation bytes (the rest of a cut code point) at the start of ``data``."""
    k = 0
    while k < 3 and k < len(data) and (data[k] & 0xC0) == 0x80:
        k += 1
    return data[k:]


def _ends_with_break(text: str) -> bool:
    return bool(text) and text[-1] in LINE_BREAKS


def _shown(text: str) -> str:
    """A str safe for JSON: surrogate-escaped bytes become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class LineCounter:
    """Counts lines of a byte stream exactly as ``len(data.decode(...).splitlines())`` would.

    Every line break of str.splitlines() is, in UTF-8, a byte sequence starting with a byte that
    can only begin a character, so counting the byte patterns gives the same answer as decoding
    (with ``replace`` or ``surrogateescape``); ``\\r\\n`` counts once.
    """

    def __init__(self) -> None:
        self.breaks = 0
        self._carry = b""
        self._last = b""

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        buf = self._carry + chunk
        cut = len(buf)
        if buf.endswith(b"\xe2\x80"):
            cut -= 2
        elif buf.endswith((b"\r", b"\xc2", b"\xe2")):
            cut -= 1
        self._count(buf[:cut])
        self._carry = buf[cut:]
        self._last = (self._last + chunk)[-3:]

    def _count(self, buf: bytes) -> None:
        n = buf.count(b"\n")
        if b"\r" in buf:
            n += buf.count(b"\r") - buf.count(b"\r\n")
        for sep in (b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e"):
            if sep in buf:
                n += buf.count(sep)
        if b"\xc2" in buf:
            n += buf.count(b"\xc2\x85")
        if b"\xe2" in buf:
            n += buf.count(b"\xe2\x80\xa8") + buf.count(b"\xe2\x80\xa9")
        self.breaks += n

    def total(self) -> int:
        self._count(self._carry)
        self._carry = b""
        last = self._last
        if not last:
            return 0
        ends = last[-1:] in (b"\n", b"\r", b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e") or last.endswith(
            (b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9")
        )
        return self.breaks + (0 if ends else 1)


# -- the reply channel -----------------------------------------------------------------------------
# Every frame of a request (progress aside) is also kept, by request id, so that a host whose stream
# broke (an API server restart, a network blip) can ask for it again with `replay` instead of running
# the request twice or losing its reply. Bounded: at most JOURNAL_BYTES of frames and JOURNAL_IDS
# requests; evicted ids stay known (a tombstone) so a replay of one says "lost", never "unknown".
JOURNAL_BYTES = 4 * 1024 * 1024
JOURNAL_IDS = 256
JOURNAL_TOMBSTONES = 65536
UNJOURNALED_OPS = ("ping", "hello", "cancel", "tool_result", "claim", "replay")


class _Journal:
    __slots__ = ("frames", "size", "final", "lost")

    def __init__(self) -> None:
        self.frames: list = []
        self.size = 0
        self.final = False
        self.lost = False


class Channel:
    """Writes whole frames to the output fd under one lock, and keeps them for ``replay``."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._failed = False
        self._journal: dict = {}  # request id -> _Journal, oldest first
        self._journal_bytes = 0
        self._evicted: dict = {}  # tombstones, oldest first

    def track(self, rid: int) -> None:
        """A request arrived: from now on a replay of ``rid`` is answered from the journal."""
        with self._lock:
            if rid not in self._journal and rid not in self._evicted:
                self._journal[rid] = _Journal()
                self._trim()

    def send(self, message: dict, blob: bytes = b"") -> None:
        body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
        if len(body) > MAX_JSON or len(blob) > MAX_BLOB:
            _log(f"reply to request {message.get('id')!r} too large ({len(body)} bytes); sending an error")
            message = {"id": message.get("id"), "type": "error", "code": "unavailable", "message": "reply too large"}
            body = json.dumps(message).encode()
            blob = b""
        data = HEADER.pack(len(body), len(blob)) + body + blob
        with self._lock:
            self._write(data)
            kind = message.get("type")
            entry = self._journal.get(message.get("id")) if kind != "progress" else None
            if entry is not None:
                if not entry.lost:
                    entry.frames.append(data)
                    entry.size += len(data)
                    self._journal_bytes += len(data)
                if kind in ("result", "error"):
                    entry.final = True
                self._trim()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
            self._failed = False
        except OSError as exc:
            if not self._failed:
                _log(f"cannot write a reply: {exc}")
            self._failed = True

    def _trim(self) -> None:
        """Evict the oldest answered requests past the bounds; if the unanswered ones alone are past
        them, the oldest of those gives up its frames (its replay then says "lost")."""
        while self._journal_bytes > JOURNAL_BYTES or len(self._journal) > JOURNAL_IDS:
            victim = next((rid for rid, e in self._journal.items() if e.final), None)
            if victim is not None:
                entry = self._journal.pop(victim)
                self._evicted[victim] = None
                if len(self._evicted) > JOURNAL_TOMBSTONES:
                    del self._evicted[next(iter(self._evicted))]
            else:
                entry = next((e for e in self._journal.values() if e.size), None)
                if entry is None:
                    return
                entry.lost = True
            self._journal_bytes -= entry.size
            entry.frames, entry.size = [], 0

    def replay(self, rid: int, target) -> None:
        """Write ``target``'s frames again, between a ``replay_begin`` and this request's result:
        its state is done (all frames, the reply among them), running (the frames so far; the rest
        follow as they come), unknown (never received: safe to send again) or lost (evicted)."""
        with self._lock:
            self._write(self._frame({"id": rid, "type": "replay_begin", "target": target}))
            entry = self._journal.get(target) if isinstance(target, int) else None
            if entry is None:
                state = "lost" if target in self._evicted else "unknown"
            elif entry.lost:
                state = "lost"
            else:
                for data in entry.frames:
                    self._write(data)
                state = "done" if entry.final else "running"
            self._write(self._frame({"id": rid, "type": "result", "result": {"target": target, "state": state}}))

    @staticmethod
    def _frame(message: dict) -> bytes:
        body = json.dumps(message, separators=(",", ":")).encode()
        return HEADER.pack(len(body), 0) + body

    def result(self, rid: int, result: dict) -> None:
        self.send({"id": rid, "type": "result", "result": result})

    def error(self, rid: int, code: str, message: str) -> None:
        self.send({"id": rid, "type": "error", "code": code, "message": message})


# -- process management ----------------------------------------------------------------------------
class Reaper:
    """The one collector of exit statuses: ``waitpid(-1)`` in a thread.

    It reaps every child and, as PID 1, every orphan; statuses of spawned pids are kept until
    claimed, and each one also wakes the waiter through ``wake_fd``.
    """

    def __init__(self, wake_fd: int) -> None:
        self._cond = threading.Condition()
        self._watched: dict[int, int | None] = {}
        self._kick = False
        self._wake_fd = wake_fd
        threading.Thread(target=self._run, name="reaper", daemon=True).start()

    def spawn(self, path: str, argv: list, env: dict, **kwargs) -> int:
        # Holding the lock across the spawn: the reaper cannot record (and drop) the child's
        # status before its pid is watched.
        with self._cond:
            pid = os.posix_spawn(path, argv, env, **kwargs)
            self._watched[pid] = None
            self._kick = True
            self._cond.notify()
        return pid

    def status(self, pid: int) -> int | None:
        with self._cond:
            return self._watched.get(pid)

    def wait(self, pid: int, timeout: float) -> int | None:
        """The status of a watched pid, waiting up to ``timeout`` for the reaper to collect it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while pid in self._watched and self._watched[pid] is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._watched.get(pid)

    def forget(self, pid: int) -> None:
        with self._cond:
            self._watched.pop(pid, None)

    def _run(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                with self._cond:
                    while not self._kick:
                        self._cond.wait()
                    self._kick = False
                continue
            except OSError as exc:  # not expected; the init must not stop reaping
                _log(f"waitpid: {exc}")
                time.sleep(0.1)
                continue
            with self._cond:
                watched = pid in self._watched
                if watched:
                    self._watched[pid] = status
                    self._cond.notify_all()  # wakes wait(); the idle loop above re-checks _kick
            if watched:
                try:
                    os.write(self._wake_fd, b"\0")
                except OSError:  # the pipe is full: the waiter is due to wake anyway
                    pass


_REPL = None  # the agent's Repl (set by Agent): sweeps spare its interpreter


def sweep(pgid: int) -> None:
    """Kill whatever a bash call left behind.

    ``kill(-1, SIGKILL)`` reaches every process of the container except PID 1, but only when this
    process *is* PID 1, i.e. inside its own pid namespace. Anywhere else (tests on a host, maybe
    as root) only the call's process group is killed: ``kill(-1)`` there would kill the machine's
    session.
    """
    if os.getpid() == 1:
        spare = _REPL.spare() if _REPL is not None else set()
        spare |= _services_spare()  # services (op `services`) are not the call's to kill either
        if spare:  # a live Python interpreter is not the call's to kill
            sweep_sparing(spare)
            return
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return  # nothing was left: the common case costs one syscall
        _await_quiet()
    elif pgid > 1:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _await_quiet() -> None:
    """Wait (bounded) until PID 1 is the container's only process, killing again meanwhile.

    SIGKILL is delivered at once but a process is gone only when the kernel has torn it down and
    the reaper has collected it; a fork bomb's hundreds take tens of milliseconds. Answering after
    that means a result always finds the container quiet, and no one sees the case's processes.
    """
    end = time.monotonic() + QUIET_LIMIT
    pause = 0.001
    while True:
        try:
            others = any(name.isdigit() and name != "1" for name in os.listdir("/proc"))
        except OSError:
            return
        if not others:
            return
        if time.monotonic() >= end:
            _log(f"processes still present {QUIET_LIMIT:.1f}s after the sweep")
            return
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass  # only zombies are left: the reaper is collecting them
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _signal_group(pgid: int, sig: int) -> None:
    if pgid > 1:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _return_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return -1


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _remove(path: str) -> None:
    """Remove a file, symlink, FIFO or tree; missing is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except (IsADirectoryError, PermissionError):
        shutil.rmtree(path, ignore_errors=True)


def _write_private(path: str, data: bytes) -> None:
    """(Re)write one of the agent's own files; never blocks on a FIFO put in its place."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        _remove(path)
        fd = os.open(path, flags, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        _write_all(fd, data)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_upto(fd: int, limit: int) -> bytes:
    parts = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


# -- bash ------------------------------------------------------------------------------------------
class Capture:
    """One output stream: head + tail kept in memory, the whole (up to max_spill) in a spill file."""

    def __init__(self, cap: int, max_spill: int, spill_path: str, prune) -> None:
        self.cap = cap
        self.head_size = cap // 2
        self.tail_size = cap - self.head_size
        self.max_spill = max_spill
        self.spill_path = spill_path
        self._prune = prune
        self.total = 0
        self.buf = bytearray()  # everything, while total <= cap; afterwards the tail
        self.head: bytes | None = None
        self.spill_fd = -1
        self.spilled = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        if self.head is None:
            self.buf += data
            if len(self.buf) <= self.cap:
                return
            self.head = bytes(self.buf[: self.head_size])
            self._spill(self.buf)
            del self.buf[: self.head_size]
        else:
            self._spill(data)
            self.buf += data
        if len(self.buf) > 2 * self.tail_size + CHUNK:
            del self.buf[: len(self.buf) - self.tail_size]

    def _spill(self, data) -> None:
        room = self.max_spill - self.spilled
        if room <= 0 or self.spill_fd == -2:  # -2: closed for good
            return
        try:
            if self.spill_fd == -1:
                os.makedirs(os.path.dirname(self.spill_path), exist_ok=True)
                self._prune()
                _remove(self.spill_path)
                self.spill_fd = os.open(
                    self.spill_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
                )
            chunk = memoryview(data)[:room]
            _write_all(self.spill_fd, chunk)
            self.spilled += len(chunk)
        except OSError as exc:
            _log(f"spill file {self.spill_path}: {exc}")
            self.close()

    def close(self) -> None:
        if self.spill_fd >= 0:
            os.close(self.spill_fd)
        self.spill_fd = -2

    def tail_text(self, chars: int) -> str:
        data = cut_tail(bytes(self.buf[-4 * chars :])) if len(self.buf) > 4 * chars else bytes(self.buf)
        return data.decode("utf-8", "replace")[-chars:]

    def text(self) -> str:
        self.close()
        if self.head is None:
            return self.buf.decode("utf-8", "replace")
        head = cut_head(self.head)
        tail = cut_tail(bytes(self.buf[-self.tail_size :])) if self.tail_size else b""
        omitted = self.total - len(head) - len(tail)
        if self.spilled and self.spilled == self.total:
            where = f"; full output saved to {self.spill_path}"
        elif self.spilled:
            where = f"; first {self.spilled} bytes saved to {self.spill_path}"
        else:
            where = ""
        marker = f"\n[... {omitted} bytes omitted{where} ...]\n"
        return head.decode("utf-8", "replace") + marker + tail.decode("utf-8", "replace")


class BashCall:
    __slots__ = ("cancelled", "rid")

    def __init__(self, rid: int) -> None:
        self.rid = rid
        self.cancelled = False


class Terminal:
    """The one bash terminal of the container: calls run one at a time."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.reaper = Reaper(self._wake_w)
        self.calls: dict[int, BashCall] = {}
        self._seq = 0
        self._prev_outdir: str | None = None
        self._bash = self._find_bash()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODEEXEC_")}
        env.setdefault("PATH", DEFAULT_PATH)
        env.update(HOME=WORKSPACE, INPUT_DIR=INPUT_DIR, LANG="C.UTF-8")
        self._env = env
        self._sigdef = [s for s in (getattr(signal, "SIGPIPE", None), getattr(signal, "SIGXFSZ", None)) if s]
        save = f"{{ builtin export -p; builtin printf 'cd -- %q\\n' \"$PWD\"; }} >|{_quote(STATE_FILE)} 2>/dev/null"
        self._script_head = f"[ -f {_quote(STATE_FILE)} ] && . {_quote(STATE_FILE)} 2>/dev/null\n"
        self._script_trap = f"trap -- {_quote(save)} EXIT\n"
        self._default_run = f". {_quote(COMMAND_FILE)}\n"  # what _stage_command returns unless /tmp is full
        # The next call's bash is started between calls and waits on fd 3 for its output directory:
        # a call then skips exec, dynamic linking and bash start-up (~1.3 of ~1.6 ms on the bench host).
        self._ready_script = (
            "IFS= builtin read -r __codeexec_outdir <&3 || builtin exit 125\n"
            "exec 3<&-\n"
            "SECONDS=0\n"
            f"{self._script_head}"
            'export OUTPUT_DIR="$__codeexec_outdir"\n'
            "unset __codeexec_outdir\n"
            f"{self._script_trap}{self._default_run}"
        )
        self._ready: tuple[int, int, int, int] | None = None  # pid, stdout, stderr, fd 3's writer
        self._persisted: bytes | None = None  # the shell state last copied to STATE_BACKUP
        self._prepare_next()

    @staticmethod
    def _find_bash() -> str:
        for d in os.environ.get("PATH", DEFAULT_PATH).split(os.pathsep) + ["/bin", "/usr/bin"]:
            candidate = os.path.join(d or ".", "bash")
            if os.access(candidate, os.X_OK):
                return candidate
        return "/bin/bash"

    # -- wake-ups from the reaper and from cancel
    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def cancel(self, target) -> None:
        call = self.calls.get(target)
        if call is None:
            _log(f"cancel: no bash call {target!r}")
            return
        call.cancelled = True
        self.wake()

    def cancel_all(self) -> None:
        for call in list(self.calls.values()):
            call.cancelled = True
        self.wake()

    # -- per-call directories
    def _next_outdir(self) -> tuple[int, str]:
        if self._prev_outdir is not None:
            try:
                os.rmdir(self._prev_outdir)
            except FileNotFoundError:
                pass
            except OSError:
                _remove(self._prev_outdir)
        else:  # first call of this agent: clear what an earlier agent left, continue its numbering
            last = 0
            for d, clear in ((OUTPUTS_DIR, True), (SPILL_DIR, False)):
                try:
                    names = os.listdir(d)
                except OSError:
                    continue
                for name in names:
                    number = name.split(".", 1)[0]
                    if number.isdigit():
                        last = max(last, int(number))
                    if clear:
                        _remove(os.path.join(d, name))
            self._seq = last
        self._seq += 1
        outdir = os.path.join(OUTPUTS_DIR, str(self._seq))
        self._prev_outdir = outdir
        try:
            try:
                os.mkdir(outdir)
            except FileNotFoundError:
                os.makedirs(outdir)
            except FileExistsError:
                _remove(outdir)
                os.mkdir(outdir)
        except OSError as exc:  # a full disk must not stop the command that would clean it up
            _log(f"cannot create {outdir}: {exc}")
        return self._seq, outdir

    def _prune_spill(self) -> None:
        try:
            names = os.listdir(SPILL_DIR)
        except OSError:
            return
        seqs = {int(n.split(".", 1)[0]) for n in names if n.split(".", 1)[0].isdigit()}
        keep = set(sorted(seqs | {self._seq})[-SPILL_KEEP:])
        for name in names:
            number = name.split(".", 1)[0]
            if not number.isdigit() or int(number) not in keep:
                _remove(os.path.join(SPILL_DIR, name))

    # -- the call
    def run(self, rid: int, req: dict, blob: bytes) -> None:
        call = self.calls.get(rid) or BashCall(rid)
        try:
            command = _encode_text(_field_str(req, "command"), "command")
            timeout = _field_seconds(req, "timeout", DEFAULT_TIMEOUT)
            max_output = _field_int(req, "max_output", DEFAULT_MAX_OUTPUT)
            max_spill = _field_int(req, "max_spill", DEFAULT_MAX_SPILL)
            max_file = _field_int(req, "max_file", DEFAULT_MAX_FILE)
            interval = _field_seconds(req, "progress_interval", None)
            restart = req.get("restart", False)
            if not isinstance(restart, bool):
                raise _invalid("'restart' must be a boolean")
            with self.lock:
                if call.cancelled:  # cancelled while queued: it never runs
                    self.channel.result(rid, self._result("", "", 128 + signal.SIGKILL, True, "", []))
                    return
                try:
                    self._run_locked(call, command, timeout, max_output, max_spill, max_file, interval, restart)
                finally:
                    self._prepare_next()
                    self._persist_state()
        finally:
            self.calls.pop(rid, None)

    def _persist_state(self) -> None:
        """Copy the live shell state (tmpfs) to the workspace when it changed, after the reply went
        out: a container rebuilt around its workspace (removed behind the host's back, or its server
        killed) starts with the shell's last working directory and exported variables. Most calls
        change neither: then this is one small tmpfs read."""
        try:
            with open(STATE_FILE, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW | os.O_NONBLOCK)) as fh:
                data = fh.read(1 << 20) if stat.S_ISREG(os.fstat(fh.fileno()).st_mode) else None
        except OSError:
            data = b""
        if data is None:
            return
        # OUTPUT_DIR changes every call and is set afresh by the next call's script anyway.
        data = b"\n".join(line for line in data.split(b"\n") if not line.startswith(b"declare -x OUTPUT_DIR="))
        if data == self._persisted:
            return
        self._persisted = data
        _copy_state(STATE_FILE, STATE_BACKUP)

    def _result(self, stdout, stderr, return_code, timed_out, outdir, files) -> dict:
        return {
            "stdout": stdout,
            "stderr": stderr,
            "return_code": return_code,
            "timed_out": timed_out,
            "output_dir": outdir,
            "files": files,
        }

    @staticmethod
    def _stage_command(command: bytes) -> str:
        """The script line that runs the command: sourced from a file on the state dir's tmpfs, or
        on the workspace when that is full, or inline (short commands) when both are."""
        problems = []
        for path in (COMMAND_FILE, COMMAND_FALLBACK):
            try:
                _write_private(path, command)
                return f". {_quote(path)}\n"
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror or exc}")
        if len(command) <= INLINE_COMMAND_LIMIT and b"\0" not in command:
            _log("running a command inline: " + "; ".join(problems))
            return command.decode("utf-8", "surrogateescape") + "\n"
        raise ToolError(
            "unavailable",
            "cannot stage the command (" + "; ".join(problems) + "): /tmp and /workspace are full; "
            "free space with a short command first (e.g. `rm -rf /tmp/*`)",
        )

    def _run_locked(self, call, command, timeout, max_output, max_spill, max_file, interval, restart) -> None:
        rid = call.rid
        start = time.monotonic()
        seq, outdir = self._next_outdir()
        if restart:
            _remove(STATE_FILE)
        else:
            try:
                if not stat.S_ISREG(os.lstat(STATE_FILE).st_mode):
                    _remove(STATE_FILE)  # a FIFO here would hang the EXIT trap
            except FileNotFoundError:
                pass
        run_line = self._stage_command(command)
        self._drain_wake()
        started = self._start_ready(outdir if run_line == self._default_run else None)
        if started is None:
            script = f"{self._script_head}export OUTPUT_DIR={_quote(outdir)}\n{self._script_trap}{run_line}"
            try:
                started = self._spawn_bash(script, dict(self._env, OUTPUT_DIR=outdir))
            except OSError as exc:
                raise ToolError("unavailable", f"cannot start bash: {exc}") from None
        pid, out_r, err_r = started
        spill = os.path.join(SPILL_DIR, f"{seq}.")
        out = Capture(max_output, max_spill, spill + "stdout", self._prune_spill)
        err = Capture(max_output, max_spill, spill + "stderr", self._prune_spill)
        try:
            status, timed_out = self._pump(call, pid, out_r, err_r, out, err, start, timeout, interval)
        finally:
            self.reaper.forget(pid)
            os.close(out_r)
            os.close(err_r)
        return_code = _return_code(status) if status is not None else 128 + signal.SIGKILL
        stdout, stderr = out.text(), err.text()
        if timed_out:  # the host reports execution_time_exceeded: output files are not collected
            self.channel.result(rid, self._result(stdout, stderr, return_code, True, outdir, []))
            return
        files = self._send_files(rid, outdir, max_file)
        if files is not None:
            self.channel.result(rid, self._result(stdout, stderr, return_code, False, outdir, files))

    def _spawn_bash(self, script: str, env: dict, extra_actions=()) -> tuple[int, int, int]:
        """Start ``bash -c script`` in a new session, stdin /dev/null; returns (pid, stdout, stderr)."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            actions = [
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
                *extra_actions,
            ]
            argv = ["bash", "--noprofile", "--norc", "-c", script]
            try:
                pid = self.reaper.spawn(
                    self._bash, argv, env, file_actions=actions, setsid=True, setsigdef=self._sigdef, setsigmask=()
                )
            except NotImplementedError:  # no POSIX_SPAWN_SETSID: a new process group at least
                pid = self.reaper.spawn(
                    self._bash, argv, env, file_actions=actions, setpgroup=0, setsigdef=self._sigdef, setsigmask=()
                )
        except OSError:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        return pid, out_r, err_r

    def _prepare_next(self) -> None:
        """Start the next call's bash now (after the sweep, so nothing of this call can touch it)."""
        if self._ready is not None:
            return
        go_r, go_w = os.pipe()
        try:
            pid, out_r, err_r = self._spawn_bash(self._ready_script, self._env, [(os.POSIX_SPAWN_DUP2, go_r, 3)])
        except OSError as exc:
            os.close(go_w)
            _log(f"cannot start the next bash ahead of time: {exc}")
            return
        finally:
            os.close(go_r)
        self._ready = (pid, out_r, err_r, go_w)

    def _start_ready(self, outdir: str | None) -> tuple[int, int, int] | None:
        """Tell the bash started ahead of time to run with ``outdir``; None (and it is stopped) when
        there is none, it died, or ``outdir`` is None (the command was staged elsewhere)."""
        ready, self._ready = self._ready, None
        if ready is None:
            return None
        pid, out_r, err_r, go_w = ready
        try:
            if outdir is not None and "\n" not in outdir and self.reaper.status(pid) is None:
                _write_all(go_w, outdir.encode("utf-8", "surrogateescape") + b"\n")
                return pid, out_r, err_r
        except OSError:  # it died: EPIPE
            pass
        finally:
            os.close(go_w)
        if self.reaper.status(pid) is None:
            _signal_group(pid, signal.SIGKILL)
        self.reaper.forget(pid)
        os.close(out_r)
        os.close(err_r)
        return None

    def _pump(self, call, pid, out_r, err_r, out, err, start, timeout, interval):
        """Read both pipes until bash exits (or is killed at the deadline), sweep, drain."""
        deadline = start + timeout
        if interval:
            interval = max(interval, MIN_PROGRESS_INTERVAL)
        next_progress = start + interval if interval else None
        grace_end = kill_end = None
        timed_out = False
        status = None
        sel = selectors.PollSelector()  # no registration syscalls, unlike epoll
        try:
            sel.register(out_r, selectors.EVENT_READ, out)
            sel.register(err_r, selectors.EVENT_READ, err)
            sel.register(self._wake_r, selectors.EVENT_READ, None)
            open_pipes = 2
            while True:
                status = self.reaper.status(pid)
                if status is not None:
                    break
                now = time.monotonic()
                if grace_end is None and (now >= deadline or call.cancelled):
                    timed_out = True
                    _signal_group(pid, signal.SIGTERM)
                    grace_end = now + TERM_GRACE
                if kill_end is None and grace_end is not None and now >= grace_end:
                    sweep(pid)
                    kill_end = now + KILL_WAIT_LIMIT
                if kill_end is not None and now >= kill_end:
                    _log(f"bash pid {pid} did not die after SIGKILL")
                    break
                if next_progress is not None and now >= next_progress:
                    self.channel.send(
                        {
                            "id": call.rid,
                            "type": "progress",
                            "elapsed": round(now - start, 3),
                            "stdout_tail": out.tail_text(PROGRESS_TAIL_CHARS),
                            "stderr_tail": err.tail_text(PROGRESS_TAIL_CHARS),
                        }
                    )
                    next_progress = max(next_progress + interval, now + interval / 2)
                wait = min(
                    (t for t in (deadline, grace_end, kill_end, next_progress) if t is not None and t > now),
                    default=now,
                )
                for key, _ in sel.select(wait - now):
                    if key.data is None:
                        self._drain_wake()
                        continue
                    data = os.read(key.fd, 65536)
                    if data:
                        key.data.feed(data)
                    else:
                        sel.unregister(key.fd)
                        open_pipes -= 1
            sweep(pid)
            # Every writer is dead now (as PID 1); read what is left in the pipes.
            sel.unregister(self._wake_r)
            drain_end = time.monotonic() + DRAIN_LIMIT
            while open_pipes:
                left = drain_end - time.monotonic()
                if left <= 0:
                    _log(f"output pipes still open {DRAIN_LIMIT:.1f}s after the sweep")
                    break
                for key, _ in sel.select(left):
                    data = os.read(key.fd, 65536)
                    if data:
                        key.data.feed(data)
                    else:
                        sel.unregister(key.fd)
                        open_pipes -= 1
        finally:
            sel.close()
        return status, timed_out

    def _send_files(self, rid: int, outdir: str, max_file: int) -> list | None:
        found = []
        try:
            with os.scandir(outdir) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        found.append((entry.name, entry.stat(follow_symlinks=False).st_size))
        except OSError:
            return []
        found.sort()
        too_large = [name for name, size in found if size > max_file]
        if too_large:
            self.channel.error(
                rid,
                "output_file_too_large",
                f"output file {_shown(too_large[0])} is larger than the limit of {max_file} bytes",
            )
            return None
        files = []
        for name, _ in found:
            try:
                fd = os.open(os.path.join(outdir, name), O_READ | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                files.append({"name": name, "size": _stream_file(self.channel, rid, fd, name, max_file)})
            finally:
                os.close(fd)
        return files


def _stream_file(channel: Channel, rid: int, fd: int, name: str, limit: int) -> int:
    """Send a file as ``file`` frames (one empty frame for an empty file); returns its size."""
    size = os.fstat(fd).st_size
    offset = 0
    while True:
        chunk = os.read(fd, min(CHUNK, limit - offset)) if offset < limit else b""
        if chunk or offset == 0:
            channel.send({"id": rid, "type": "file", "name": name, "size": size, "offset": offset}, chunk)
        if not chunk:
            return offset
        offset += len(chunk)


# -- the editor ------------------------------------------------------------------------------------
def _resolve(req: dict) -> tuple[str, str]:
    """(absolute path, path as given); relative paths are taken from the workspace."""
    path = req.get("path")
    if not isinstance(path, str) or not path:
        raise _invalid("'path' must be a non-empty string")
    if "\x00" in path:
        raise _invalid("path contains a NUL character")
    try:
        raw = os.fsencode(path)
    except UnicodeError:
        raise _invalid("path is not valid Unicode") from None
    if len(raw) > MAX_PATH_BYTES:
        raise _invalid(f"path is longer than {MAX_PATH_BYTES} bytes")
    return os.path.join(WORKSPACE, path), path


def _media_kind(path: str, head: bytes) -> str | None:
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")) or head[:6] in (b"GIF87a", b"GIF89a"):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head.startswith(b"%PDF-"):
        return "pdf"
    ext = os.path.splitext(path)[1].lower()
    if ext in (".png", ".jpg", ".jpeg", ".gif", ".webp"):
        return "image"
    if ext == ".pdf":
        return "pdf"
    return None


def _final_target(full: str) -> str:
    """The file a write to ``full`` lands in: a final symlink is followed (within the sandbox)."""
    try:
        if stat.S_ISLNK(os.lstat(full).st_mode):
            return os.path.realpath(full)
    except OSError:
        pass
    return full


def _atomic_write(target: str, data: bytes, mode: int | None) -> None:
    """Write ``data`` to a temp file beside ``target`` and rename it over ``target``."""
    directory = os.path.dirname(target)
    tmp = os.path.join(directory, f".codeexec-tmp-{os.urandom(6).hex()}")
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666 if mode is None else 0o600
    )
    try:
        try:
            _write_all(fd, data)
            if mode is not None:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class Editor:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._locks = [threading.Lock() for _ in range(64)]
        self._uploads: dict[int, dict] = {}
        self._failed_uploads: set[int] = set()
        try:
            self._proc_dev = os.stat("/proc").st_dev
        except OSError:
            self._proc_dev = None

    def _lock(self, target: str) -> threading.Lock:
        return self._locks[hash(os.path.normpath(target)) % len(self._locks)]

    def _open_existing(self, full: str, shown: str, allow_dir: bool = False) -> tuple[int, os.stat_result]:
        """Open for reading without ever blocking; only regular files (and maybe directories)."""
        try:
            fd = os.open(full, O_READ)
        except OSError as exc:
            raise _os_error(exc, shown) from None
        st = os.fstat(fd)
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFREG or (allow_dir and kind == stat.S_IFDIR):
            if st.st_dev == self._proc_dev and self._is_own_proc_entry(full):
                os.close(fd)
                raise _invalid(f"{shown}: the agent's own /proc entries are not readable")
            return fd, st
        os.close(fd)
        if kind == stat.S_IFDIR:
            raise _invalid(f"{shown} is a directory")
        what = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
        raise _invalid(f"{shown} is {what.get(kind, 'not a regular file')}, not a regular file")

    @staticmethod
    def _is_own_proc_entry(full: str) -> bool:
        parts = os.path.realpath(full).split("/")
        return len(parts) > 2 and parts[1] == "proc" and parts[2] in ("self", "thread-self", str(os.getpid()))

    # -- view
    def view(self, rid: int, req: dict, blob: bytes) -> dict:
        full, shown = _resolve(req)
        max_bytes = _field_int(req, "max_bytes", DEFAULT_VIEW_MAX, 1)
        view_range = req.get("view_range")
        if view_range is not None and (
            not isinstance(view_range, list)
            or len(view_range) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in view_range)
        ):
            raise _invalid("'view_range' must be a list of two integers [start, end]")
        fd, st = self._open_existing(full, shown, allow_dir=True)
        try:
            if stat.S_ISDIR(st.st_mode):
                return self._listing(full, shown)
            head = _read_upto(fd, 16)
            kind = _media_kind(full, head)
            if kind is not None:
                # Images and PDFs come back whole (base64) or not at all: their own, larger budget.
                max_bytes = _field_int(req, "max_media_bytes", max_bytes, 1)
                if st.st_size > max_bytes:
                    raise _invalid(f"{shown} is too large to view ({st.st_size} bytes; the limit is {max_bytes})")
                data = head + _read_upto(fd, max_bytes + 1 - len(head))
                if len(data) > max_bytes:
                    raise _invalid(f"{shown} is too large to view (more than {max_bytes} bytes)")
                content = base64.b64encode(data).decode("ascii")
                return {"file_type": kind, "content": content, "num_lines": 0, "start_line": 1, "total_lines": 0}
            data = head + _read_upto(fd, max_bytes + 1 - len(head))
            if len(data) <= max_bytes:
                lines = data.decode("utf-8", "replace").splitlines(True)
                start, end = self._range(view_range, len(lines))
                chosen = lines[start - 1 : end]
                return self._view_result("".join(chosen), len(chosen), start, len(lines))
            return self._view_large(fd, view_range, max_bytes)
        except OSError as exc:
            raise _os_error(exc, shown) from None
        finally:
            os.close(fd)

    @staticmethod
    def _view_result(content: str, num_lines: int, start: int, total: int) -> dict:
        return {
            "file_type": "text",
            "content": content,
            "num_lines": num_lines,
            "start_line": start,
            "total_lines": total,
        }

    @staticmethod
    def _range(view_range, total: int) -> tuple[int, int]:
        if view_range is None:
            return 1, total
        start, end = view_range
        if start < 1 or start > max(total, 1):
            raise _invalid(f"view_range start {start} is out of range: the file has {total} lines")
        if end == -1:
            return start, total
        if end < start or end > total:
            raise _invalid(
                f"view_range end {end} is out of range: it must be -1 or between {start} and {total}"
                f" (the file has {total} lines)"
            )
        return start, end

    def _view_large(self, fd: int, view_range, max_bytes: int) -> dict:
        """A file larger than max_bytes: the lines of the range that fit; total_lines by streaming."""
        counter = LineCounter()
        offset = 0
        while True:
            chunk = os.pread(fd, CHUNK, offset)
            if not chunk:
                break
            counter.feed(chunk)
            offset += len(chunk)
        total = counter.total()
        start, end = self._range(view_range, total)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        chosen: list[str] = []
        used = 0
        lineno = 0
        carry = ""
        pending_cr = False
        offset = 0
        done = False
        while not done:
            chunk = os.pread(fd, CHUNK, offset)
            offset += len(chunk)
            final = not chunk
            text = decoder.decode(chunk, final)
            if pending_cr and text.startswith("\n"):  # the \n of a \r\n split between chunks
                text = text[1:]
            text = carry + text
            parts = text.splitlines(True)
            carry = ""
            if not final and parts and not _ends_with_break(parts[-1]):
                carry = parts.pop()
                if len(carry) > max_bytes:  # the middle of one long line: its start is enough
                    carry = carry[: max_bytes + 1]
            pending_cr = bool(parts) and parts[-1].endswith("\r")
            for line in parts:
                lineno += 1
                if lineno < start:
                    continue
                size = len(line.encode("utf-8"))
                if lineno > end or used + size > max_bytes:
                    if not chosen and lineno <= end:  # not even one line fits: its beginning
                        chosen.append(cut_head(line.encode("utf-8")[:max_bytes]).decode("utf-8"))
                    done = True
                    break
                chosen.append(line)
                used += size
            if final:
                break
        return self._view_result("".join(chosen), len(chosen), start, total)

    @staticmethod
    def _listing(full: str, shown: str) -> dict:
        entries: list[str] = []
        truncated = False

        def walk(directory: str, shown_dir: str, depth: int) -> None:
            nonlocal truncated
            try:
                with os.scandir(directory) as it:
                    children = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
            except OSError:
                return
            for entry in children:
                if len(entries) >= MAX_LISTING:
                    truncated = True
                    return
                shown_entry = os.path.join(shown_dir, _shown(entry.name))
                entries.append(shown_entry)
                if depth < 2 and entry.is_dir(follow_symlinks=False):
                    walk(entry.path, shown_entry, depth + 1)

        walk(full, _shown(shown), 1)
        body = [_shown(shown)] + entries
        if truncated:
            body.append(f"[... listing truncated after {MAX_LISTING} entries ...]")
        content = "Here's the files and directories up to 2 levels deep in {}, excluding hidden items:\n{}\n".format(
            _shown(shown),
            "\n".join(body),
        )
        total = len(content.splitlines())
        return {"file_type": "text", "content": content, "num_lines": total, "start_line": 1, "total_lines": total}

    # -- create
    def create(self, rid: int, req: dict, blob: bytes) -> dict:
        full, shown = _resolve(req)
        data = _encode_text(_field_str(req, "file_text"), "file_text")
        target = _final_target(full)
        if not os.path.basename(target):
            raise _invalid(f"{shown} names a directory")
        with self._lock(target):
            try:
                mode = self._existing_mode(target, shown)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                _atomic_write(target, data, mode)
            except OSError as exc:
                raise _os_error(exc, shown) from None
        return {"is_file_update": mode is not None}

    @staticmethod
    def _existing_mode(target: str, shown: str) -> int | None:
        """The permission bits of the regular file at ``target``; None if nothing is there."""
        try:
            st = os.stat(target)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            raise _invalid(f"{shown} exists and is not a regular file")
        return stat.S_IMODE(st.st_mode)

    # -- str_replace
    def str_replace(self, rid: int, req: dict, blob: bytes) -> dict:
        full, shown = _resolve(req)
        old = _field_str(req, "old_str")
        new = _field_str(req, "new_str", "")
        if not old:
            raise _invalid("old_str must not be empty")
        _encode_text(new, "new_str")
        max_bytes = _field_int(req, "max_bytes", DEFAULT_EDIT_MAX, 1)
        target = _final_target(full)
        with self._lock(target):
            fd, st = self._open_existing(target, shown)
            try:
                if st.st_size > max_bytes:
                    raise _invalid(f"{shown} is too large to edit ({st.st_size} bytes; the limit is {max_bytes})")
                data = _read_upto(fd, max_bytes + 1)
            except OSError as exc:
                raise _os_error(exc, shown) from None
            finally:
                os.close(fd)
            if len(data) > max_bytes:
                raise _invalid(f"{shown} is too large to edit (more than {max_bytes} bytes)")
            if b"\x00" in data[:BINARY_SNIFF]:
                raise _invalid(f"{shown} is a binary file; str_replace edits text files only")
            text = data.decode("utf-8", "surrogateescape")
            count = text.count(old)
            if count == 0:
                raise _invalid(f"old_str not found in {shown}")
            if count > 1:
                raise _invalid(f"old_str found {count} times in {shown}; it must be unique")
            at = text.index(old)
            new_text = text[:at] + new + text[at + len(old) :]
            try:
                _atomic_write(target, new_text.encode("utf-8", "surrogateescape"), stat.S_IMODE(st.st_mode))
            except OSError as exc:
                raise _os_error(exc, shown) from None
        return replacement_hunk(text, at, old, new)

    # -- put_file / get_file
    def put_file(self, rid: int, req: dict, blob: bytes) -> dict | None:
        """One chunk of an upload; the chunks of one upload share the request id."""
        if rid in self._failed_uploads:
            if req.get("eof"):
                self._failed_uploads.discard(rid)
            return None
        try:
            return self._put_chunk(rid, req, blob)
        except BaseException:
            upload = self._uploads.pop(rid, None)
            if upload is not None:
                os.close(upload["fd"])
                _remove(upload["tmp"])
            if not req.get("eof"):
                self._failed_uploads.add(rid)
            raise

    def _put_chunk(self, rid: int, req: dict, blob: bytes) -> dict | None:
        offset = _field_int(req, "offset", 0)
        eof = req.get("eof", False)
        mode = req.get("mode")
        if not isinstance(eof, bool) or (
            mode is not None and (not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777)
        ):
            raise _invalid("'eof' must be a boolean and 'mode' an integer permission mode")
        upload = self._uploads.get(rid)
        if upload is None:
            if len(self._uploads) >= MAX_UPLOADS:
                raise ToolError("unavailable", "too many uploads in progress")
            full, shown = _resolve(req)
            target = _final_target(full)
            if not os.path.basename(target):
                raise _invalid(f"{shown} names a directory")
            try:
                existing = self._existing_mode(target, shown)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                tmp = os.path.join(os.path.dirname(target), f".codeexec-tmp-{os.urandom(6).hex()}")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                raise _os_error(exc, shown) from None
            upload = {"fd": fd, "tmp": tmp, "target": target, "shown": shown, "size": 0, "mode": existing}
            self._uploads[rid] = upload
        try:
            if blob:
                view = memoryview(blob)
                while view:
                    written = os.pwrite(upload["fd"], view, offset)
                    view = view[written:]
                    offset += written
                upload["size"] = max(upload["size"], offset)
            if not eof:
                return None
            if mode is None:
                mode = upload["mode"]
            if mode is not None:
                os.fchmod(upload["fd"], mode)
            size = os.fstat(upload["fd"]).st_size
            del self._uploads[rid]
            os.close(upload["fd"])
            with self._lock(upload["target"]):
                os.replace(upload["tmp"], upload["target"])
        except OSError as exc:
            raise _os_error(exc, upload["shown"]) from None
        return {"size": size}

    def get_file(self, rid: int, req: dict, blob: bytes) -> dict:
        full, shown = _resolve(req)
        max_size = _field_int(req, "max_size", DEFAULT_MAX_FILE)
        fd, st = self._open_existing(full, shown)
        try:
            if st.st_size > max_size:
                raise ToolError(
                    "output_file_too_large",
                    f"{shown} is larger than the limit of {max_size} bytes ({st.st_size} bytes)",
                )
            size = _stream_file(self.channel, rid, fd, os.path.basename(full), max_size)
        except OSError as exc:
            raise _os_error(exc, shown) from None
        finally:
            os.close(fd)
        return {"size": size}


def _line_start(text: str, at: int) -> int:
    return max(text.rfind(c, 0, at) for c in LINE_BREAKS) + 1


def _line_end(text: str, at: int) -> int:
    ends = [i for i in (text.find(c, at) for c in LINE_BREAKS) if i != -1]
    return min(ends) if ends else len(text)


def replacement_hunk(text: str, at: int, old: str, new: str) -> dict:
    """The str_replace result: the whole lines touched, ``-`` old then ``+`` new, no context."""
    begin = _line_start(text, at)
    after = at + len(old)
    rest = "" if _ends_with_break(old) else text[after : _line_end(text, after)]
    old_lines = (text[begin:at] + old + rest).splitlines() or [""]
    new_lines = (text[begin:at] + new + rest).splitlines()
    # text[:begin] is whole lines: count its line breaks (\r\n is one)
    first = sum(text.count(c, 0, begin) for c in LINE_BREAKS) - text.count("\r\n", 0, begin) + 1
    return {
        "old_start": first,
        "old_lines": len(old_lines),
        "new_start": first,
        "new_lines": len(new_lines),
        "lines": ["-" + _shown(line) for line in old_lines] + ["+" + _shown(line) for line in new_lines],
    }


# -- the Python REPL -------------------------------------------------------------------------------
# One interpreter per container (docs/DESIGN.md, "python semantics"). It is this same file run by
# the image's venv Python with ``--repl``: a child of the agent in its own session, stdin/stdout/
# stderr on /dev/null between cells, talking to the agent only over a private socketpair (never the
# agent's channel). Each cell gets fresh stdout/stderr pipes passed with SCM_RIGHTS, so the agent
# reads them with the same Capture as bash and sees EOF when the cell and its children are done.
REPL_PYTHON = os.environ.get("CODEEXEC_PYTHON") or (
    "/opt/venv/bin/python3" if os.access("/opt/venv/bin/python3", os.X_OK) else sys.executable
)
REPL_MARKER = os.path.join(WORKSPACE, ".codeexec", "repl-state")  # survives container restarts
REPL_MAX_FRAME = 8 * 1024 * 1024  # a control frame either way (tool input or result text)
REPL_INTERRUPT_GRACE = 2.0  # seconds from KeyboardInterrupt to SIGKILL when the cell will not stop
REPL_START_LIMIT = 30.0  # seconds for a new interpreter to say it is ready
DEFAULT_CELL_TIMEOUT = 90.0
DEFAULT_PENDING_TIMEOUT = 270.0
DEFAULT_MAX_IN_FLIGHT = 16
LAST_VALUE = "__codeexec_last_value__"
AGENT_BOOT = base64.b32encode(os.urandom(10)).decode().lower()  # tells this container life from earlier ones


def _ctl_send(sock, message: dict, fds=()) -> None:
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    data = HEADER.pack(len(body), 0) + body
    if fds:
        import socket as _socket

        sent = _socket.send_fds(sock, [data[:1]], list(fds))
        data = data[sent:]
    sock.sendall(data)


class _CtlReader:
    """Frames from a control socket; SCM_RIGHTS fds are queued in arrival order."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.fds: list = []

    def read(self) -> list | None:
        """One recv's worth of complete frames; None at EOF. Raises ValueError on a bad frame."""
        import socket as _socket

        data, fds, _flags, _addr = _socket.recv_fds(self.sock, 1 << 20, 4)
        self.fds.extend(fds)
        if not data:
            return None
        self.buf += data
        frames = []
        while len(self.buf) >= HEADER.size:
            json_len, blob_len = HEADER.unpack_from(self.buf)
            if json_len == 0 or json_len > REPL_MAX_FRAME or blob_len:
                raise ValueError(f"bad control frame header ({json_len}, {blob_len})")
            end = HEADER.size + json_len
            if len(self.buf) < end:
                break
            message = json.loads(bytes(self.buf[HEADER.size : end]).decode("utf-8", "surrogatepass"))
            del self.buf[:end]
            if not isinstance(message, dict):
                raise ValueError("control frame is not an object")
            frames.append(message)
        return frames


def _proc_children_gone_except(spare: set, zombies: list | None = None) -> bool:
    """True when every process but PID 1 and ``spare`` is gone (zombies of spared ones count as
    gone, and are listed in ``zombies``: only their parent can collect them)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return True
    for name in names:
        if not name.isdigit() or name == "1" or int(name) in spare:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            if fields[0] == b"Z" and int(fields[1]) in spare:
                if zombies is not None:
                    zombies.append(int(name))
                continue
        except (OSError, IndexError, ValueError):
            continue
        return False
    return True


def sweep_sparing(spare: set) -> None:
    """Like ``sweep`` as PID 1, but the processes in ``spare`` (the interpreter, the next call's
    bash) live on: everything is stopped at once (kill(-1) is atomic against fork, so a fork bomb
    freezes), every other process is killed, and the spared ones continue."""
    try:
        os.kill(-1, signal.SIGSTOP)
    except ProcessLookupError:
        return
    # Now that nothing runs, nothing forks: the services' sessions are complete.
    spare = set(spare) | _services_spare()
    end = time.monotonic() + QUIET_LIMIT
    pause = 0.001
    zombies: list = []
    try:
        while True:
            try:
                names = os.listdir("/proc")
            except OSError:
                return
            for name in names:
                if name.isdigit() and name != "1" and int(name) not in spare:
                    try:
                        os.kill(int(name), signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            zombies = []
            if _proc_children_gone_except(spare, zombies) or time.monotonic() >= end:
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
    finally:
        for pid in spare:
            try:
                os.kill(pid, signal.SIGCONT)
            except (ProcessLookupError, PermissionError):
                pass
    if zombies and _REPL is not None:
        _REPL.reap()


def _kill_children_of(parent: int) -> None:
    """Outside a pid namespace (tests on a host): kill the interpreter's direct children only."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            _signal_group(int(name), signal.SIGKILL)
            try:
                os.kill(int(name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _describe_exit(status: int | None) -> str:
    if status is None:
        return "it stopped answering"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        why = "; the container's memory limit is the usual cause" if sig == signal.SIGKILL else ""
        return f"it was killed by {name}{why}"
    return f"it exited with status {os.WEXITSTATUS(status)} (sys.exit in a thread, os._exit or a crash)"


class PythonCall:
    __slots__ = ("cancelled", "pending", "rid")

    def __init__(self, rid: int) -> None:
        self.rid = rid
        self.cancelled = False
        self.pending: dict = {}  # call_id -> started (monotonic), tool calls waiting for the host


class Repl:
    """The container's one Python interpreter; cells run under the terminal's lock (one execution
    at a time per container, bash or Python), so a sweep never meets a running cell."""

    def __init__(self, terminal: Terminal) -> None:
        self.terminal = terminal
        self.channel = terminal.channel
        self.pid = 0
        self.sock = None
        self.reader: _CtlReader | None = None
        self.cells = 0
        self.note: str | None = self._note_from_marker()
        self.calls: dict[int, PythonCall] = {}
        self.current: PythonCall | None = None
        self._send_lock = threading.Lock()
        self.host_gone = False

    # -- the state marker: lets a new container life say that an earlier interpreter's state is gone
    @staticmethod
    def _note_from_marker() -> str | None:
        try:
            with open(REPL_MARKER, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW | os.O_NONBLOCK)) as fh:
                marker = json.loads(fh.read(4096) or b"{}")
        except (OSError, ValueError):
            return None
        if not isinstance(marker, dict) or marker.get("boot") == AGENT_BOOT or not marker.get("cells"):
            return None
        reason = marker.get("reason")
        if isinstance(reason, str) and reason:
            return f"the container was stopped ({reason[:200]})"
        return "the container was restarted or rebuilt since the last cell"

    def _write_marker(self, reason: str | None = None) -> None:
        data = {"boot": AGENT_BOOT, "cells": self.cells if self.alive() else 0}
        if reason:
            data["reason"] = reason
        try:
            os.makedirs(os.path.dirname(REPL_MARKER), exist_ok=True)
            _write_private(REPL_MARKER, json.dumps(data).encode())
        except OSError as exc:
            _log(f"cannot write {REPL_MARKER}: {exc}")

    def before_stop(self, reason: str | None) -> None:
        """``save_state`` with a ``reason``: the host is about to stop the container, so a live
        interpreter is lost (without one the container may well keep running: nothing to record)."""
        if reason and self.alive() and self.cells:
            self._write_marker(reason)

    def alive(self) -> bool:
        return self.pid > 0 and self.terminal.reaper.status(self.pid) is None

    def reap(self) -> None:
        """Ask the (idle) interpreter to collect its swept children, and wait (bounded) until it did:
        the next call must not find the pids limit full of zombies."""
        if not self.alive() or self.sock is None:
            return
        try:
            with self._send_lock:
                _ctl_send(self.sock, {"t": "reap"})
        except OSError:
            return
        self._read_one(time.monotonic() + 2.0, "reaped")

    def spare(self) -> set:
        """Processes a sweep must leave alone: the interpreter (and its zombie-free self)."""
        return {self.pid} if self.alive() else set()

    # -- interpreter lifecycle
    def _start(self) -> None:
        import socket as _socket

        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            actions = [
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3),
            ]
            argv = ["python3", os.path.abspath(__file__), "--repl", WORKSPACE]
            env = dict(self.terminal._env)
            try:
                pid = self.terminal.reaper.spawn(
                    REPL_PYTHON, argv, env, file_actions=actions, setsid=True,
                    setsigdef=self.terminal._sigdef, setsigmask=(),
                )
            except NotImplementedError:
                pid = self.terminal.reaper.spawn(
                    REPL_PYTHON, argv, env, file_actions=actions, setpgroup=0,
                    setsigdef=self.terminal._sigdef, setsigmask=(),
                )
        except OSError as exc:
            ours.close()
            raise ToolError("unavailable", f"cannot start the Python interpreter: {exc}") from None
        finally:
            theirs.close()
        self.pid, self.sock, self.reader = pid, ours, _CtlReader(ours)
        self.cells = 0
        ready = self._read_one(time.monotonic() + REPL_START_LIMIT, "ready")
        if not ready or ready.get("t") != "ready":
            status = self.terminal.reaper.status(pid)
            self.stop()
            raise ToolError("unavailable", f"the Python interpreter did not start: {_describe_exit(status)}")

    def _read_one(self, deadline: float, wanted: str = "") -> dict | None:
        """The next control frame (of type ``wanted``, others skipped: stale between cells)."""
        sel = selectors.PollSelector()
        try:
            sel.register(self.sock, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                try:
                    frames = self.reader.read()
                except (OSError, ValueError):
                    return None
                if frames is None:
                    return None
                for frame in frames:
                    if not wanted or frame.get("t") == wanted:
                        return frame
        finally:
            sel.close()

    def stop(self) -> None:
        """Kill the interpreter (its session and children too) and forget it."""
        pid, self.pid = self.pid, 0
        if pid > 0:
            _signal_group(pid, signal.SIGKILL)
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            deadline = time.monotonic() + KILL_WAIT_LIMIT
            while self.terminal.reaper.status(pid) is None and time.monotonic() < deadline:
                time.sleep(0.005)
            self.terminal.reaper.forget(pid)
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for fd in self.reader.fds if self.reader else ():
            try:
                os.close(fd)
            except OSError:
                pass
        self.reader = None
        self.cells = 0

    def _lost(self, why: str) -> None:
        """The interpreter is gone (or must go) for ``why``: the next cell's stderr says so."""
        had_state = self.cells > 0
        self.stop()
        if had_state:
            self.note = why
        self._write_marker()

    # -- host frames
    def cancel(self, target) -> bool:
        call = self.calls.get(target)
        if call is None:
            return False
        call.cancelled = True
        self.terminal.wake()
        return True

    def tool_result(self, req: dict) -> None:
        call = self.calls.get(req.get("target"))
        call_id = req.get("call_id")
        if call is None or not isinstance(call_id, str) or call_id not in call.pending:
            return  # late (the code gave up on it) or unknown
        text = req.get("text")
        if not isinstance(text, str):
            text = "" if text is None else str(text)
        self._answer(call, call_id, text, bool(req.get("is_error")))

    def _answer(self, call: PythonCall, call_id: str, text: str, is_error: bool) -> None:
        call.pending.pop(call_id, None)
        if len(text.encode("utf-8", "surrogatepass")) > REPL_MAX_FRAME - 4096:
            text, is_error = f"the tool result is larger than {REPL_MAX_FRAME - 4096} bytes", True
        sock = self.sock
        if sock is None:
            return
        try:
            with self._send_lock:
                _ctl_send(sock, {"t": "tool_result", "call_id": call_id, "text": text, "is_error": is_error})
        except OSError as exc:
            _log(f"cannot pass a tool result to the interpreter: {exc}")
        self.terminal.wake()

    def on_host_gone(self) -> None:
        """End of the host's stream: pending tool calls fail inside the code instead of waiting."""
        self.host_gone = True
        for call in list(self.calls.values()):
            for call_id in list(call.pending):
                self._answer(call, call_id, "the host connection closed; the tool call was not run", True)

    # -- the call
    def run(self, rid: int, req: dict, blob: bytes) -> None:
        call = self.calls.get(rid) or PythonCall(rid)
        self.calls[rid] = call
        try:
            code = _field_str(req, "code")
            _encode_text(code, "code")
            timeout = _field_seconds(req, "timeout", DEFAULT_CELL_TIMEOUT)
            max_output = _field_int(req, "max_output", DEFAULT_MAX_OUTPUT)
            max_spill = _field_int(req, "max_spill", DEFAULT_MAX_SPILL)
            max_file = _field_int(req, "max_file", DEFAULT_MAX_FILE)
            interval = _field_seconds(req, "progress_interval", None)
            pending_timeout = _field_seconds(req, "pending_timeout", DEFAULT_PENDING_TIMEOUT)
            max_in_flight = _field_int(req, "max_in_flight", DEFAULT_MAX_IN_FLIGHT, minimum=1)
            tools = req.get("tools") or []
            if not isinstance(tools, list) or not all(
                isinstance(t, dict) and isinstance(t.get("name"), str) and t["name"].isidentifier()
                and not keyword.iskeyword(t["name"]) for t in tools
            ):
                raise _invalid("'tools' must be a list of objects whose 'name' is a Python identifier")
            restart = req.get("restart", False)
            if not isinstance(restart, bool):
                raise _invalid("'restart' must be a boolean")
            with self.terminal.lock:
                if call.cancelled:
                    self.channel.result(rid, self._result("", "", 128 + signal.SIGKILL, True, [], None))
                    return
                try:
                    self._run_locked(call, code, timeout, max_output, max_spill, max_file, interval,
                                     restart, tools, pending_timeout, max_in_flight)
                finally:
                    self.current = None
                    self.terminal._prepare_next()
        finally:
            self.calls.pop(rid, None)

    def _result(self, stdout, stderr, return_code, timed_out, files, restarted) -> dict:
        return {
            "stdout": stdout, "stderr": stderr, "return_code": return_code, "timed_out": timed_out,
            "interrupted": False, "files": files, "restarted": restarted, "repl_alive": self.alive(),
            "cells": self.cells,
        }

    def _run_locked(self, call, code, timeout, max_output, max_spill, max_file, interval,
                    restart, tools, pending_timeout, max_in_flight) -> None:
        rid = call.rid
        seq, outdir = self.terminal._next_outdir()
        spill = os.path.join(SPILL_DIR, f"{seq}.")
        out = Capture(max_output, max_spill, spill + "stdout", self.terminal._prune_spill)
        err = Capture(max_output, max_spill, spill + "stderr", self.terminal._prune_spill)
        if restart:
            had = self.alive() and self.cells > 0
            self.stop()
            self.note = "restart was requested" if had else None
        restarted = None
        for attempt in (1, 2):
            restarted = self._ensure_started(err) or restarted
            self.current = call
            sent = self._send_cell(call, code, outdir, seq, tools, pending_timeout, max_in_flight)
            if sent is None:
                if attempt == 1:
                    continue
                raise ToolError("unavailable", "the Python interpreter could not be reached; retry the call")
            out_r, err_r, start = sent
            try:
                rc, timed_out, interrupted, lost, started = self._pump(
                    call, out_r, err_r, out, err, start, timeout, interval, max_in_flight)
            finally:
                os.close(out_r)
                os.close(err_r)
            # An interpreter killed between cells (say by `pkill` from bash) can still look alive
            # when the next cell is sent; it dies without having read it. None of the cell ran, so
            # it runs once more on a fresh interpreter, whose note says why the old state is gone.
            if not (lost and not started and not interrupted and not timed_out and attempt == 1):
                break
        if interrupted:
            err.feed(
                f"\ndetection_timeout: the cell ran past its {timeout:g} s wall-clock limit and was "
                f"interrupted{'; the interpreter did not stop and was killed (the next cell starts a fresh one)' if lost else ''}\n".encode()
            )
        elif lost and not timed_out:
            err.feed(f"\n[the Python interpreter stopped: {lost}; the next cell starts a fresh one]\n".encode())
        if rc == 0 and (interrupted or lost):
            rc = 1
        if self.alive():
            self.cells += 1
            if self.cells == 1:
                self._write_marker()  # from now on a lost interpreter is reported, in this container life or the next
        stdout, stderr = out.text(), err.text()
        if timed_out:
            self.channel.result(rid, self._result(stdout, stderr, rc, True, [], restarted))
            return
        files = self.terminal._send_files(rid, outdir, max_file)
        if files is not None:
            result = self._result(stdout, stderr, rc, False, files, restarted)
            result["interrupted"] = interrupted
            self.channel.result(rid, result)

    def _ensure_started(self, err: Capture) -> str | None:
        """A live interpreter for the next cell; returns the restart note fed to ``err``, if any."""
        if self.pid and not self.alive():
            self._lost(_describe_exit(self.terminal.reaper.status(self.pid)))
        if self.alive():
            return None
        self._start()
        note, self.note = self.note, None
        if note:
            err.feed(
                f"[the Python interpreter was restarted: {note}; variables, imports and "
                f"definitions from earlier cells are gone]\n".encode()
            )
        self._write_marker()
        return note

    def _send_cell(self, call, code, outdir, seq, tools, pending_timeout, max_in_flight):
        """Hand the cell and its output pipes to the interpreter; returns (stdout, stderr, clock),
        or None when the interpreter could not take it (it is gone: the caller may start another)."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            message = {
                "t": "run", "code": code, "outdir": outdir, "cell": seq, "tools": tools,
                "pending_timeout": pending_timeout, "max_in_flight": max_in_flight,
            }
            body_len = len(json.dumps(message, ensure_ascii=False).encode("utf-8", "surrogatepass"))
            if body_len > REPL_MAX_FRAME:
                raise _invalid(f"the code and tool list are larger than {REPL_MAX_FRAME} bytes")
            start = time.monotonic()  # the cell's clock: an interpreter start does not count
            try:
                with self._send_lock:
                    _ctl_send(self.sock, message, (out_w, err_w))
            except OSError as exc:
                status = self._exit_status(0.5)
                self._lost(_describe_exit(status) if status is not None else f"its channel broke ({exc.strerror or exc})")
                os.close(out_r)
                os.close(err_r)
                return None
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        return out_r, err_r, start

    def _pump(self, call, out_r, err_r, out, err, start, timeout, interval, max_in_flight):
        """Read the cell's pipes and the control socket until ``done`` (or the limit); returns
        (return_code, timed_out, interrupted, lost reason, whether the interpreter took the cell)."""
        paused = 0.0  # seconds spent with a tool call pending: not counted against the cell's limit
        paused_since = None
        if interval:
            interval = max(interval, MIN_PROGRESS_INTERVAL)
        next_progress = start + interval if interval else None
        interrupt_at = None
        rc = None
        interrupted = timed_out = started = False
        lost = None
        sel = selectors.PollSelector()
        try:
            sel.register(out_r, selectors.EVENT_READ, out)
            sel.register(err_r, selectors.EVENT_READ, err)
            sel.register(self.sock, selectors.EVENT_READ, "ctl")
            sel.register(self.terminal._wake_r, selectors.EVENT_READ, None)
            open_pipes = 2
            while rc is None:
                now = time.monotonic()
                if call.pending and paused_since is None:
                    paused_since = now
                elif not call.pending and paused_since is not None:
                    paused += now - paused_since
                    paused_since = None
                deadline = start + timeout + paused + ((now - paused_since) if paused_since else 0)
                if not self.alive():
                    lost = _describe_exit(self.terminal.reaper.status(self.pid))
                    break
                if interrupt_at is None and (now >= deadline or call.cancelled):
                    interrupted = not call.cancelled
                    timed_out = call.cancelled
                    interrupt_at = now
                    for call_id in list(call.pending):
                        self._answer(call, call_id, "the cell was interrupted", True)
                    try:
                        os.kill(self.pid, signal.SIGINT)
                    except ProcessLookupError:
                        pass
                if interrupt_at is not None and now >= interrupt_at + REPL_INTERRUPT_GRACE:
                    lost = f"the cell ran past its {timeout:g} s limit and did not stop on KeyboardInterrupt"
                    break
                if next_progress is not None and now >= next_progress:
                    self.channel.send({
                        "id": call.rid, "type": "progress", "elapsed": round(now - start, 3),
                        "stdout_tail": out.tail_text(PROGRESS_TAIL_CHARS),
                        "stderr_tail": err.tail_text(PROGRESS_TAIL_CHARS),
                    })
                    next_progress = max(next_progress + interval, now + interval / 2)
                wake = [t for t in (deadline if interrupt_at is None else None,
                                    interrupt_at + REPL_INTERRUPT_GRACE if interrupt_at else None,
                                    next_progress) if t is not None and t > now]
                wait = min(wake, default=now + 0.05) - now
                for key, _ in sel.select(min(max(wait, 0.0), 1.0)):
                    if key.data is None:
                        self.terminal._drain_wake()
                    elif key.data == "ctl":
                        try:
                            frames = self.reader.read()
                        except ConnectionResetError:  # it died with our frame unread
                            frames = None
                        except (OSError, ValueError) as exc:
                            lost = f"it sent a malformed message ({exc})"
                            frames = None
                        if frames is None:
                            lost = lost or self._why_channel_closed()
                            break
                        for frame in frames:
                            if frame.get("t") == "started":
                                started = True
                            elif frame.get("t") == "done":
                                value = frame.get("return_code")
                                rc = value if isinstance(value, int) and not isinstance(value, bool) else 1
                            elif frame.get("t") == "tool_call":
                                self._tool_call(call, frame, max_in_flight)
                            elif frame.get("t") == "tool_abandon":
                                call.pending.pop(frame.get("call_id"), None)
                        if lost:
                            break
                    else:
                        data = os.read(key.fd, 65536)
                        if data:
                            key.data.feed(data)
                        else:
                            sel.unregister(key.fd)
                            open_pipes -= 1
                if lost:
                    break
            sel.unregister(self.sock)
            if lost:
                status = self.terminal.reaper.status(self.pid) if self.pid else None
                if status is not None and rc is None:
                    rc = _return_code(status)
                self._lost(lost)
            self._sweep_cell()
            # The interpreter put /dev/null back on fds 1 and 2 before `done`; the cell's children are
            # dead: read what is left until EOF.
            sel.unregister(self.terminal._wake_r)
            drain_end = time.monotonic() + DRAIN_LIMIT
            while open_pipes:
                left = drain_end - time.monotonic()
                if left <= 0:
                    _log(f"cell output pipes still open {DRAIN_LIMIT:.1f}s after the cell")
                    break
                for key, _ in sel.select(left):
                    data = os.read(key.fd, 65536)
                    if data:
                        key.data.feed(data)
                    else:
                        sel.unregister(key.fd)
                        open_pipes -= 1
        finally:
            sel.close()
        for call_id in list(call.pending):
            call.pending.pop(call_id, None)
        if rc is None:
            rc = 128 + signal.SIGKILL if lost else 1
        return rc, timed_out, interrupted, lost, started

    def _exit_status(self, limit: float):
        """The interpreter's exit status, waiting up to ``limit`` s for the reaper; None if it lives."""
        return self.terminal.reaper.wait(self.pid, limit)

    def _why_channel_closed(self) -> str:
        """The control socket hit EOF: the interpreter exited (say how) or the cell closed it."""
        status = self._exit_status(0.5)
        if status is not None:
            return _describe_exit(status)
        return "its channel to the agent was closed (by the cell's code)"

    def _sweep_cell(self) -> None:
        """Stray processes of the cell go, as after a bash call; the interpreter and the ready bash stay."""
        spare = self.spare()
        ready = self.terminal._ready
        if ready is not None and self.terminal.reaper.status(ready[0]) is None:
            spare.add(ready[0])
        if os.getpid() == 1:
            if spare:
                sweep_sparing(spare)
            else:
                sweep(0)
        elif self.pid:
            _kill_children_of(self.pid)

    def _tool_call(self, call: PythonCall, frame: dict, max_in_flight: int) -> None:
        call_id, name, arguments = frame.get("call_id"), frame.get("name"), frame.get("input")
        if not isinstance(call_id, str) or not call_id or len(call_id) > 100:
            return
        if not isinstance(name, str) or not isinstance(arguments, dict):
            self._answer(call, call_id, "malformed tool call", True)
            return
        call.pending[call_id] = time.monotonic()
        if len(call.pending) > max_in_flight:
            self._answer(call, call_id, f"more than {max_in_flight} tool calls in flight", True)
            return
        if self.host_gone:
            self._answer(call, call_id, "the host is not connected; the tool call was not run", True)
            return
        self.channel.send({"id": call.rid, "type": "tool_call", "call_id": call_id, "name": name, "input": arguments})
        if self.channel._failed:
            self._answer(call, call_id, "the host is not connected; the tool call was not run", True)


def repl_main(workspace: str) -> int:
    """The interpreter process (``--repl``): runs cells sent over fd 3 in one persistent namespace."""
    import ast
    import asyncio
    import builtins
    import fcntl
    import inspect
    import linecache
    import socket as _socket
    import types

    ctl = _socket.socket(fileno=os.dup(3))  # os.dup: non-inheritable, so commands run by cells never get it
    os.close(3)
    send_lock = threading.Lock()
    runs: queue.SimpleQueue = queue.SimpleQueue()
    futures: dict = {}
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    def send(message: dict) -> None:
        with send_lock:
            _ctl_send(ctl, message)

    def reader() -> None:
        r = _CtlReader(ctl)
        try:
            while True:
                frames = r.read()
                if frames is None:
                    break
                for frame in frames:
                    if frame.get("t") == "run":
                        fds, r.fds = r.fds[:2], r.fds[2:]
                        runs.put((frame, fds))
                    elif frame.get("t") == "reap":  # the agent swept the cell's processes: collect them
                        reap_children()
                        send({"t": "reaped"})
                    elif frame.get("t") == "tool_result":
                        fut = futures.pop(frame.get("call_id"), None)
                        if fut is not None:
                            loop.call_soon_threadsafe(_settle, fut, frame)
        except (OSError, ValueError):
            pass
        os._exit(0)  # the agent is gone: so is the interpreter

    def reap_children() -> None:
        """Collect exited children (swept by the agent): zombies must not fill the pids limit."""
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    return
            except ChildProcessError:
                return

    def _settle(fut, frame) -> None:
        if not fut.done():
            fut.set_result(frame)

    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    namespace = module.__dict__
    sys.argv = [""]
    sys.path[0] = ""
    try:
        os.chdir(workspace)
    except OSError:
        pass
    try:
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass
    injected: dict = {}
    limits = {"pending_timeout": DEFAULT_PENDING_TIMEOUT, "sem": None, "n": 0}

    class ToolCallError(RuntimeError):
        """A tool called from the code answered with is_error: the message is the tool's text."""

    def tool_function(spec: dict):
        name = spec["name"]

        async def call(input: dict | None = None, /, **kwargs):  # "input": the documented signature
            arguments = dict(input or {}, **kwargs)
            if not isinstance(arguments, dict):
                raise TypeError(f"{name}() takes one dict of arguments")
            body = json.dumps(arguments, ensure_ascii=False)
            if len(body.encode("utf-8", "surrogatepass")) > REPL_MAX_FRAME - 4096:
                raise ValueError(f"the input of {name}() is larger than {REPL_MAX_FRAME - 4096} bytes")
            sem = limits["sem"]
            async with sem:
                limits["n"] += 1
                call_id = f"c{limits['n']}"
                fut = asyncio.get_running_loop().create_future()
                futures[call_id] = fut
                try:
                    send({"t": "tool_call", "call_id": call_id, "name": name, "input": arguments})
                    timeout = limits["pending_timeout"]
                    try:
                        frame = await asyncio.wait_for(fut, timeout)
                    except asyncio.TimeoutError:  # noqa: UP041 - not TimeoutError's alias before Python 3.11
                        send({"t": "tool_abandon", "call_id": call_id})
                        raise TimeoutError(
                            f"Calling tool ['{name}'] timed out (no response after {timeout:g}s)."
                        ) from None
                finally:
                    futures.pop(call_id, None)
            text = frame.get("text") or ""
            if frame.get("is_error"):
                raise ToolCallError(text)
            return text

        call.__name__ = call.__qualname__ = name
        call.__doc__ = spec.get("description") or None
        call.__codeexec_tool__ = True
        return call

    def list_tools() -> list:
        """The tools this code may call: name, description, input_schema, output_schema."""
        return [dict(v) for v in injected.values()]

    def inject(tools: list) -> None:
        for name in list(injected):
            if getattr(namespace.get(name), "__codeexec_tool__", False):
                del namespace[name]
        injected.clear()
        for spec in tools:
            namespace[spec["name"]] = tool_function(spec)
            injected[spec["name"]] = {
                "name": spec["name"], "description": spec.get("description", ""),
                "input_schema": spec.get("input_schema") or {"type": "object"},
                "output_schema": spec.get("output_schema"),
            }
        if tools or "list_tools" not in namespace:
            namespace["list_tools"] = list_tools
            namespace.setdefault("ToolCallError", ToolCallError)

    def run_code(code, filename: str):
        value = eval(code, namespace)
        if code.co_flags & inspect.CO_COROUTINE:
            task = loop.create_task(value)
            try:
                return loop.run_until_complete(task)
            except BaseException:  # noqa: BLE001 - an interrupt or the cell's error: cancel its task, re-raise
                task.cancel()
                try:
                    loop.run_until_complete(task)
                except BaseException:  # noqa: BLE001, S110 - the cancellation's own outcome; the first error is raised
                    pass
                raise
        return value

    def show_error(exc: BaseException, filename_prefix: str) -> None:
        tb = exc.__traceback__
        while tb is not None and not tb.tb_frame.f_code.co_filename.startswith(filename_prefix):
            tb = tb.tb_next
        if isinstance(exc, SyntaxError):
            tb = None
        try:
            traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
        except (OSError, ValueError):  # the cell closed or broke its stderr
            pass

    def execute(source: str, seq: int) -> int:
        filename = f"<cell-{seq}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        try:
            tree = ast.parse(source, filename, "exec")
            shown = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
            if shown:  # a final bare expression is kept (one compile: await works in it like anywhere else)
                last = tree.body[-1]
                tree.body[-1] = ast.copy_location(
                    ast.Assign(targets=[ast.Name(id=LAST_VALUE, ctx=ast.Store())], value=last.value), last
                )
                ast.fix_missing_locations(tree)
            namespace.pop(LAST_VALUE, None)
            run_code(compile(tree, filename, "exec", flags=flags, dont_inherit=True), filename)
            value = namespace.pop(LAST_VALUE, None)
            if shown and value is not None:
                namespace["_"] = value
                print(repr(value))
            return 0
        except SystemExit as exc:
            code = exc.code
            if code is None or isinstance(code, int) and not isinstance(code, bool):
                return code or 0
            print(code, file=sys.stderr)
            return 1
        except BaseException as exc:  # noqa: BLE001 - the cell's own failure: a result (traceback on stderr), not an error
            show_error(exc, "<cell-")
            return 1

    threading.Thread(target=reader, name="ctl-reader", daemon=True).start()
    # A sweep stops the interpreter while it kills the cell's children; gVisor then sends the
    # (orphaned, stopped) process group SIGHUP. A Python-level no-op handler (not SIG_IGN: that would
    # be inherited by every command a cell runs) keeps the interpreter alive.
    signal.signal(signal.SIGHUP, lambda signum, frame: None)
    main_pid = os.getpid()
    send({"t": "ready", "pid": main_pid, "python": sys.version.split()[0]})
    devnull = fcntl.fcntl(os.open(os.devnull, os.O_RDWR), fcntl.F_DUPFD_CLOEXEC, 10)
    while True:
        try:
            frame, fds = runs.get()
        except KeyboardInterrupt:  # a late interrupt, between cells
            continue
        try:
            send({"t": "started"})  # before any of the cell runs: a loss before this is safe to rerun
        except OSError:
            os._exit(70)
        rc = 1
        try:
            reap_children()  # the last cell's swept children (os.fork without wait): no zombies pile up
            # Received fds may have landed on 0-2 if the last cell closed those: move them up first.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds]
            for fd in fds:
                os.close(fd)
            if len(high) == 2:
                os.dup2(devnull, 0)
                os.dup2(high[0], 1)
                os.dup2(high[1], 2)
            for fd in high:
                os.close(fd)
            os.environ["OUTPUT_DIR"] = str(frame.get("outdir") or "")
            limits["pending_timeout"] = float(frame.get("pending_timeout") or DEFAULT_PENDING_TIMEOUT)
            limits["sem"] = asyncio.Semaphore(int(frame.get("max_in_flight") or DEFAULT_MAX_IN_FLIGHT))
            inject([t for t in frame.get("tools") or [] if isinstance(t, dict)])
            asyncio.set_event_loop(loop)  # a cell's asyncio.run() leaves no current loop behind
            signal.signal(signal.SIGINT, signal.default_int_handler)
            rc = execute(str(frame.get("code") or ""), int(frame.get("cell") or 0))
        except BaseException as exc:  # noqa: BLE001 - outside the cell's frames (a late interrupt, a broken fd): the interpreter lives on
            try:
                traceback.print_exception(type(exc), exc, None, file=sys.stderr)
            except (OSError, ValueError):
                pass
        finally:
            while True:
                try:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    break
                except KeyboardInterrupt:
                    continue
        if os.getpid() != main_pid:  # a process the cell forked finished the cell's code: it ends here
            os._exit(rc if 0 <= rc < 256 else 1)
        streams = {id(s): s for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) if s}.values()
        for stream in streams:
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        for fd in (0, 1, 2):
            try:
                os.dup2(devnull, fd)
            except OSError:
                pass
        for stream in streams:  # what a broken fd left in the buffers goes to /dev/null, not the next cell
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        try:
            send({"t": "done", "return_code": rc})
        except OSError:
            os._exit(70)


# -- services: processes that outlive a call (op `services`, opt-in) -------------------------------
# A service is `bash -c COMMAND` started by the agent in a session of its own. Every process of that
# session (its children too, e.g. a server's workers) is spared by the end-of-call sweeps; anything
# else a call leaves behind is still killed (a call's processes cannot join another session). Its
# stdout and stderr go to one pipe that a thread drains into a bounded ring buffer, so a flood costs
# at most SERVICE_LOG_BYTES of memory and never blocks the service. All of it dies with the container.
SERVICE_LOG_BYTES = 256 * 1024
SERVICE_MAX = 4
SERVICE_KEEP_EXITED = 16
SERVICE_COMMAND_LIMIT = 64 * 1024
SERVICE_STOP_GRACE = 2.0
SERVICE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_SERVICES = None  # the agent's Services (set by Agent): sweeps spare their sessions


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, session) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[1]), int(fields[3])
    except (OSError, IndexError, ValueError):
        return None


def _session_members(sids: set) -> dict:
    """{sid: [pids]} of the live (non-zombie) processes in the sessions ``sids``."""
    found: dict = {sid: [] for sid in sids}
    if not sids:
        return found
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit() or name == "1":
            continue
        st = _proc_stat(int(name))
        if st is not None and st[2] in found and st[0] != "Z":
            found[st[2]].append(int(name))
    return found


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _services_spare() -> set:
    """Every process of a live service's session (empty when there are none: the common case)."""
    return _SERVICES.spare() if _SERVICES is not None else set()


class Service:
    def __init__(self, name: str, command: str, pid: int, fd: int, log_bytes: int) -> None:
        self.name = name
        self.command = command
        self.pid = pid
        self.started = time.monotonic()
        self.started_at = time.time()
        self.ended: float | None = None
        self.log_bytes = log_bytes
        self.ring = bytearray()
        self.total = 0
        self.lock = threading.Lock()
        self.stopped_by: str | None = None  # "stop", "memory cap"
        self.reader = threading.Thread(target=self._drain, args=(fd,), name=f"service-{name}", daemon=True)
        self.reader.start()

    def _drain(self, fd: int) -> None:
        try:
            while True:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                with self.lock:
                    self.total += len(data)
                    self.ring += data
                    if len(self.ring) > self.log_bytes:
                        del self.ring[: len(self.ring) - self.log_bytes]
        finally:
            os.close(fd)

    def output(self, tail: int) -> tuple[str, int, bool]:
        with self.lock:
            data = bytes(self.ring[-tail:]) if tail > 0 else b""
            total = self.total
        dropped = total > len(data)
        if dropped:
            cut = data.find(b"\n")  # start at a line when one begins within the tail
            if 0 <= cut < len(data) - 1:
                data = data[cut + 1 :]
        return data.decode("utf-8", "replace"), total, dropped


class Services:
    def __init__(self, terminal: Terminal) -> None:
        self.terminal = terminal
        self.items: dict = {}  # name -> Service, in start order
        self.lock = threading.Lock()  # serialises the op's actions
        self.spawn_lock = threading.Lock()  # held by a start's spawn and by sweeps reading the set
        self._watcher: threading.Thread | None = None
        self.max_memory = 0

    # -- what sweeps and the host ask
    def _status(self, svc: Service) -> int | None:
        return self.terminal.reaper.status(svc.pid)

    def _members(self) -> dict:
        return _session_members({s.pid for s in list(self.items.values())})

    def spare(self) -> set:
        if not self.items:
            return set()
        with self.spawn_lock:
            services = list(self.items.values())
            spare: set = set()
            for pids in _session_members({s.pid for s in services}).values():
                spare.update(pids)
            for svc in services:  # the leader until the reaper has collected it
                if self._status(svc) is None:
                    spare.add(svc.pid)
        return spare

    def _drop(self, name: str) -> None:
        svc = self.items.pop(name, None)
        if svc is not None and self._status(svc) is not None:
            self.terminal.reaper.forget(svc.pid)

    def _info(self, svc: Service, members: dict) -> dict:
        status = self._status(svc)
        live = members.get(svc.pid, [])
        running = bool(live)
        if not running and status is None:
            # Gone from /proc but not yet collected (gVisor shows the gap): the status follows.
            status = self.terminal.reaper.wait(svc.pid, 2.0)
        if not running and svc.ended is None:
            svc.ended = time.monotonic()
        end = time.monotonic() if running else svc.ended
        return {
            "name": svc.name,
            "pid": svc.pid,
            "command": svc.command,
            "status": "running" if running else "exited",
            "exit_code": _return_code(status) if status is not None else None,
            "processes": len(live),
            "memory_bytes": sum(_rss_bytes(p) for p in live),
            "uptime_seconds": round(end - svc.started, 3),
            "started_at": round(svc.started_at, 3),
            "output_bytes": svc.total,
            **({"stopped_by": svc.stopped_by} if svc.stopped_by else {}),
        }

    # -- the op
    def handle(self, rid: int, req: dict, blob: bytes) -> dict:
        action = _field_str(req, "action")
        with self.lock:
            if action == "list":
                members = self._members()
                return {"services": [self._info(s, members) for s in self.items.values()]}
            name = _field_str(req, "name")
            if not name or len(name) > 64 or not set(name) <= SERVICE_NAME_CHARS or name[0] in ".-":
                raise _invalid(f"service name {name!r}: 1-64 letters, digits, '_', '.', '-' (not starting with '.' or '-')")
            if action == "start":
                return {"service": self._start(name, req)}
            svc = self.items.get(name)
            if svc is None:
                raise _invalid(f"no service named {name!r} (`list` shows them)")
            if action == "logs":
                tail = _field_int(req, "tail", svc.log_bytes)
                text, total, dropped = svc.output(min(tail, svc.log_bytes))
                return {"service": self._info(svc, self._members()), "output": text, "truncated": dropped}
            if action == "stop":
                self._kill(svc, "stop")
                info = self._info(svc, self._members())
                self._drop(name)
                return {"service": info}
        raise _invalid(f"services: unknown action {action!r} (start, list, logs, stop)")

    def _start(self, name: str, req: dict) -> dict:
        command = _field_str(req, "command")
        if not command.strip():
            raise _invalid("services start: `command` is empty")
        encoded = _encode_text(command, "command")
        if len(encoded) > SERVICE_COMMAND_LIMIT or b"\0" in encoded:
            raise _invalid(f"services start: the command is longer than {SERVICE_COMMAND_LIMIT} bytes or has a NUL")
        limit = _field_int(req, "max_services", SERVICE_MAX, minimum=1)
        log_bytes = _field_int(req, "log_bytes", SERVICE_LOG_BYTES, minimum=1024)
        self.max_memory = _field_int(req, "max_memory", 0)
        members = self._members()
        old = self.items.get(name)
        if old is not None and members.get(old.pid):
            raise _invalid(f"a service named {name!r} is running (stop it first)")
        running = [s for s in self.items.values() if members.get(s.pid)]
        if len(running) >= limit:
            raise _invalid(
                f"services: {len(running)} of at most {limit} are running ({', '.join(s.name for s in running)}); stop one first"
            )
        self._drop(name)
        exited = [n for n, s in self.items.items() if not members.get(s.pid)]
        for n in exited[: max(0, len(exited) - SERVICE_KEEP_EXITED + 1)]:
            self._drop(n)
        t = self.terminal
        script = f"{t._script_head}{command}\n"  # the shell's cwd and exports, no state-saving trap
        env = dict(t._env, SERVICE_NAME=name)
        out_r, out_w = os.pipe()
        try:
            actions = [
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, out_w, 2),
            ]
            argv = ["bash", "--noprofile", "--norc", "-c", script]
            with self.spawn_lock:  # a concurrent sweep sees the new service or none of it
                pid = t.reaper.spawn(t._bash, argv, env, file_actions=actions, setsid=True, setsigdef=t._sigdef, setsigmask=())
                svc = self.items[name] = Service(name, command, pid, out_r, log_bytes)
        except OSError as exc:
            os.close(out_r)
            raise ToolError("unavailable", f"cannot start the service: {exc}") from None
        finally:
            os.close(out_w)
        if self.max_memory and (self._watcher is None or not self._watcher.is_alive()):
            self._watcher = threading.Thread(target=self._watch_memory, name="services-memory", daemon=True)
            self._watcher.start()
        return self._info(svc, {pid: [pid]})

    def _kill(self, svc: Service, why: str) -> None:
        """SIGTERM every process of its session, SIGKILL what is left after a grace period."""
        if svc.stopped_by is None and self._members().get(svc.pid):
            svc.stopped_by = why
        end = time.monotonic() + SERVICE_STOP_GRACE
        sig = signal.SIGTERM
        while True:
            pids = self._members().get(svc.pid, [])
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, sig)
                    if sig == signal.SIGTERM:
                        os.kill(pid, signal.SIGCONT)  # a stopped process must see its TERM
                except (ProcessLookupError, PermissionError):
                    pass
            if time.monotonic() >= end:
                if sig == signal.SIGKILL and time.monotonic() >= end + QUIET_LIMIT:
                    _log(f"service {svc.name}: processes left after SIGKILL")
                    break
                sig = signal.SIGKILL
            time.sleep(0.02)
        svc.reader.join(DRAIN_LIMIT)

    def _watch_memory(self) -> None:
        """The services' own sub-limit (``max_memory``, their RSS summed): over it, the largest one
        is stopped. The container's memory limit (its cgroup) holds them in any case."""
        while True:
            time.sleep(1.0)
            with self.lock:
                if not self.max_memory or not self.items:
                    return
                members = self._members()
                sizes = {n: sum(_rss_bytes(p) for p in members.get(s.pid, [])) for n, s in self.items.items()}
                if sum(sizes.values()) > self.max_memory:
                    name = max(sizes, key=sizes.get)
                    _log(f"services use {sum(sizes.values())} bytes (cap {self.max_memory}): stopping {name}")
                    self._kill(self.items[name], "memory cap")


# -- the server ------------------------------------------------------------------------------------
class Workers:
    """Threads that run requests concurrently; idle ones are reused (starting a thread costs more
    than a whole editor request)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._idle = 0
        self._busy = 0

    def submit(self, job, *args) -> None:
        with self._cond:
            self._busy += 1
            start = self._idle == 0
            if not start:
                self._idle -= 1
        self._jobs.put((job, args))
        if start:
            threading.Thread(target=self._loop, name="worker", daemon=True).start()

    def _loop(self) -> None:
        while True:
            job, args = self._jobs.get()
            try:
                job(*args)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._idle += 1
                    self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._busy == 0, timeout)


class Agent:
    def __init__(self, fd_in: int = 0, fd_out: int = 1) -> None:
        self.fd_in = fd_in
        self.channel = Channel(fd_out)
        self.terminal = Terminal(self.channel)
        self.editor = Editor(self.channel)
        self.repl = Repl(self.terminal)
        global _REPL
        _REPL = self.repl
        self.services = Services(self.terminal)
        global _SERVICES
        _SERVICES = self.services
        self.workers = Workers()
        self.garbage = False
        self.claimed = not POOL_MODE
        self._threaded = {
            "bash": self.terminal.run,
            "view": self.editor.view,
            "create": self.editor.create,
            "str_replace": self.editor.str_replace,
            "get_file": self.editor.get_file,
            "python": self.repl.run,
            "services": self.services.handle,
        }

    def _hello(self, rid: int, req: dict, blob: bytes) -> dict:
        return {
            "agent_version": AGENT_VERSION,
            "python": ".".join(map(str, sys.version_info[:3])),
            "uid": os.getuid(),
            "workspace": WORKSPACE,
            "pid": os.getpid(),
            "ops": sorted(["hello", "ping", "cancel", "save_state", "put_file", "tool_result", "replay", *self._threaded]),
            "boot": AGENT_BOOT,
            "repl_alive": self.repl.alive(),
        }

    def _save_state(self, rid: int, req: dict, blob: bytes) -> dict:
        reason = req.get("reason")
        self.repl.before_stop(reason if isinstance(reason, str) else None)
        _copy_state(STATE_FILE, STATE_BACKUP)
        return {}

    def _handle(self, rid: int, handler, req: dict, blob: bytes) -> None:
        try:
            result = handler(rid, req, blob)
        except ToolError as exc:
            self.channel.error(rid, exc.code, exc.message)
        except Exception as exc:  # the top-level handler: report, log, keep serving
            _log(f"request {rid} ({req.get('op')}) failed:\n{traceback.format_exc()}")
            self.channel.error(rid, "unavailable", f"agent error: {type(exc).__name__}: {exc}")
        else:
            if result is not None:
                self.channel.result(rid, result)

    def dispatch(self, body: bytes, blob: bytes) -> None:
        try:
            req = json.loads(body.decode("utf-8", "surrogatepass"))
        except (UnicodeDecodeError, ValueError) as exc:
            _log(f"malformed request: {exc}")
            self.channel.error(0, "invalid_tool_input", f"malformed request: {exc}")
            return
        rid = req.get("id") if isinstance(req, dict) else None
        if not isinstance(rid, int) or isinstance(rid, bool):
            self.channel.error(0, "invalid_tool_input", "malformed request: not an object with an integer id")
            return
        op = req.get("op")
        if op not in ("ping", "hello"):
            self.claimed = True  # handed out (`claim`, or any real work): the container outlives its server
        if op == "claim":
            return
        if op == "replay":
            self.channel.replay(rid, req.get("target"))
            return
        if op not in UNJOURNALED_OPS:
            self.channel.track(rid)
        if op == "cancel":
            if not self.repl.cancel(req.get("target")):
                self.terminal.cancel(req.get("target"))
        elif op == "tool_result":
            self.repl.tool_result(req)
        elif op == "ping":
            self.channel.result(rid, {})
        elif op == "save_state":
            self._handle(rid, self._save_state, req, blob)
        elif op == "hello":
            self._handle(rid, self._hello, req, blob)
        elif op == "put_file":  # inline: an upload's chunks must be written in order
            self._handle(rid, self.editor.put_file, req, blob)
        elif isinstance(op, str) and op in self._threaded:
            if op == "bash":
                self.terminal.calls[rid] = BashCall(rid)
            elif op == "python":
                self.repl.calls[rid] = PythonCall(rid)
            self.workers.submit(self._handle, rid, self._threaded[op], req, blob)
        else:
            self.channel.error(rid, "invalid_tool_input", f"unknown op {op!r}")

    def serve(self) -> int:
        buf = bytearray()
        backoff = 0.0
        while True:
            if not self.claimed and not select.select([self.fd_in], [], [], POOL_SILENCE)[0]:
                _log(f"unclaimed pool container: no word from its server for {POOL_SILENCE:g} s; exiting")
                return self._shutdown()
            try:
                chunk = os.read(self.fd_in, CHUNK)
            except OSError as exc:
                _log(f"reading requests failed: {exc}")
                chunk = b""
            if not chunk and not self.claimed:
                _log("unclaimed pool container: its server is gone; exiting")
                return self._shutdown()
            if not chunk:
                self.repl.on_host_gone()
                if buf:
                    _log(f"end of input inside a frame ({len(buf)} bytes dropped)")
                    self.garbage = True
                    del buf[:]
                if os.getpid() != 1:
                    return self._shutdown()
                # As PID 1 the container must live on: the host may attach again later.
                if backoff == 0.0:
                    _log("end of input; waiting for the host to attach again")
                backoff = min(max(backoff * 2, 0.05), 1.0)
                time.sleep(backoff)
                continue
            backoff = 0.0
            self.repl.host_gone = False
            buf += chunk
            pos = 0
            while len(buf) - pos >= HEADER.size:
                json_len, blob_len = HEADER.unpack_from(buf, pos)
                if json_len == 0 or json_len > MAX_JSON or blob_len > MAX_BLOB:
                    _log(f"bad frame header ({json_len}, {blob_len}): dropping {len(buf) - pos} buffered bytes")
                    self.garbage = True
                    pos = len(buf)
                    break
                end = pos + HEADER.size + json_len + blob_len
                if len(buf) < end:
                    break
                body = bytes(buf[pos + HEADER.size : pos + HEADER.size + json_len])
                blob = bytes(buf[pos + HEADER.size + json_len : end])
                pos = end
                try:
                    self.dispatch(body, blob)
                except Exception:  # the top-level guard: PID 1 must keep serving
                    _log(f"dispatch failed:\n{traceback.format_exc()}")
            del buf[:pos]

    def _shutdown(self) -> int:
        """End of input when not PID 1 (tests), or an unclaimed pool container's server is gone:
        stop running commands, then exit."""
        self.terminal.cancel_all()
        for call in list(self.repl.calls.values()):
            call.cancelled = True
        if not self.workers.wait_idle(5.0):
            _log("requests still running at exit")
        self.repl.stop()
        return 1 if self.garbage else 0


def _copy_state(src: str, dst: str) -> None:
    """Copy a shell-state file atomically (regular files only); no source means no state: remove dst."""
    try:
        with open(src, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW | os.O_NONBLOCK)) as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return
            data = fh.read(1 << 20)
    except OSError:
        _remove(dst)
        return
    try:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = f"{dst}.{os.getpid()}.tmp"
        with open(tmp, "wb") as out:
            out.write(data)
        os.replace(tmp, dst)
    except OSError as exc:
        _log(f"cannot save shell state to {dst}: {exc}")


SANDBOX_UID = SANDBOX_GID = 1000


def _drop_root() -> None:
    """Under gVisor the container starts as root so that the agent's stdio pipes are root's (the
    engine's GVISOR_START_CAPS note): become 1000:1000 for good before anything else runs. The
    bounding set is emptied first (CAP_SETPCAP), so no later exec can regain a capability; any
    failure ends the agent rather than let user code run as root. Asked for by the engine
    (``CODEEXEC_DROP_ROOT``; the unit tests run the agent on the host, as whoever runs them)."""
    if os.environ.pop("CODEEXEC_DROP_ROOT", "") != "1" or (os.getuid() != 0 and os.geteuid() != 0):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP; EINVAL past the last capability
            if ctypes.get_errno() == errno.EINVAL:
                break
            os.write(2, f"codeexec-agent: cannot drop capability {cap}: {os.strerror(ctypes.get_errno())}\n".encode())
            os._exit(70)
    os.setgroups([])
    os.setresgid(SANDBOX_GID, SANDBOX_GID, SANDBOX_GID)
    os.setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
    if 0 in os.getresuid() or 0 in os.getresgid():
        os.write(2, b"codeexec-agent: still root after dropping privileges\n")
        os._exit(70)


def _set_non_dumpable() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):
        pass


def _release_startup_memory() -> None:
    """Hand the heap that start-up left free back to the kernel (glibc keeps it otherwise).

    Without the image's .pyc (tests on the host, a derived image with a changed agent) the
    fresh interpreter compiles this file: ~5 MiB of the parser's memory, freed but kept by
    malloc. Not glibc (no ``malloc_trim``): nothing to do.
    """
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def main() -> int:
    _drop_root()
    if len(sys.argv) >= 3 and sys.argv[1] == "--repl":
        os._exit(repl_main(sys.argv[2]))
    _set_non_dumpable()
    # As PID 1, a signal with the default action cannot be sent from inside the container; Python's
    # own SIGINT handler would let `kill -INT 1` in user code stop the agent.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    for directory, mode in ((STATE_DIR, 0o700), (WORKSPACE, 0o755), (INPUT_DIR, 0o755)):
        try:
            os.makedirs(directory, mode=mode, exist_ok=True)
        except OSError as exc:
            _log(f"cannot create {directory}: {exc}")
    try:
        os.chdir(WORKSPACE)
    except OSError as exc:
        _log(f"cannot enter the workspace {WORKSPACE}: {exc}")
    if not os.path.exists(STATE_FILE):
        _copy_state(STATE_BACKUP, STATE_FILE)
    _release_startup_memory()
    code = Agent().serve()
    os._exit(code)


if __name__ == "__main__":
    main()
