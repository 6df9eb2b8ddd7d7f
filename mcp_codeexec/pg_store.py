"""PostgreSQL twins of the embedded stores, for N replicas sharing one database (see database.py).

Each class keeps the interface of the one it replaces, so callers do not know which they hold:

* ``PgFileStore`` — ``FileStore`` with its rows in ``files`` and its bytes in ``file_chunks``;
  the local directory is only a cache of immutable blobs (a file's bytes never change), refilled
  from the database by whichever replica is asked for a file it has not seen;
* ``PgOwnerRegistry`` — ``OwnerRegistry``: who owns each handed-out sandbox, and its lifetime;
* ``PgCallRateLimiter`` — ``CallRateLimiter``: one token bucket per principal for all replicas,
  taken and refilled in one atomic statement on the database's clock;
* ``PgSessionLedger`` — ``SessionLedger``: open MCP sessions per principal across replicas.

Each opens its own autocommit connection and serialises its use with a lock (calls arrive on
worker threads): a handful of connections per replica.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .database import CHUNK_BYTES, QUOTA_LOCK, connect, migrate
from .errors import Unavailable
from .files import _COLUMNS, FileRecord, FileStore, StoredFileNotFound, _to_us, is_file_id
from .engines.docker import OwnerRegistry
from .skills_store import SkillStore


class _Adapter:
    """SQLite-style ``execute(sql, args)`` with ``?`` placeholders over a psycopg connection, so
    ``FileStore``'s portable queries run unchanged."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, args: Any = ()) -> Any:
        return self.conn.execute(sql.replace("?", "%s"), tuple(args))

    def close(self) -> None:
        self.conn.close()


