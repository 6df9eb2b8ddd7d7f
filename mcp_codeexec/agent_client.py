"""Host side of the agent protocol, over any async byte stream.

One ``AgentConnection`` per container: a reader task demultiplexes the agent's frames to the
request that is waiting for them (by id). Request ids start at a random offset so two servers
attached to one container ignore each other's replies.
"""

from __future__ import annotations

import logging
import secrets
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import ByteStream, ObjectSendStream

from .errors import Unavailable
from .protocol import FrameDecoder, ProtocolError, encode_frame

log = logging.getLogger(__name__)

FrameHandler = Callable[[dict[str, Any], bytes], Awaitable[None]]
_DOCKER_MUX = struct.Struct(">BxxxL")


def _reason(exc: BaseException) -> str:
    """What broke, also for the stream errors whose text is empty."""
    if isinstance(exc, anyio.ClosedResourceError):
        return "this server already closed the stream"
    if isinstance(exc, anyio.BrokenResourceError):
        return str(exc) or "the stream broke (the container stopped or the engine went away)"
    return str(exc) or type(exc).__name__


class AgentGone(Unavailable):
    """The stream to the agent closed or broke (container stopped, engine restarted, ...)."""


@dataclass
class _Pending:
    send: ObjectSendStream[tuple[dict[str, Any], bytes]]
    frames: list[tuple[dict[str, Any], bytes]] = field(default_factory=list)


class DockerDemux:
    """Splits Docker's multiplexed attach stream (8-byte headers) into stdout and stderr bytes."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        self._buf += data
        out, err = bytearray(), bytearray()
        while len(self._buf) >= 8:
            kind, size = _DOCKER_MUX.unpack_from(self._buf)
            if len(self._buf) < 8 + size:
                break
            chunk = self._buf[8 : 8 + size]
            (err if kind == 2 else out).extend(chunk)
            del self._buf[: 8 + size]
        return bytes(out), bytes(err)


class AgentConnection:
    def __init__(self, stream: ByteStream, *, docker_mux: bool, name: str) -> None:
        self._stream = stream
        self._demux = DockerDemux() if docker_mux else None
        self._decoder = FrameDecoder()
        self._pending: dict[int, _Pending] = {}
        self._next_id = secrets.randbelow(2**40) * 1024
        self._send_lock = anyio.Lock()
        self.name = name
        self.closed = anyio.Event()
        self._stderr_tail = b""

    async def run_reader(self) -> None:
        """Read frames until the stream ends; then fail every waiting request."""
        try:
            while True:
                try:
                    data = await self._stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    break
                if self._demux is not None:
                    data, err = self._demux.feed(data)
                    if err:
                        self._log_stderr(err)
                    if not data:
                        continue
                try:
                    frames = self._decoder.feed(data)
                except ProtocolError as exc:
                    log.error("sandbox %s: protocol error, dropping connection: %s", self.name, exc)
                    break
                for message, blob in frames:
                    pending = self._pending.get(message["id"])
                    if pending is None:
                        continue  # another server's reply, or a request we gave up on
                    try:
                        pending.send.send_nowait((message, blob))
                    except anyio.WouldBlock:
                        await pending.send.send((message, blob))
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        self._pending.pop(message["id"], None)
        finally:
            self.closed.set()
            for pending in self._pending.values():
                pending.send.close()
            self._pending.clear()
            await self.aclose()

    def _log_stderr(self, err: bytes) -> None:
        text = (self._stderr_tail + err).decode("utf-8", "replace")
        *lines, rest = text.split("\n")
        self._stderr_tail = rest.encode()[-4096:]
        for line in lines:
            log.debug("agent[%s]: %s", self.name, line)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self._stream.aclose()
            except (OSError, anyio.BrokenResourceError):
                pass

    async def send(self, message: dict[str, Any], blob: bytes = b"") -> None:
        if self.closed.is_set():
            raise AgentGone(f"the sandbox {self.name} is not connected")
        data = encode_frame(message, blob)
        async with self._send_lock:
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise AgentGone(f"lost the connection to sandbox {self.name}: {_reason(exc)}") from exc

    async def put_file(self, path: str, chunks: AsyncIterator[bytes], *, timeout: float = 300.0) -> dict[str, Any]:
        """Upload a file in chunks that share one request id; the agent answers the ``eof`` chunk."""
        offset = 0

        async def frames() -> AsyncIterator[tuple[dict[str, Any], bytes]]:
            nonlocal offset
            async for chunk in chunks:
                yield {"op": "put_file", "path": path, "offset": offset, "eof": False}, chunk
                offset += len(chunk)
            yield {"op": "put_file", "path": path, "offset": offset, "eof": True}, b""

        return await self.request({}, frames=frames(), timeout=timeout)

    async def request(
        self,
        message: dict[str, Any],
        *,
        blob: bytes = b"",
        on_frame: FrameHandler | None = None,
        timeout: float = 60.0,
        frames: AsyncIterator[tuple[dict[str, Any], bytes]] | None = None,
    ) -> dict[str, Any]:
        """Send one request; feed non-final frames to ``on_frame``; return the final frame.

        ``timeout`` is the host-side backstop (the agent enforces the real limit itself).
        """
        request_id = self._next_id
        self._next_id += 1
        send, receive = anyio.create_memory_object_stream[tuple[dict[str, Any], bytes]](64)
        self._pending[request_id] = _Pending(send)
        try:
            if frames is None:
                await self.send({**message, "id": request_id}, blob)
            else:
                async for part, part_blob in frames:
                    await self.send({**part, "id": request_id}, part_blob)
            with anyio.fail_after(timeout):
                async with receive:
                    async for frame, frame_blob in receive:
                        if frame.get("type") in ("result", "error"):
                            return frame
                        if on_frame is not None:
                            await on_frame(frame, frame_blob)
            raise AgentGone(f"the sandbox {self.name} went away during the call")
        except TimeoutError:
            raise AgentGone(f"the sandbox {self.name} did not answer within {timeout:.0f} s") from None
        except anyio.get_cancelled_exc_class():
            # The MCP request was cancelled: stop the command in the sandbox too.
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                if not self.closed.is_set():
                    await self.notify({"op": "cancel", "target": request_id})
            raise
        finally:
            self._pending.pop(request_id, None)
            send.close()

    async def notify(self, message: dict[str, Any]) -> None:
        """Send a request that has no reply (e.g. ``cancel``)."""
        request_id = self._next_id
        self._next_id += 1
        await self.send({**message, "id": request_id})
