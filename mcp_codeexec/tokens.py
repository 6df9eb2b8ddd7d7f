"""HTTP bearer tokens kept in the store, beside those in the configuration.

``auth_tokens`` in the configuration stay as they were (fixed at start). Tokens made with
``mcp-codeexec tokens add PRINCIPAL`` live in the metadata store instead — ``tokens.db`` under the
data directory for one server, the shared PostgreSQL database for replicas — so an operator adds
or revokes a principal's access on every replica at once, without a restart. Only a SHA-256
digest of each token is stored; the token itself is printed once, when it is made.

A replica looks a presented token up by its digest and remembers the answer for ``CACHE_SECONDS``
(a revocation reaches every replica within that); unknown tokens are remembered too, in a bounded
map, so a flood of wrong tokens costs at most one lookup each per interval.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

CACHE_SECONDS = 5.0
CACHE_ENTRIES = 4096
TOKEN_BYTES = 32
RESERVED_PRINCIPALS = ("local",)
PRINCIPAL_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-@")


class TokenError(ValueError):
    """A refused add or revoke; ``str()`` says why."""


@dataclass(frozen=True)
class TokenRecord:
    id: str
    """Public handle (``tok_`` + 12 hex of the digest): what ``ls`` shows and ``rm`` takes."""
    principal: str
    label: str
    created: float


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_principal(principal: str) -> str:
    principal = principal.strip()
    if not principal or len(principal) > 128 or not set(principal) <= PRINCIPAL_CHARS:
        raise TokenError(f"principal {principal!r}: 1-128 letters, digits, '_', '.', '-', '@'")
    if principal in RESERVED_PRINCIPALS:
        raise TokenError(f"principal {principal!r} is reserved (the stdio user, who sees everything)")
    return principal


class TokenTable(Protocol):
    """Rows of (id, digest, principal, label, created): SQLite or PostgreSQL."""

    def insert(self, record: TokenRecord, token_digest: str) -> None: ...
    def principal_for(self, token_digest: str) -> str | None: ...
    def rows(self) -> list[TokenRecord]: ...
    def delete(self, id_or_principal: str) -> int: ...


class TokenStore:
    def __init__(self, table: TokenTable) -> None:
        self.table = table
        self._cache: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, principal: str, label: str = "") -> tuple[str, TokenRecord]:
        """A new token for ``principal``: returned once, stored as its digest."""
        principal = check_principal(principal)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        d = digest(token)
        record = TokenRecord(id="tok_" + d[:12], principal=principal, label=label.strip()[:200], created=time.time())
        self.table.insert(record, d)
        return token, record

    def list(self) -> list[TokenRecord]:
        return self.table.rows()

    def revoke(self, id_or_principal: str) -> int:
        """Remove the token with that id, or every token of that principal. Returns how many."""
        removed = self.table.delete(id_or_principal.strip())
        with self._lock:
            self._cache.clear()
        return removed

    def principal_for(self, token: str) -> str | None:
        """The principal ``token`` stands for, or None (blocking: a database lookup at most every
        CACHE_SECONDS per token)."""
        d = digest(token)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(d)
            if hit is not None and now - hit[0] < CACHE_SECONDS:
                return hit[1]
        principal = self.table.principal_for(d)
        with self._lock:
            self._cache[d] = (now, principal)
            self._cache.move_to_end(d)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return principal

    def any(self) -> bool:
        return bool(self.table.rows())


class SqlTokens:
    """The ``http_tokens`` table over a connection with SQLite-style ``execute(sql, args)``: an
    ``sqlite3`` one, or PostgreSQL through ``pg_store._Adapter`` (which maps the placeholders)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def insert(self, record: TokenRecord, token_digest: str) -> None:
        with self._lock:
            self._conn.execute("INSERT INTO http_tokens (id, digest, principal, label, created) VALUES (?, ?, ?, ?, ?)",
                               (record.id, token_digest, record.principal, record.label, record.created))

    def principal_for(self, token_digest: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT principal FROM http_tokens WHERE digest = ?", (token_digest,)).fetchone()
        return row[0] if row else None

    def rows(self) -> list[TokenRecord]:
        with self._lock:
            rows = self._conn.execute("SELECT id, principal, label, created FROM http_tokens ORDER BY created, id").fetchall()
        return [TokenRecord(row[0], row[1], row[2], float(row[3])) for row in rows]

    def delete(self, id_or_principal: str) -> int:
        with self._lock:
            return int(self._conn.execute("DELETE FROM http_tokens WHERE id = ? OR principal = ?",
                                          (id_or_principal, id_or_principal)).rowcount)


SQLITE_SCHEMA = ("CREATE TABLE IF NOT EXISTS http_tokens (id TEXT PRIMARY KEY, digest TEXT NOT NULL UNIQUE, "
                 "principal TEXT NOT NULL, label TEXT NOT NULL, created REAL NOT NULL)")


def sqlite_tokens(path: Path) -> SqlTokens:
    """``tokens.db`` in the data directory (0600), in WAL mode so several servers share it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    from .files import _BUSY_TIMEOUT_S, _enable_wal

    conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
    _enable_wal(conn, path)  # several servers opening one fresh data dir at once (see files._open_db)
    conn.execute(SQLITE_SCHEMA)
    return SqlTokens(conn)


def pg_tokens(url: str) -> SqlTokens:
    """The shared database's ``http_tokens`` (migration 5)."""
    from .pg_store import _Adapter, open_database

    return SqlTokens(_Adapter(open_database(url)))
