"""Open MCP sessions per principal, counted at the HTTP edge, so no token holder can take them all.

The SDK caps open handshake-era sessions for the whole server (10,000) and closes one after 30 min
with no request in flight, or on DELETE. This ledger mirrors that from what passes through the
middleware — public protocol facts only: a session opens when a response carries a new
``Mcp-Session-Id``; it is in use while a request of its owner is in flight; it is gone on its
owner's DELETE, on a 404 for its owner, or once idle past the SDK's timeout. A principal at its
cap is refused a new session before the SDK sees the request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mcp.server.streamable_http_manager import DEFAULT_SESSION_IDLE_TIMEOUT


@dataclass
class _Session:
    principal: str
    in_flight: int
    last_seen: float


class SessionLedger:
    def __init__(self, per_principal: int, idle_timeout: float = DEFAULT_SESSION_IDLE_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_principal = per_principal
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        for sid in [sid for sid, s in self._sessions.items() if not s.in_flight and now - s.last_seen > self.idle_timeout]:
            del self._sessions[sid]

    def open_count(self, principal: str) -> int:
        with self._lock:
            self._expire(self._clock())
            return sum(1 for s in self._sessions.values() if s.principal == principal)

    def at_cap(self, principal: str) -> bool:
        return self.open_count(principal) >= self.per_principal

    def opened(self, principal: str, sid: str) -> None:
        with self._lock:
            self._sessions.setdefault(sid, _Session(principal, 0, self._clock()))

    def begin(self, principal: str, sid: str) -> bool:
        """A request of ``principal`` for ``sid`` starts; False if the ledger does not hold it as theirs."""
        with self._lock:
            session = self._sessions.get(sid)
            if session is None or session.principal != principal:
                return False
            session.in_flight += 1
            return True

    def end(self, principal: str, sid: str, *, gone: bool) -> None:
        """That request ended; ``gone``: the answer says the session no longer exists (or was deleted)."""
        with self._lock:
            session = self._sessions.get(sid)
            if session is None or session.principal != principal:
                return
            session.in_flight = max(0, session.in_flight - 1)
            session.last_seen = self._clock()
            if gone:
                del self._sessions[sid]
