"""One leader among replicas for the background work (warm pool, reaper, file pruning).

A PostgreSQL session-level advisory lock, held on a connection of its own: the database drops it
the moment that connection ends, however the leader ends (kill -9 closes its socket; a vanished
host is noticed by TCP keepalives within ~11 s). Followers try to take it every ``interval``
seconds, so a dead leader is replaced within about a second. A leader that cannot confirm its
connection stops calling itself leader before anyone else can take over.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from .database import LEADER_LOCK, connect

log = logging.getLogger(__name__)


class LeaderElection:
    def __init__(self, url: str, *, key: int = LEADER_LOCK, interval: float = 1.0,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.url = url
        self.key = key
        self.interval = interval
        self.on_change = on_change
        self._leader = False
        self._conn: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def is_leader(self) -> bool:
        return self._leader

    def start(self) -> LeaderElection:
        self.step()  # the first replica up leads at once
        self._thread = threading.Thread(target=self._run, name="mcp-codeexec-leader", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._set(False)
        self._close()

    def _set(self, leader: bool) -> None:
        if leader != self._leader:
            self._leader = leader
            log.info("leader election: this replica is %s", "the leader" if leader else "a follower")
            if self.on_change is not None:
                self.on_change(leader)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def step(self) -> bool:
        """One round: (re)connect, confirm or try the lock. Returns whether this replica leads."""
        import psycopg

        try:
            if self._conn is None or self._conn.closed:
                self._set(False)
                self._conn = connect(self.url)
            if self._leader:
                self._conn.execute("SELECT 1")  # the lock lives as long as this connection
            else:
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
                self._set(bool(row and row[0]))
        except psycopg.Error as exc:
            log.warning("leader election: %s", exc)
            self._set(False)
            self._close()
        return self._leader

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.interval)


__all__ = ["LeaderElection"]