class _Link:
    """A connection that comes back: after the database restarted or a network blip, the next
    statement reconnects (the statement that met the failure raised; nothing is retried, so nothing
    is applied twice)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn = connect(url)
        migrate(self._conn)

    def _live(self) -> Any:
        if self._conn.closed or self._conn.broken:
            self._conn = connect(self.url)
        return self._conn

    def execute(self, *args: Any, **kw: Any) -> Any:
        import psycopg

        try:
            return self._live().execute(*args, **kw)
        except psycopg.OperationalError as exc:  # the database is gone: the hosted tools' `unavailable`
            raise Unavailable(f"the shared database is unreachable: {str(exc).strip()[:300]}") from exc

    def __getattr__(self, name: str) -> Any:  # transaction(), cursor(), info, ...
        return getattr(self._live(), name)

    def close(self) -> None:
        self._conn.close()


def open_database(url: str) -> Any:
    return _Link(url)


class PgFileStore(FileStore):
    """Files whose metadata and bytes every replica reaches; ``root`` holds uploads in progress
    (``tmp/``) and a cache of blobs this replica has read or written (``blobs/``)."""

    def __init__(self, url: str, root: Path | str, retention_days: float | None = None) -> None:
        self.url = url
        self.root = Path(root)
        self.retention_days = retention_days
        self.blobs_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        for d in (self.root, self.blobs_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._db = _Adapter(open_database(url))  # type: ignore[assignment]
        self._closed = False

    def __repr__(self) -> str:
        return f"PgFileStore(root={str(self.root)!r}, retention_days={self.retention_days!r})"

    def _exists(self, file_id: str) -> bool:
        with self._lock:
            self._check_open()
            return self._db.execute("SELECT 1 FROM files WHERE id = ?", (file_id,)).fetchone() is not None

    def _publish(self, tmp: Path, record: FileRecord) -> None:
        """The row and every chunk in one transaction: a reader sees the whole file or none of it."""
        import psycopg

        self._check_open()
        try:
            # A connection of its own: a large upload's transaction does not hold up the replica's
            # other file requests on the shared one.
            with connect(self.url) as conn, conn.transaction(), builtins.open(tmp, "rb") as src:
                conn.execute(
                    f"INSERT INTO files ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        record.id, record.filename, record.size, record.mime_type, _to_us(record.created_at),
                        record.container_id, record.origin, record.principal, record.sha256,
                        int(record.downloadable), _to_us(record.expires_at) if record.expires_at else None,
                    ),
                )
                n = 0
                with conn.cursor() as cur:
                    while data := src.read(CHUNK_BYTES):
                        cur.execute("INSERT INTO file_chunks (file_id, n, data) VALUES (%s, %s, %s)", (record.id, n, data))
                        n += 1
        except psycopg.errors.UniqueViolation:
            tmp.unlink(missing_ok=True)
            raise FileExistsError(f"file id already in use: {record.id}") from None
        try:  # keep the bytes as this replica's cache
            os.replace(tmp, self.blobs_dir / record.id)
        except OSError:
            tmp.unlink(missing_ok=True)

    def blob_path(self, file_id: str) -> Path:
        """A local path holding the bytes: the cache, filled from the database when missing. A
        file deleted (by any replica) has no path that exists."""
        path = super().blob_path(file_id)
        if not self._exists(file_id):
            path.unlink(missing_ok=True)
            return path
        if not path.exists():
            self._materialise(file_id, path)
        return path

    def _materialise(self, file_id: str, path: Path) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix=file_id + ".", suffix=".cache")
        self._check_open()
        try:
            with os.fdopen(fd, "wb") as out, connect(self.url) as conn, conn.cursor() as cur:
                cur.execute("SELECT data FROM file_chunks WHERE file_id = %s ORDER BY n", (file_id,))
                for (data,) in cur:
                    out.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def prune(self, now: Any = None) -> int:
        removed = super().prune(now)
        # Cached blobs of files another replica deleted.
        for entry in builtins.list(os.scandir(self.blobs_dir)):
            if is_file_id(entry.name) and not self._exists(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        return removed


_SKILL_COLS = "id, principal, display_name, name, created_at, updated_at, latest_version_id"
_VERSION_COLS = "id, skill_id, epoch, name, description, digest, created_at"


class _SkillAdapter(_Adapter):
    """``SkillStore``'s SQLite dialect on PostgreSQL: explicit transactions, insertion order
    (``rowid``) as the ``seq`` column, ``SELECT *`` as the columns its rows unpack."""

    def execute(self, sql: str, args: Any = ()) -> Any:
        sql = (sql.replace("BEGIN IMMEDIATE", "BEGIN").replace("rowid", "seq")
               .replace("SELECT * FROM skills", f"SELECT {_SKILL_COLS} FROM skills")
               .replace("SELECT * FROM versions", f"SELECT {_VERSION_COLS} FROM versions"))
        return super().execute(sql, args)

    @property
    def in_transaction(self) -> bool:
        import psycopg.pq

        return bool(self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)


class PgSkillStore(SkillStore):
    """Uploaded skills in the shared database: rows in ``skills``/``versions``, each version's zip
    in ``skill_blobs`` (inserted in the transaction that adds the version); ``root/blobs`` caches them."""

    def __init__(self, url: str, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        self._conn = open_database(url)
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def _db(self) -> Iterator[Any]:
        with self._lock:
            db = _SkillAdapter(self._conn)
            try:
                yield db
            finally:
                if db.in_transaction:  # an exception between BEGIN and COMMIT
                    self._conn.execute("ROLLBACK")

    def _insert_version(self, db: Any, v: Any) -> None:  # type: ignore[override]
        super()._insert_version(db, v)
        db.execute("INSERT INTO skill_blobs (version_id, data) VALUES (?, ?)", (v.id, super().blob_path(v.id).read_bytes()))

    def blob_path(self, version_id: str) -> Path:
        path = super().blob_path(version_id)
        if not path.exists():
            with self._lock:
                row = self._conn.execute("SELECT data FROM skill_blobs WHERE version_id = %s", (version_id,)).fetchone()
            if row is not None:
                tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
                tmp.write_bytes(row[0])
                os.replace(tmp, path)
        return path


class PgOwnerRegistry(OwnerRegistry):
    """Sandbox owner records in ``sandbox_owners`` (the JSON the file registry writes, as JSONB)."""

    def __init__(self, url: str, root: Path) -> None:
        super().__init__(root)  # kept: older records on disk are still read by the file-based scans
        self._conn = open_database(url)
        self._lock = threading.Lock()

    def record(self, cid: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute("SELECT record FROM sandbox_owners WHERE cid = %s", (cid,)).fetchone()
        data = row[0] if row else None
        return data if isinstance(data, dict) and isinstance(data.get("owner"), str) else None

    def set(self, cid: str, owner: str, *, created: float, expires: float, quota: str, extra: dict[str, Any] | None = None,
            mounts: str = "") -> None:
        data = {"owner": owner, "assigned": time.time(), "created": created, "expires": expires, "quota": quota, **(extra or {})}
        if mounts:
            data["mounts"] = mounts
        with self._lock:
            self._conn.execute(
                "INSERT INTO sandbox_owners (cid, record) VALUES (%s, %s::jsonb) "
                "ON CONFLICT (cid) DO UPDATE SET record = EXCLUDED.record, updated = now()",
                (cid, json.dumps(data)),
            )

    def forget(self, cid: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM sandbox_owners WHERE cid = %s", (cid,))

    def ids(self) -> builtins.list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT cid FROM sandbox_owners ORDER BY cid").fetchall()]

    def age(self, cid: str) -> float | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT extract(epoch FROM now() - updated)::double precision FROM sandbox_owners WHERE cid = %s", (cid,)
            ).fetchone()
        return float(row[0]) if row else None


class PgCallRateLimiter:
    """``CallRateLimiter`` with the buckets in the database: N replicas admit ``per_minute`` calls a
    minute per principal in all, not N times that. ``clock`` None → the database's clock (replicas'
    own clocks need not agree)."""

    blocking = True  # does I/O: callers on the event loop run it in a thread

    def __init__(self, url: str, per_minute: float, burst: int, clock: Callable[[], float] | None = None) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive (disable the limiter instead)")
        self.rate = per_minute / 60.0
        self.burst = max(1, burst)
        self._clock = clock
        self._conn = open_database(url)
        self._lock = threading.Lock()

    def admit(self, principal: str) -> float:
        now = self._clock() if self._clock is not None else None
        with self._lock:
            row = self._conn.execute(
                """
                WITH t AS (SELECT COALESCE(%(now)s::double precision, extract(epoch FROM clock_timestamp())::double precision) AS now)
                INSERT INTO pacing_buckets AS b (principal, tokens, updated, admitted)
                SELECT %(p)s, %(burst)s - 1, t.now, true FROM t
                ON CONFLICT (principal) DO UPDATE SET
                    admitted = LEAST(%(burst)s, b.tokens + GREATEST(0, EXCLUDED.updated - b.updated) * %(rate)s) >= 1,
                    tokens = LEAST(%(burst)s, b.tokens + GREATEST(0, EXCLUDED.updated - b.updated) * %(rate)s)
                             - CASE WHEN LEAST(%(burst)s, b.tokens + GREATEST(0, EXCLUDED.updated - b.updated) * %(rate)s) >= 1
                                    THEN 1 ELSE 0 END,
                    updated = GREATEST(b.updated, EXCLUDED.updated)
                RETURNING admitted, tokens
                """,
                {"now": now, "p": principal, "burst": float(self.burst), "rate": self.rate},
            ).fetchone()
        admitted, tokens = row
        return 0.0 if admitted else (1.0 - tokens) / self.rate


class SharedSessionMap:
    """Session key → container id for every replica: a session (or a principal's session-less
    default) started on one replica continues in the same container on the next."""

    def __init__(self, url: str) -> None:
        self._conn = open_database(url)
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT container_id FROM session_containers WHERE session_key = %s", (key,)).fetchone()
        return row[0] if row else None

    def set(self, key: str, container_id: str) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO session_containers (session_key, container_id, updated) VALUES (%s, %s, %s) "
                "ON CONFLICT (session_key) DO UPDATE SET container_id = EXCLUDED.container_id, updated = EXCLUDED.updated",
                (key, container_id, time.time()),
            )

    def touch(self, cid: str) -> None:
        """``cid`` is being used (by this replica): no replica stops it as idle meanwhile."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO container_use (cid, last_used) VALUES (%s, %s) "
                "ON CONFLICT (cid) DO UPDATE SET last_used = GREATEST(container_use.last_used, EXCLUDED.last_used)",
                (cid, time.time()),
            )

    def last_used(self, cid: str) -> float | None:
        """When any replica last used ``cid`` (wall clock), or None."""
        with self._lock:
            row = self._conn.execute("SELECT last_used FROM container_use WHERE cid = %s", (cid,)).fetchone()
        return float(row[0]) if row else None

    def lock_principal(self, principal: str, timeout: float) -> bool:
        """Take the cross-replica lock under which ``principal``'s sandboxes are counted and one more
        is made, so two replicas' creates cannot both pass the quota. Session-level (the database
        drops it with a dead replica's connection) and polled, so the map's other users are not held
        up. The caller serialises its own creates per principal: a session's advisory locks nest.
        False when another replica held it for ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (QUOTA_LOCK, principal)).fetchone()
            if row and row[0]:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def unlock_principal(self, principal: str) -> None:
        with self._lock:
            self._conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (QUOTA_LOCK, principal))


class PgSessionLedger:
    """``SessionLedger`` across replicas: a session opened on one replica counts on all of them.

    A replica that dies mid-request leaves ``in_flight`` up; such a session is still dropped once
    nothing touched it for twice the idle timeout."""

    blocking = True

    def __init__(self, url: str, per_principal: int, idle_timeout: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        from mcp.server.streamable_http_manager import DEFAULT_SESSION_IDLE_TIMEOUT

        self.per_principal = per_principal
        self.idle_timeout = DEFAULT_SESSION_IDLE_TIMEOUT if idle_timeout is None else idle_timeout
        self._clock = clock
        self._conn = open_database(url)
        self._lock = threading.Lock()

    def open_count(self, principal: str) -> int:
        now = self._clock()
        with self._lock:
            self._conn.execute(
                "DELETE FROM mcp_sessions WHERE principal = %s AND "
                "((in_flight = 0 AND last_seen < %s) OR last_seen < %s)",
                (principal, now - self.idle_timeout, now - 2 * self.idle_timeout),
            )
            row = self._conn.execute("SELECT COUNT(*) FROM mcp_sessions WHERE principal = %s", (principal,)).fetchone()
        return int(row[0])

    def at_cap(self, principal: str) -> bool:
        return self.open_count(principal) >= self.per_principal

    def opened(self, principal: str, sid: str) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO mcp_sessions (sid, principal, in_flight, last_seen) VALUES (%s, %s, 0, %s) "
                "ON CONFLICT (sid) DO NOTHING",
                (sid, principal, self._clock()),
            )

    def begin(self, principal: str, sid: str) -> bool:
        with self._lock:
            cur = self._conn.execute(
                "UPDATE mcp_sessions SET in_flight = in_flight + 1, last_seen = %s WHERE sid = %s AND principal = %s",
                (self._clock(), sid, principal),
            )
        return cur.rowcount == 1

    def end(self, principal: str, sid: str, *, gone: bool) -> None:
        with self._lock:
            if gone:
                self._conn.execute("DELETE FROM mcp_sessions WHERE sid = %s AND principal = %s", (sid, principal))
            else:
                self._conn.execute(
                    "UPDATE mcp_sessions SET in_flight = GREATEST(0, in_flight - 1), last_seen = %s "
                    "WHERE sid = %s AND principal = %s",
                    (self._clock(), sid, principal),
                )


__all__ = ["PgCallRateLimiter", "PgFileStore", "PgOwnerRegistry", "PgSessionLedger", "PgSkillStore", "SharedSessionMap", "StoredFileNotFound", "open_database"]
