"""The local file store: ids, blobs on disk, metadata in SQLite.

Layout under ``root`` (``Settings.files_dir``)::

    files.db          SQLite (WAL) metadata, one row per file
    blobs/<file_id>   the bytes, written once, never modified
    tmp/              uploads in progress; renamed into blobs/ on commit

Every method is synchronous and thread-safe; async callers run them with
``anyio.to_thread.run_sync``. Several processes (the server and the CLI) may open the same
root at once: SQLite's WAL mode and a busy timeout serialise their writes.

Invariants:

* a row exists only for a complete, fsynced blob (a blob is renamed into place before its row is
  inserted, and an insert that fails removes the blob again);
* an aborted or failed write leaves nothing behind in ``blobs/`` or the database;
* files are removed only by ``delete`` or by ``prune`` (retention, or an expiry the uploader
  asked for) — never as a side effect of anything else;
* a file owned by another principal is indistinguishable from one that does not exist.
"""

from __future__ import annotations

import builtins
import hashlib
import mimetypes
import os
import random
import re
import secrets
import sqlite3
import string
import tempfile
import threading
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal, get_args

Origin = Literal["upload", "output", "hosted"]
ORIGINS: frozenset[str] = frozenset(get_args(Origin))

CHUNK = 1024 * 1024
"""Default read/copy chunk (1 MiB)."""

FILE_ID_PREFIX = "file_"
_ID_ALPHABET = string.ascii_letters + string.digits
_ID_LEN = 24  # 24 base62 characters ≈ 143 bits of randomness
_ID_RE = re.compile(r"file_[A-Za-z0-9_-]{1,128}")
"""What ``get`` and friends accept: our own ids and the hosted Files API's (which may be stored under
their own id, see ``begin(file_id=...)``). Anything else — including any path syntax — is not found."""

MAX_FILENAME_BYTES = 255
TMP_STALE_SECONDS = 24 * 3600.0
DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 1000
_HEAD_BYTES = 512  # bytes kept for content sniffing


class StoredFileNotFound(KeyError):
    """No such file — or it belongs to another principal (the two are never distinguished)."""

    def __init__(self, file_id: str) -> None:
        super().__init__(file_id)
        self.file_id = file_id

    def __str__(self) -> str:
        return f"file not found: {self.file_id!r}"


class FileTooLarge(ValueError):
    """A write went past the ``max_size`` given to ``FileStore.begin``; nothing was stored."""

    def __init__(self, limit: int, filename: str = "") -> None:
        what = f"file {filename!r}" if filename else "file"
        super().__init__(f"{what} is larger than the limit of {limit} bytes")
        self.limit = limit
        self.filename = filename


def new_file_id() -> str:
    return FILE_ID_PREFIX + "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LEN))


def is_file_id(value: str) -> bool:
    return bool(_ID_RE.fullmatch(value))


def _rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _to_us(dt: datetime) -> int:
    if dt.tzinfo is None:
        raise ValueError("naive datetime; use an aware UTC datetime")
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


@dataclass(frozen=True)
class FileRecord:
    id: str
    filename: str
    size: int
    mime_type: str
    created_at: datetime
    """Aware UTC datetime."""
    container_id: str | None
    origin: Origin
    principal: str
    sha256: str
    """Lower-case hex digest of the bytes."""
    downloadable: bool
    expires_at: datetime | None = None
    """Set only when the uploader asked for an expiry (Files API ``expires_in_seconds``)."""

    def to_api(self) -> dict[str, Any]:
        """The Anthropic Files API object (``anthropic.types.beta.BetaFileMetadata``)."""
        out: dict[str, Any] = {
            "type": "file",
            "id": self.id,
            "filename": self.filename,
            "mime_type": self.mime_type,
            "size_bytes": self.size,
            "created_at": _rfc3339(self.created_at),
            "downloadable": self.downloadable,
        }
        if self.expires_at is not None:
            out["expires_at"] = _rfc3339(self.expires_at)
        return out


