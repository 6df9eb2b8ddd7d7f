"""Host side of the agent protocol, over any async byte stream.

One ``AgentConnection`` per container: a reader task demultiplexes the agent's frames to the
request that is waiting for them (by id). Request ids start at a random offset so two servers
attached to one container ignore each other's replies.

A stream that breaks under running requests (an API server restart, a network blip) is opened again
when the engine allows it (``reconnect``): the agent still runs them, keeps every frame of a request
by id, and ``replay`` asks for each one again, so a request is never run twice nor its reply lost
without saying so (docs/DESIGN.md, "Agent protocol v1").
"""

from __future__ import annotations

import collections
import contextlib
import logging
import secrets
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import ByteStream, ObjectSendStream

from .errors import CodeExecError, ContainerExpired, Unavailable
from .protocol import FrameDecoder, ProtocolError, encode_frame

log = logging.getLogger(__name__)

FrameHandler = Callable[[dict[str, Any], bytes], Awaitable[None]]
Reconnect = Callable[[], Awaitable[tuple[ByteStream, bool]]]
_DOCKER_MUX = struct.Struct(">BxxxL")
# Ops that read only: sent again when the agent no longer has their reply.
_IDEMPOTENT = frozenset({"hello", "ping", "view", "get_file"})
NOTE_SECONDS = 10.0


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
    message: dict[str, Any] | None = None
    """The request as sent (None for a chunked upload, which cannot be sent again)."""
    blob: bytes = b""
    discard: bool = False
    """Set while resuming: frames of the broken stream's era are dropped until the replay begins."""
    sent_on: int | None = None
    """The stream generation the request went out on; None: not (yet) sent."""
    send_failed: bool = False
    seen: int = 0
    """Frames (progress aside) handed to the request: a replay writes them again, to be skipped."""
    skip: int = 0


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
    def __init__(self, stream: ByteStream, *, docker_mux: bool, name: str, reconnect: Reconnect | None = None,
                 resume_seconds: float = 0.0) -> None:
        self._stream = stream
        self._docker_mux = docker_mux
        self._demux = DockerDemux() if docker_mux else None
        self._decoder = FrameDecoder()
        self._pending: dict[int, _Pending] = {}
        self._next_id = secrets.randbelow(2**40) * 1024
        self._send_lock = anyio.Lock()
        self.name = name
        self.closed = anyio.Event()
        self._closing = False
        self._stderr_tail = b""
        self._reconnect = reconnect if resume_seconds > 0 else None
        self._resume_seconds = resume_seconds
        self._boot: str | None = None  # the agent's container life, from hello
        self._hello_id: int | None = None  # the resume's hello, in flight
        self._replays: dict[int, int] = {}  # replay request id -> the request it replays
        self._resume_targets: list[int] = []
        self._generation = 0  # +1 per stream opened again
        self._notes: collections.deque[tuple[float, dict[str, Any]]] = collections.deque()
        self.resumes = 0

    async def hello(self, *, timeout: float = 30.0) -> dict[str, Any]:
        """The agent's hello; remembers its container life so a resumed stream can tell a restart."""
        reply = await self.request({"op": "hello"}, timeout=timeout)
        if reply.get("type") == "result":
            self._boot = (reply.get("result") or {}).get("boot")
        return reply

    async def run_reader(self) -> None:
        """Read frames until the stream ends (resuming it while the engine allows); then fail every
        waiting request."""
        try:
            while True:
                await self._read_stream()
                if not await self._resume():
                    break
        finally:
            self.closed.set()
            for pending in self._pending.values():
                pending.send.close()
            self._pending.clear()
            await self.aclose()

    async def _read_stream(self) -> None:
        while True:
            try:
                data = await self._stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return
            if self._demux is not None:
                data, err = self._demux.feed(data)
                if err:
                    self._log_stderr(err)
                if not data:
                    continue
            try:
                frames = self._decoder.feed(data)
            except ProtocolError as exc:
                log.error("sandbox %s: protocol error, dropping the stream: %s", self.name, exc)
                return
            for message, blob in frames:
                await self._route(message, blob)

    async def _route(self, message: dict[str, Any], blob: bytes) -> None:
        rid = message["id"]
        if rid == self._hello_id:
            await self._resumed(message)
            return
        if rid in self._replays:
            await self._replayed(rid, message)
            return
        pending = self._pending.get(rid)
        if pending is None or pending.discard:
            return  # another server's reply, a request we gave up on, or the broken stream's era
        if message.get("type") != "progress":  # progress is never replayed; everything else is, in order
            if pending.skip:
                pending.skip -= 1
                return  # had it before the stream broke
            pending.seen += 1
        try:
            pending.send.send_nowait((message, blob))
        except anyio.WouldBlock:
            await pending.send.send((message, blob))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._pending.pop(rid, None)

    # -- resuming a broken stream ------------------------------------------------------------------

    async def _resume(self) -> bool:
        """Open the stream again (within ``resume_seconds``) if requests are waiting on it; then
        say hello, and replay each waiting request once the agent proves the same container life."""
        if self._closing or self._reconnect is None or not self._pending:
            return False
        deadline = anyio.current_time() + self._resume_seconds
        delay = 0.2
        with contextlib.suppress(OSError, anyio.BrokenResourceError):
            await self._stream.aclose()
        while True:
            try:
                stream, docker_mux = await self._reconnect()
                break
            except ContainerExpired as exc:
                log.warning("sandbox %s: stream broke and the sandbox is gone: %s", self.name, exc.message)
                return False
            except Unavailable as exc:
                if self._closing or anyio.current_time() + delay > deadline:
                    log.warning("sandbox %s: stream broke and could not be opened again: %s", self.name, exc.message)
                    return False
                log.info("sandbox %s: stream broke; opening it again (%s)", self.name, exc.message)
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except CodeExecError as exc:  # e.g. throttled: not worth holding the requests for
                log.warning("sandbox %s: stream broke and could not be opened again: %s", self.name, exc.message)
                return False
        if self._closing:
            await stream.aclose()
            return False
        async with self._send_lock:  # no request is half-way out while the stream changes
            self._stream = stream
            self._generation += 1
            self._demux = DockerDemux() if docker_mux else None
            self._decoder = FrameDecoder()
            self.resumes += 1
            # What went out (or failed to) on an earlier stream is replayed; a request not sent yet
            # simply goes out on this one.
            self._resume_targets = [rid for rid, p in self._pending.items() if p.sent_on is not None or p.send_failed]
            for rid in self._resume_targets:
                self._pending[rid].discard = True
            self._replays.clear()
            self._hello_id = self._take_id()
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await stream.send(encode_frame({"op": "hello", "id": self._hello_id}))  # else: broke again, resumed again
        log.warning("sandbox %s: stream opened again under %d running request(s)", self.name, len(self._resume_targets))
        return True

    async def _resumed(self, message: dict[str, Any]) -> None:
        self._hello_id = None
        boot = (message.get("result") or {}).get("boot") if message.get("type") == "result" else None
        targets, self._resume_targets = self._resume_targets, []
        if boot is None or boot != self._boot:
            for target in targets:
                await self._fail(target, "the sandbox restarted while the request ran (its stream broke and "
                                         "came back to a new container life); it may have run in part")
            return
        # Notifications of the last seconds may have died with the stream: a tool_result (the code
        # would wait for it) or a cancel. Both are idempotent in the agent; send them again.
        for _, note in list(self._notes):
            if note.get("target") in self._pending:
                with contextlib.suppress(AgentGone):
                    await self._send_frame(note)
        for target in targets:
            if target not in self._pending:
                continue
            replay_id = self._take_id()
            self._replays[replay_id] = target
            try:
                await self._send_frame({"op": "replay", "target": target, "id": replay_id})
            except AgentGone:
                return  # broke again: the next resume replays what is still waiting

    async def _replayed(self, rid: int, message: dict[str, Any]) -> None:
        target = self._replays[rid]
        pending = self._pending.get(target)
        if message.get("type") == "replay_begin":
            if pending is not None:
                pending.discard = False  # the frames that follow are the request's, in order...
                pending.skip = pending.seen  # ...from its first: those it had already are dropped
            return
        del self._replays[rid]
        if pending is None:
            return
        state = (message.get("result") or {}).get("state") if message.get("type") == "result" else None
        if state in ("done", "running"):
            return  # its frames came (or keep coming) with the replay
        op = (pending.message or {}).get("op")
        if pending.message is not None and (state == "unknown" or (state == "lost" and op in _IDEMPOTENT)):
            # The agent never received it (or it only read): sending it again runs it once.
            await self._send_pending(target, pending)
            return
        if state == "lost":
            await self._fail(target, "the request ran, but its reply was too large for the agent to keep after "
                                     "the stream broke, and it is not safe to run again")
        else:
            await self._fail(target, "the stream broke during the request and it could not be resumed"
                                     + ("" if pending.message is not None else " (an upload must be sent again)"))

    async def _fail(self, target: int, why: str) -> None:
        pending = self._pending.get(target)
        if pending is None:
            return
        pending.discard = False
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await pending.send.send(({"id": target, "type": "error", "code": "unavailable",
                                      "message": f"sandbox {self.name}: {why}"}, b""))

    def _log_stderr(self, err: bytes) -> None:
        text = (self._stderr_tail + err).decode("utf-8", "replace")
        *lines, rest = text.split("\n")
        self._stderr_tail = rest.encode()[-4096:]
        for line in lines:
            log.debug("agent[%s]: %s", self.name, line)

    async def aclose(self) -> None:
        self._closing = True
        with anyio.CancelScope(shield=True):
            try:
                await self._stream.aclose()
            except (OSError, anyio.BrokenResourceError):
                pass

    def _take_id(self) -> int:
        request_id = self._next_id
        self._next_id += 1
        return request_id

    async def send(self, message: dict[str, Any], blob: bytes = b"") -> int:
        """Write one frame; returns the stream generation it went out on."""
        if self.closed.is_set():
            raise AgentGone(f"the sandbox {self.name} is not connected")
        return await self._send_frame(message, blob)

    async def _send_frame(self, message: dict[str, Any], blob: bytes = b"") -> int:
        data = encode_frame(message, blob)
        async with self._send_lock:
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise AgentGone(f"lost the connection to sandbox {self.name}: {_reason(exc)}") from exc
            return self._generation

    async def _send_pending(self, request_id: int, pending: _Pending) -> None:
        """Send a one-frame request; a broken stream that will be resumed is not a failure: the
        replay finds out whether the agent got it (and it is sent again if not)."""
        assert pending.message is not None
        try:
            pending.sent_on = await self.send({**pending.message, "id": request_id}, pending.blob)
            pending.send_failed = False
        except AgentGone:
            if self._reconnect is None or self._closing or self.closed.is_set():
                raise
            pending.send_failed = True

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
        request_id = self._take_id()
        send, receive = anyio.create_memory_object_stream[tuple[dict[str, Any], bytes]](64)
        pending = self._pending[request_id] = _Pending(send, message if frames is None else None, blob)
        try:
            if frames is None:
                await self._send_pending(request_id, pending)
            else:
                async for part, part_blob in frames:
                    pending.sent_on = await self.send({**part, "id": request_id}, part_blob)
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
        """Send a request that has no reply (``cancel``, ``tool_result``). On a resumable stream
        the last few seconds of them are kept, and sent again after a resume."""
        note = {**message, "id": self._take_id()}
        if self._reconnect is not None:
            now = anyio.current_time()
            while self._notes and self._notes[0][0] < now - NOTE_SECONDS:
                self._notes.popleft()
            self._notes.append((now, note))
        try:
            await self.send(note)
        except AgentGone:
            if self._reconnect is None or self._closing or self.closed.is_set():
                raise
