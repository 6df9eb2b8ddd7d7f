"""Graceful shutdown on SIGTERM, SIGINT and SIGHUP, for the stdio and HTTP servers.

On a signal the server stops taking calls (a new one is answered ``unavailable``, naming the
shutdown), gives the calls in flight a short grace to finish, then cancels them: a cancelled call
kills its command in the sandbox and is answered ``unavailable`` too. Only then does the transport
stop, so the lifespan's exit saves the shell states and removes this server's pool containers; the
process exits 0, without a traceback. Later signals during the shutdown are ignored.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import anyio
import anyio.abc

log = logging.getLogger(__name__)

SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None)
GRACE_SECONDS = 5.0
"""How long calls in flight may run on after a signal before they are cancelled."""
FLUSH_SECONDS = 0.3
"""After the last call answered: time for its reply to be written before the transport stops."""


class Shutdown:
    """Tracks the tool calls in flight so that a shutdown can answer every one of them."""

    def __init__(self, grace: float = GRACE_SECONDS) -> None:
        self.grace = grace
        self.reason: str | None = None
        self._calls: set[anyio.CancelScope] = set()

    @property
    def closing(self) -> bool:
        return self.reason is not None

    @contextmanager
    def call(self) -> Iterator[anyio.CancelScope]:
        """Scope of one tool call; ``cancelled_caught`` afterwards means the shutdown ended it."""
        scope = anyio.CancelScope()
        self._calls.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._calls.discard(scope)

    async def drain(self, reason: str) -> None:
        """Refuse new calls; let those in flight finish within the grace, then cancel them."""
        self.reason = reason
        with anyio.move_on_after(self.grace):
            while self._calls:
                await anyio.sleep(0.05)
        if self._calls:
            log.warning("%s: cancelling %d call(s) still running", reason, len(self._calls))
            for scope in list(self._calls):
                scope.cancel()
            with anyio.move_on_after(10):
                while self._calls:
                    await anyio.sleep(0.02)
        await anyio.sleep(FLUSH_SECONDS)


_early: list[int] = []


def hold_signals() -> None:
    """Until the event loop takes them over (``stop_on_signals``), termination signals are only
    noted: raising in the middle of start-up (inside the loop's machinery) would end in a traceback."""
    for signum in SIGNALS:
        signal.signal(signum, lambda signum, frame: _early.append(signum))


async def stop_on_signals(shutdown: Shutdown, stop: Callable[[], None], *,
                          task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Wait for a termination signal, drain, then ``stop()`` the transport. Keeps the handlers
    installed until cancelled, so a second Ctrl-C during the shutdown does not interrupt it.
    Start it with ``TaskGroup.start``: it returns once the handlers are installed."""
    with anyio.open_signal_receiver(*SIGNALS) as signals:
        task_status.started()

        async def received() -> AsyncIterator[int]:
            while _early:
                yield _early.pop(0)  # arrived before the loop was listening
            async for signum in signals:
                yield signum

        async for signum in received():
            name = signal.Signals(signum).name
            if shutdown.closing:
                log.info("%s received: already shutting down", name)
                continue
            log.info("%s received: shutting down", name)
            await shutdown.drain(f"the server is shutting down ({name})")
            stop()