# --------------------------------------------------------------------------- filenames, mime


_BIDI_CONTROLS = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F)}


def sanitize_filename(name: str | bytes | None) -> str:
    """A safe single path component for ``name``.

    Keeps only the last component (``/`` and ``\\`` both separate), removes NULs, control and
    bidi-override characters, strips surrounding whitespace; ``""``, ``.`` and ``..`` become
    ``"file"``; the result is at most 255 bytes of UTF-8 (the extension kept when it can be).
    """
    if name is None:
        return "file"
    if isinstance(name, bytes):
        name = name.decode("utf-8", errors="replace")
    name = unicodedata.normalize("NFC", name)
    name = "".join(
        ch
        for ch in name
        if ch not in _BIDI_CONTROLS and unicodedata.category(ch) not in ("Cc", "Cs", "Zl", "Zp")
    )
    name = re.split(r"[/\\]", name)[-1].strip()
    if name in ("", ".", ".."):
        return "file"
    return _truncate_utf8(name, MAX_FILENAME_BYTES)


def _truncate_utf8(name: str, limit: int) -> str:
    if len(name.encode()) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext.encode()) > 32:
        stem, ext = name, ""
    else:
        ext = "." + ext
    budget = limit - len(ext.encode())
    cut = stem.encode()[:budget].decode("utf-8", errors="ignore")
    return (cut + ext).strip() or "file"


_MIME = mimetypes.MimeTypes()  # built-in table only: the same answer on every machine
for _ext, _type in {
    ".txt": "text/plain",
    ".log": "text/plain",
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".json": "application/json",
    ".jsonl": "application/jsonl",
    ".ndjson": "application/x-ndjson",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".toml": "application/toml",
    ".py": "text/x-python",
    ".ipynb": "application/x-ipynb+json",
    ".sh": "text/x-shellscript",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
    ".parquet": "application/vnd.apache.parquet",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
}.items():
    _MIME.add_type(_type, _ext)


def _sniff(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(head) >= 12 and head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return "application/zip"
    return None


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a multi-byte character cut at the end of the sniffed head is still text
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


def guess_mime(filename: str, head: bytes = b"") -> str:
    """MIME type from the first bytes (PNG, JPEG, GIF, WebP, PDF, ZIP) and the name.

    Content wins for those formats, except that a ZIP keeps a more specific zip-based type from
    its name (``.xlsx``, ``.docx``, ``.jar``...). Unknown extension-less text is ``text/plain``;
    everything else unknown is ``application/octet-stream``.
    """
    by_name, encoding = _MIME.guess_type(filename, strict=False)
    if encoding is not None:  # foo.csv.gz is a gzip file, not a CSV
        by_name = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz"}.get(
            encoding, "application/octet-stream"
        )
    sniffed = _sniff(head)
    if sniffed == "application/zip":
        if by_name and by_name != "application/zip" and not by_name.startswith("text/"):
            return by_name
        return sniffed
    if sniffed:
        return sniffed
    if by_name:
        return by_name
    if "." not in filename.lstrip(".") and _looks_like_text(head):
        return "text/plain"
    return "application/octet-stream"


# --------------------------------------------------------------------------- pending writes


