"""A stdio client transport for upstream MCP servers that bounds what the upstream can do to us.

The SDK's ``stdio_client`` buffers a stdout line without limit and hands the upstream our stderr.
This one (same wire format: one JSON-RPC message per line) instead:

* stops the upstream when one line exceeds ``max_line_bytes`` (a flood cannot exhaust memory);
* stops it at its first line that is not JSON-RPC (a confused peer is restarted, not trusted);
* keeps only the last ``STDERR_TAIL`` bytes of its stderr, for error messages;
* runs it in its own process group and kills the whole group when the session ends;
* reports why the stream ended (``StdioFailure.reason``), so callers can say it in the error.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import anyio
import mcp_types as types
from anyio.abc import Process
from mcp.client._transport import TransportStreams
from mcp.client.stdio import get_default_environment
from mcp.shared.message import SessionMessage

STDERR_TAIL = 4096
_STOP_GRACE = 2.0


@dataclass
class StdioFailure:
    """Why the upstream's stream ended (empty while it runs)."""

    reason: str = ""
    stderr: bytearray = field(default_factory=bytearray)
    returncode: int | None = None
    on_end: Callable[[], None] | None = None
    """Called once, as soon as the stream ends (the session is unusable from then on)."""

    def end(self, reason: str) -> None:
        if self.reason:
            return
        self.reason = reason
        if self.on_end is not None:
            self.on_end()

    def stderr_tail(self, lines: int = 3, limit: int = 400) -> str:
        """The last few non-blank lines the upstream wrote to stderr."""
        kept = [ln.strip() for ln in self.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        return " | ".join(kept[-lines:])[-limit:]


@asynccontextmanager
async def bounded_stdio(
    command: str,
    args: list[str],
    env: dict[str, str],
    cwd: str | None,
    *,
    max_line_bytes: int,
    status: StdioFailure,
) -> AsyncIterator[TransportStreams]:
    process = await anyio.open_process(
        [command, *args],
        env=get_default_environment() | env,
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)

    async def stdout_reader() -> None:
        assert process.stdout is not None
        buffer = b""
        async with read_writer:
            try:
                async for chunk in process.stdout:
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if not line.strip():
                            continue
                        if len(line) > max_line_bytes:
                            status.end(f"it sent a message of {len(line)} bytes, above the {max_line_bytes}-byte limit")
                            return
                        try:
                            message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                        except ValueError:
                            status.end(f"it wrote a line that is not JSON-RPC: {line[:120].decode('utf-8', 'replace')!r}")
                            return
                        await read_writer.send(SessionMessage(message))
                    if len(buffer) > max_line_bytes:
                        status.end(f"it sent more than {max_line_bytes} bytes without a line break")
                        return
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
                pass
            status.end("its process exited")

    stderr_done = anyio.Event()

    async def stderr_reader() -> None:
        assert process.stderr is not None
        try:
            with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
                async for chunk in process.stderr:
                    status.stderr += chunk
                    del status.stderr[:-STDERR_TAIL]
        finally:
            stderr_done.set()

    async def stdin_writer() -> None:
        assert process.stdin is not None
        try:
            async with write_reader:
                async for session_message in write_reader:
                    data = session_message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await process.stdin.send((data + "\n").encode())
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            status.end("it stopped reading its input")
            await read_writer.aclose()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stdout_reader)
        tg.start_soon(stderr_reader)
        tg.start_soon(stdin_writer)
        try:
            yield read_stream, write_stream
        finally:
            with anyio.CancelScope(shield=True):
                # An upstream that broke the protocol gets no grace period.
                await _stop(process, grace=0.0 if status.reason and process.returncode is None else _STOP_GRACE)
                status.returncode = process.returncode
                with anyio.move_on_after(1):  # its last words, for the error message
                    await stderr_done.wait()
                tg.cancel_scope.cancel()
                for stream in (read_stream, write_stream, read_writer, write_reader):
                    await stream.aclose()
                with anyio.move_on_after(_STOP_GRACE):
                    await process.aclose()  # its pipes and transport, before the event loop goes


async def _stop(process: Process, grace: float) -> None:
    """Close stdin, give the upstream ``grace`` seconds to exit, then kill its whole process group."""
    if process.stdin is not None:
        with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await process.stdin.aclose()
    with anyio.move_on_after(grace):
        await process.wait()
    if process.returncode is not None:  # the leader is gone: take any children it left with it
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        return
    for sig in (signal.SIGTERM, signal.SIGKILL) if grace else (signal.SIGKILL,):
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        with anyio.move_on_after(_STOP_GRACE):
            await process.wait()
            return
