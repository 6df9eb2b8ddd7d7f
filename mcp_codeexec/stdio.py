"""The stdio transport without worker threads.

The SDK's ``stdio_server`` reads stdin and writes stdout through ``anyio.wrap_file``: every
request line and every reply costs a round trip through a worker thread (three per tool call:
readline, write, flush). When stdin and stdout are pipes or sockets (always, when an MCP client
launches us) this module serves the same two line streams with non-blocking reads and writes on
the event loop instead, and hands them to the SDK's ``stdio_server``, which keeps doing the
JSON-RPC framing. Anything else (a terminal, a file) gets the SDK's own streams.

Like the SDK, it moves the wire off fd 0/1 while serving (fd 0 reads /dev/null, fd 1 writes to
stderr) so nothing else in the process can read requests or corrupt replies, and puts it back at
exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server.stdio import stdio_server

from .direct_calls import DirectCalls, available

READ_CHUNK = 256 * 1024


def _is_stream(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class _FdLines:
    """Async iterator of the text lines arriving on a non-blocking fd (like iterating a text file).
    With ``direct``, the lines it answers itself are not passed on."""

    def __init__(self, fd: int, direct: DirectCalls | None = None) -> None:
        self._fd = fd
        self._buf = bytearray()
        self._scanned = 0
        self._eof = False
        self._direct = direct

    async def __anext__(self) -> str:
        while True:
            line = await self._next_line()
            if self._direct is None or not self._direct.take(line):
                return line

    async def _end(self) -> None:
        if self._direct is not None:
            await self._direct.close()  # its calls settle while the server still runs
        raise StopAsyncIteration

    def __aiter__(self) -> _FdLines:
        return self

    async def _next_line(self) -> str:
        while True:
            end = self._buf.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                self._scanned = 0
                return line.decode("utf-8", "replace")
            self._scanned = len(self._buf)
            if self._eof:
                if self._buf:
                    line = bytes(self._buf)
                    self._buf.clear()
                    self._scanned = 0
                    return line.decode("utf-8", "replace")
                await self._end()
            try:
                chunk = os.read(self._fd, READ_CHUNK)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            if chunk:
                self._buf += chunk
            else:
                self._eof = True


class _FdWriter:
    """``write``/``flush`` of text onto a non-blocking fd; each write goes out whole before it
    returns, and one at a time (the SDK's writer and the direct path share the fd)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = anyio.Lock(fast_acquire=True)
        self.direct: DirectCalls | None = None

    async def write(self, text: str) -> None:
        view = memoryview(text.encode("utf-8"))
        try:
            written = os.write(self._fd, view) if not self._lock.locked() else 0
        except BlockingIOError:
            written = 0
        if written < len(view):  # the pipe is full, or another write is under way
            async with self._lock:
                view = view[written:]
                while view:
                    try:
                        view = view[os.write(self._fd, view) :]
                    except BlockingIOError:
                        await anyio.wait_writable(self._fd)
        if self.direct is not None and self.direct.watching_replies:
            self.direct.saw(text)

    async def flush(self) -> None:
        return None


@contextlib.contextmanager
def _claim(fd: int, diversion: int) -> Any:
    """Serve ``fd``'s file from a private non-blocking duplicate; point ``fd`` at ``diversion``."""
    private = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    flags = fcntl.fcntl(private, fcntl.F_GETFL)
    try:
        os.dup2(diversion, fd)
        fcntl.fcntl(private, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        yield private
    finally:
        # O_NONBLOCK belongs to the shared open file: give the peer its blocking pipe back.
        with contextlib.suppress(OSError):
            fcntl.fcntl(private, fcntl.F_SETFL, flags)
        with contextlib.suppress(OSError):
            os.dup2(private, fd)
        os.close(private)


@asynccontextmanager
async def serve_stdio(server: Any = None) -> AsyncIterator[tuple[Any, Any]]:
    """``(read_stream, write_stream)`` for ``Server.run`` over this process's stdin and stdout.
    With ``server`` (a ``CodeExecServer`` whose settings allow it), plain hosted-tool calls are
    answered past the SDK's pipeline (direct_calls.py)."""
    if os.name != "posix" or not (_is_stream(0) and _is_stream(1)):
        async with stdio_server() as streams:
            yield streams
        return
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _claim(0, null) as stdin_fd, _claim(1, 2) as stdout_fd:
            async with anyio.create_task_group() as tg:
                writer = _FdWriter(stdout_fd)
                direct = DirectCalls(server, writer.write, tg) if server is not None and available(server) else None
                writer.direct = direct
                async with stdio_server(_FdLines(stdin_fd, direct), writer) as streams:  # type: ignore[arg-type]
                    yield streams
    finally:
        os.close(null)