class PendingFile:
    """A file being written into the store. ``commit()`` publishes it; ``abort()`` discards it.

    As a context manager it aborts on an exception and, on a clean exit, aborts too unless
    ``commit()`` was called (nothing half-written ever becomes visible).
    """

    def __init__(
        self,
        store: FileStore,
        *,
        file_id: str | None,
        filename: str,
        origin: Origin,
        principal: str,
        container_id: str | None,
        mime_type: str | None,
        max_size: int | None,
        downloadable: bool,
        expires_at: datetime | None,
    ) -> None:
        self._store = store
        self.id = file_id or store._unused_id()
        self.filename = filename
        self.origin = origin
        self.principal = principal
        self.container_id = container_id
        self.mime_type = mime_type
        self.max_size = max_size
        self.downloadable = downloadable
        self.expires_at = expires_at
        fd, tmp = tempfile.mkstemp(dir=store.tmp_dir, prefix=self.id + ".", suffix=".part")
        self._tmp = Path(tmp)
        self._fh: BinaryIO | None = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._head = b""
        self._size = 0
        self._state: Literal["open", "committed", "aborted"] = "open"
        self.record: FileRecord | None = None

    @property
    def size(self) -> int:
        return self._size

    @property
    def head(self) -> bytes:
        """The first bytes written (up to 512), for content sniffing."""
        return self._head

    @property
    def closed(self) -> bool:
        return self._state != "open"

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._state != "open" or self._fh is None:
            raise ValueError(f"pending file {self.id} is {self._state}")
        n = len(data)
        if self.max_size is not None and self._size + n > self.max_size:
            self.abort()
            raise FileTooLarge(self.max_size, self.filename)
        try:
            self._fh.write(data)
        except BaseException:
            self.abort()
            raise
        self._hash.update(data)
        if len(self._head) < _HEAD_BYTES:
            self._head += bytes(data[: _HEAD_BYTES - len(self._head)])
        self._size += n
        return n

    def commit(self) -> FileRecord:
        if self._state != "open" or self._fh is None:
            raise ValueError(f"pending file {self.id} is {self._state}")
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            record = FileRecord(
                id=self.id,
                filename=self.filename,
                size=self._size,
                mime_type=self.mime_type or guess_mime(self.filename, self._head),
                created_at=datetime.now(UTC),
                container_id=self.container_id,
                origin=self.origin,
                principal=self.principal,
                sha256=self._hash.hexdigest(),
                downloadable=self.downloadable,
                expires_at=self.expires_at,
            )
            self._store._publish(self._tmp, record)
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        self.record = record
        return record

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> PendingFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()  # no-op after commit()

    def __del__(self) -> None:  # last resort: a forgotten pending file leaves no temp file
        try:
            if getattr(self, "_state", None) == "open":
                self.abort()
        except Exception:
            pass


# --------------------------------------------------------------------------- the store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    filename     TEXT    NOT NULL,
    size         INTEGER NOT NULL,
    mime_type    TEXT    NOT NULL,
    created_us   INTEGER NOT NULL,
    container_id TEXT,
    origin       TEXT    NOT NULL CHECK (origin IN ('upload', 'output', 'hosted')),
    principal    TEXT    NOT NULL,
    sha256       TEXT    NOT NULL,
    downloadable INTEGER NOT NULL,
    expires_us   INTEGER
);
CREATE INDEX IF NOT EXISTS files_by_principal ON files (principal, seq);
CREATE INDEX IF NOT EXISTS files_by_container ON files (container_id, seq);
CREATE INDEX IF NOT EXISTS files_by_created ON files (created_us);
CREATE INDEX IF NOT EXISTS files_by_expiry ON files (expires_us) WHERE expires_us IS NOT NULL;
"""
_COLUMNS = (
    "id, filename, size, mime_type, created_us, container_id, origin, principal, sha256, downloadable, expires_us"
)
_SCHEMA_VERSION = 1


def _row_to_record(row: tuple[Any, ...]) -> FileRecord:
    return FileRecord(
        id=row[0],
        filename=row[1],
        size=row[2],
        mime_type=row[3],
        created_at=_from_us(row[4]),
        container_id=row[5],
        origin=row[6],
        principal=row[7],
        sha256=row[8],
        downloadable=bool(row[9]),
        expires_at=_from_us(row[10]) if row[10] is not None else None,
    )


_BUSY_TIMEOUT_S = 30.0


def _open_db(path: Path) -> sqlite3.Connection:
    """A connection with WAL on and the schema at ``_SCHEMA_VERSION``, safe when several servers open
    one fresh data dir at the same instant (Claude Desktop, Claude Code and Cursor each start one)."""
    db = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
    try:
        _enable_wal(db, path)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        _migrate(db, path)
    except BaseException:
        db.close()
        raise
    return db


def _enable_wal(db: sqlite3.Connection, path: Path) -> None:
    # Switching to WAL needs the database to itself, and SQLite answers "database is locked" at once
    # (without its busy handler) while another connection is mid-switch or mid-read: retry until the
    # mode is WAL, whoever switched it.
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal":
                return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError(f"{path}: could not switch to WAL journal mode")
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.1)


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    # One IMMEDIATE transaction (it waits for the write lock through the busy handler) reads the
    # schema marker (user_version) and creates the schema only if it is older, so concurrent openers
    # never race between reading the marker and writing the tables.
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise RuntimeError(
                f"{path} has schema version {version}; this mcp-codeexec knows "
                f"{_SCHEMA_VERSION}. Upgrade mcp-codeexec."
            )
        if version < _SCHEMA_VERSION:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


class FileStore:
    """Files by id: bytes under ``root/blobs``, metadata in ``root/files.db``.

    ``retention_days``: files older than this are removed by ``prune()``; ``None`` (or a value
    ``<= 0``) keeps files until they are deleted explicitly.
    """

    def __init__(self, root: Path | str, retention_days: float | None = None) -> None:
        self.root = Path(root)
        self.retention_days = retention_days
        self.blobs_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        for d in (self.root, self.blobs_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._db = _open_db(self.root / "files.db")
        self._closed = False

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> FileStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r}, retention_days={self.retention_days!r})"

    # ----------------------------------------------------------------- writing

    def begin(
        self,
        *,
        filename: str,
        origin: Origin,
        principal: str,
        container_id: str | None = None,
        mime_type: str | None = None,
        max_size: int | None = None,
        downloadable: bool = True,
        expires_at: datetime | None = None,
        file_id: str | None = None,
    ) -> PendingFile:
        """Start writing a file. ``filename`` is sanitised; ``mime_type`` None → guessed at commit
        from the first bytes and the name.

        ``file_id`` (normally left out: a fresh unguessable id is made) stores the file under a
        given id, e.g. a hosted Files API id mirrored locally; it must look like ``file_...`` and be
        unused (``FileExistsError`` otherwise, at once or at commit if another writer wins).
        """
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {sorted(ORIGINS)}, not {origin!r}")
        if not principal:
            raise ValueError("principal must be a non-empty string")
        if max_size is not None and max_size < 0:
            raise ValueError("max_size must be >= 0")
        if expires_at is not None and expires_at.tzinfo is None:
            raise ValueError("expires_at must be an aware datetime")
        if file_id is not None:
            if not is_file_id(file_id):
                raise ValueError(f"not a valid file id: {file_id!r}")
            if self._exists(file_id):
                raise FileExistsError(f"file id already in use: {file_id}")
        return PendingFile(
            self,
            file_id=file_id,
            filename=sanitize_filename(filename),
            origin=origin,
            principal=principal,
            container_id=container_id,
            mime_type=mime_type,
            max_size=max_size,
            downloadable=downloadable,
            expires_at=expires_at,
        )

    def add_bytes(self, data: bytes | bytearray | memoryview, **kw: Any) -> FileRecord:
        with self.begin(**kw) as pending:
            pending.write(data)
            return pending.commit()

    def add_path(self, path: Path | str, *, filename: str | None = None, **kw: Any) -> FileRecord:
        """Copy the file at ``path`` into the store in chunks; ``filename`` defaults to its name."""
        path = Path(path)
        with path.open("rb") as src, self.begin(filename=filename or path.name, **kw) as pending:
            while chunk := src.read(CHUNK):
                pending.write(chunk)
            return pending.commit()

    def _exists(self, file_id: str) -> bool:
        if (self.blobs_dir / file_id).exists():
            return True
        with self._lock:
            self._check_open()
            return self._db.execute("SELECT 1 FROM files WHERE id = ?", (file_id,)).fetchone() is not None

    def _unused_id(self) -> str:
        while True:  # a collision has probability ~2**-143; checking costs one indexed lookup
            file_id = new_file_id()
            if not self._exists(file_id):
                return file_id

    def _publish(self, tmp: Path, record: FileRecord) -> None:
        """Rename a complete, fsynced temp file to its blob and insert its row."""
        blob = self.blobs_dir / record.id
        try:  # link, not rename: never replaces an existing blob
            os.link(tmp, blob)
        except FileExistsError:
            raise FileExistsError(f"file id already in use: {record.id}") from None
        except OSError:  # a filesystem without hard links
            if blob.exists():
                raise FileExistsError(f"file id already in use: {record.id}") from None
            os.rename(tmp, blob)
        else:
            tmp.unlink()
        try:
            _fsync_dir(self.blobs_dir)
            with self._lock:
                self._check_open()
                self._db.execute(
                    f"INSERT INTO files ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.id,
                        record.filename,
                        record.size,
                        record.mime_type,
                        _to_us(record.created_at),
                        record.container_id,
                        record.origin,
                        record.principal,
                        record.sha256,
                        int(record.downloadable),
                        _to_us(record.expires_at) if record.expires_at else None,
                    ),
                )
        except BaseException:
            blob.unlink(missing_ok=True)
            raise

    # ----------------------------------------------------------------- reading

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("file store is closed")

    def get(self, file_id: str, principal: str | None = None) -> FileRecord:
        """The record of ``file_id``; ``principal`` set → it must own the file."""
        if not isinstance(file_id, str) or not is_file_id(file_id):
            raise StoredFileNotFound(str(file_id))
        with self._lock:
            self._check_open()
            row = self._db.execute(f"SELECT {_COLUMNS} FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None or (principal is not None and row[7] != principal):
            raise StoredFileNotFound(file_id)
        return _row_to_record(row)

    def blob_path(self, file_id: str) -> Path:
        """Where the bytes of ``file_id`` live (the id's format is checked, not its existence)."""
        if not isinstance(file_id, str) or not is_file_id(file_id):
            raise StoredFileNotFound(str(file_id))
        return self.blobs_dir / file_id

    def open(self, file_id: str, principal: str | None = None) -> BinaryIO:
        """An open binary handle on the bytes (it stays readable even if the file is deleted)."""
        self.get(file_id, principal)
        try:
            return builtins.open(self.blob_path(file_id), "rb")
        except FileNotFoundError:
            raise StoredFileNotFound(file_id) from None

    def open_with_record(self, file_id: str, principal: str | None = None) -> tuple[FileRecord, BinaryIO]:
        """``get`` and ``open`` together, for streaming a response whose headers need the record."""
        record = self.get(file_id, principal)
        try:
            return record, builtins.open(self.blob_path(file_id), "rb")
        except FileNotFoundError:
            raise StoredFileNotFound(file_id) from None

    def iter_chunks(self, file_id: str, principal: str | None = None, chunk: int = CHUNK) -> Iterator[bytes]:
        """The bytes in chunks of at most ``chunk``. Ownership is checked at once, not lazily."""
        fh = self.open(file_id, principal)
        return _iter_handle(fh, chunk)

    def list(
        self,
        principal: str | None = None,
        container_id: str | None = None,
        limit: int | None = None,
        after_id: str | None = None,
        before_id: str | None = None,
        *,
        origin: Origin | None = None,
        ids: builtins.list[str] | None = None,
    ) -> builtins.list[FileRecord]:
        """Records, newest first. ``after_id``: the page right after (older than) that file;
        ``before_id``: the page right before (newer than) it. A cursor the principal cannot
        see raises ``StoredFileNotFound``. ``limit=None`` (the default): every match."""
        if after_id is not None and before_id is not None:
            raise ValueError("give after_id or before_id, not both")
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if principal is not None:
            where.append("principal = ?")
            args.append(principal)
        if container_id is not None:
            where.append("container_id = ?")
            args.append(container_id)
        if origin is not None:
            where.append("origin = ?")
            args.append(origin)
        if ids is not None:
            ids = [i for i in dict.fromkeys(ids) if is_file_id(i)]
            if not ids:
                return []
            where.append(f"id IN ({', '.join('?' * len(ids))})")
            args.extend(ids)
        order = "DESC"
        with self._lock:
            self._check_open()
            cursor = after_id if after_id is not None else before_id
            if cursor is not None:
                seq = self._seq_of(cursor, principal)
                if after_id is not None:
                    where.append("seq < ?")
                else:
                    where.append("seq > ?")
                    order = "ASC"
                args.append(seq)
            sql = f"SELECT {_COLUMNS} FROM files"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += f" ORDER BY seq {order}"
            if limit is not None:
                sql += " LIMIT ?"
                args.append(max(0, int(limit)))
            rows = self._db.execute(sql, args).fetchall()
        records = [_row_to_record(r) for r in rows]
        if order == "ASC":
            records.reverse()
        return records

    def _seq_of(self, file_id: str, principal: str | None) -> int:
        if not is_file_id(file_id):
            raise StoredFileNotFound(file_id)
        row = self._db.execute("SELECT seq, principal FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None or (principal is not None and row[1] != principal):
            raise StoredFileNotFound(file_id)
        return int(row[0])

    # ----------------------------------------------------------------- removing

    def delete(self, file_id: str, principal: str | None = None) -> FileRecord:
        """Remove a file (row first, then blob). Returns the record it had."""
        record = self.get(file_id, principal)
        with self._lock:
            self._check_open()
            cur = self._db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        if cur.rowcount == 0:  # deleted concurrently
            raise StoredFileNotFound(file_id)
        (self.blobs_dir / file_id).unlink(missing_ok=True)
        return record

    def prune(self, now: datetime | None = None) -> int:
        """Delete files past retention or past the expiry their uploader set; return how many.

        Also removes temp files of abandoned uploads untouched for a day. Nothing else.
        """
        now = now or datetime.now(UTC)
        now_us = _to_us(now)
        conds = ["(expires_us IS NOT NULL AND expires_us <= ?)"]
        args: builtins.list[Any] = [now_us]
        if self.retention_days is not None and self.retention_days > 0:
            conds.append("created_us < ?")
            args.append(_to_us(now - timedelta(days=self.retention_days)))
        with self._lock:
            self._check_open()
            ids = [
                r[0] for r in self._db.execute(f"SELECT id FROM files WHERE {' OR '.join(conds)}", args).fetchall()
            ]
        removed = 0
        for file_id in ids:
            try:
                self.delete(file_id)
            except StoredFileNotFound:
                continue
            removed += 1
        self._clean_tmp(now.timestamp())
        return removed

    def _clean_tmp(self, now_ts: float) -> None:
        try:
            entries = builtins.list(os.scandir(self.tmp_dir))
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and now_ts - entry.stat().st_mtime > TMP_STALE_SECONDS:
                    os.unlink(entry.path)
            except FileNotFoundError:
                continue

    # ----------------------------------------------------------------- misc

    def stats(self, principal: str | None = None) -> dict[str, int]:
        """``{"files": n, "bytes": total}``."""
        sql = "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM files"
        args: tuple[Any, ...] = ()
        if principal is not None:
            sql += " WHERE principal = ?"
            args = (principal,)
        with self._lock:
            self._check_open()
            n, total = self._db.execute(sql, args).fetchone()
        return {"files": int(n), "bytes": int(total)}


def _iter_handle(fh: BinaryIO, chunk: int) -> Iterator[bytes]:
    try:
        while data := fh.read(chunk):
            yield data
    finally:
        fh.close()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = [
    "CHUNK",
    "FileRecord",
    "FileStore",
    "FileTooLarge",
    "Origin",
    "PendingFile",
    "StoredFileNotFound",
    "guess_mime",
    "is_file_id",
    "new_file_id",
    "sanitize_filename",
]
