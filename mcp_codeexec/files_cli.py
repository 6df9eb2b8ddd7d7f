"""``mcp-codeexec files ls | get | rm | upload | prune`` — the file store from the command line.

The CLI acts as the local owner of the data directory: it sees every principal's files. Uploads are
stored with principal ``local`` (the principal of stdio sessions) and origin ``upload``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .config import Settings
from .database import open_file_store
from .files import CHUNK, FileRecord, FileStore, StoredFileNotFound

LOCAL_PRINCIPAL = "local"
PROGRESS_MIN_BYTES = 8 * 1024 * 1024

Attach = Callable[[FileRecord, str], None]
"""``attach(record, container_id)``: place a stored upload into a container (raises on failure)."""


def register_cli(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    get_settings: Callable[[], Settings],
    attach: Attach | None = None,
) -> argparse.ArgumentParser:
    """Add the ``files`` command group; each leaf sets ``func(namespace) -> int``."""
    files = subparsers.add_parser(
        "files",
        help="list, fetch, upload and remove stored files",
        description="The local file store: uploads and files produced by code execution.",
    )
    sub = files.add_subparsers(dest="files_command", metavar="COMMAND")
    sub.required = True

    def store() -> FileStore:
        settings = get_settings()
        return open_file_store(settings)  # type: ignore[no-any-return]

    p = sub.add_parser("ls", help="list stored files, newest first")
    p.add_argument("--container", metavar="ID", help="only files of this container")
    p.add_argument("--json", action="store_true", help="one JSON array of file objects")
    p.set_defaults(func=lambda ns: _ls(ns, store))

    p = sub.add_parser("get", help="write a file's bytes to PATH or stdout")
    p.add_argument("file_id", metavar="ID")
    p.add_argument("-o", "--output", metavar="PATH", help="file or directory to write to ('-' = stdout, the default)")
    p.set_defaults(func=lambda ns: _get(ns, store))

    p = sub.add_parser("rm", help="delete stored files")
    p.add_argument("file_ids", metavar="ID", nargs="+")
    p.set_defaults(func=lambda ns: _rm(ns, store))

    p = sub.add_parser("upload", help="store a file (origin 'upload'); print its id")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--container", metavar="ID", help="also place it into this container's input directory")
    p.add_argument("--name", metavar="FILENAME", help="store under this name instead of PATH's")
    p.set_defaults(func=lambda ns: _upload(ns, store, attach))

    p = sub.add_parser("prune", help="delete files past retention now; print how many")
    p.set_defaults(func=lambda ns: _prune(ns, store))
    return files


# --------------------------------------------------------------------------- commands


def _err(message: str) -> None:
    print(f"mcp-codeexec: {message}", file=sys.stderr)


def _ls(ns: argparse.Namespace, store: Callable[[], FileStore]) -> int:
    with store() as s:
        records = s.list(container_id=ns.container, limit=None)
    if ns.json:
        out = [
            {**r.to_api(), "container_id": r.container_id, "origin": r.origin, "principal": r.principal, "sha256": r.sha256}
            for r in records
        ]
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    if not records:
        print("no files", file=sys.stderr)
        return 0
    rows = [("ID", "SIZE", "CREATED (UTC)", "ORIGIN", "CONTAINER", "MIME TYPE", "NAME")]
    for r in records:
        rows.append(
            (
                r.id,
                _human(r.size),
                r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                r.origin,
                r.container_id or "-",
                r.mime_type,
                r.filename,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def _get(ns: argparse.Namespace, store: Callable[[], FileStore]) -> int:
    with store() as s:
        try:
            record, fh = s.open_with_record(ns.file_id)
        except StoredFileNotFound:
            _err(f"file not found: {ns.file_id}")
            return 1
    with fh:
        if ns.output in (None, "-"):
            return _copy_to_stdout(record, fh)
        dest = Path(ns.output)
        if dest.is_dir():
            dest = dest / record.filename
        tmp_fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(tmp_fd, "wb") as out:
                digest = _copy(fh, out, record.size, f"get {record.filename}")
                out.flush()
                os.fsync(out.fileno())
            if digest != record.sha256:
                _err(f"{record.id}: sha256 mismatch (stored {record.sha256}, read {digest}); nothing written")
                os.unlink(tmp_name)
                return 1
            os.replace(tmp_name, dest)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    print(str(dest), file=sys.stderr)
    return 0


def _copy_to_stdout(record: FileRecord, fh: IO[bytes]) -> int:
    out = sys.stdout.buffer
    try:
        digest = _copy(fh, out, record.size, f"get {record.filename}")
        out.flush()
    except BrokenPipeError:  # e.g. `files get ID | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    if digest != record.sha256:
        _err(f"{record.id}: sha256 mismatch (stored {record.sha256}, read {digest})")
        return 1
    return 0


def _rm(ns: argparse.Namespace, store: Callable[[], FileStore]) -> int:
    status = 0
    with store() as s:
        for file_id in ns.file_ids:
            try:
                s.delete(file_id)
            except StoredFileNotFound:
                _err(f"file not found: {file_id}")
                status = 1
            else:
                print(f"deleted {file_id}", file=sys.stderr)
    return status


def _upload(ns: argparse.Namespace, store: Callable[[], FileStore], attach: Attach | None) -> int:
    path = Path(ns.path)
    if not path.is_file():
        _err(f"not a regular file: {path}")
        return 1
    if ns.container and attach is None:
        _err("--container needs the docker backend (no attach hook is available)")
        return 1
    size = path.stat().st_size
    with store() as s:
        with path.open("rb") as src, s.begin(
            filename=ns.name or path.name, origin="upload", principal=LOCAL_PRINCIPAL, container_id=ns.container
        ) as pending:
            _copy(src, pending, size, f"upload {path.name}")
            record = pending.commit()
        if ns.container:
            assert attach is not None
            try:
                attach(record, ns.container)
            except Exception as exc:
                s.delete(record.id)
                _err(f"could not attach {path.name} to container {ns.container}: {getattr(exc, 'message', None) or exc}")
                return 1
    print(record.id)
    return 0


def _prune(ns: argparse.Namespace, store: Callable[[], FileStore]) -> int:
    with store() as s:
        print(s.prune())
    return 0


# --------------------------------------------------------------------------- helpers


def _copy(src: IO[bytes], dst: Any, total: int, label: str) -> str:
    """Copy ``src`` to ``dst`` (anything with ``write``) in chunks; return the sha256 hex digest."""
    h = hashlib.sha256()
    progress = _Progress(total, label)
    done = 0
    while chunk := src.read(CHUNK):
        dst.write(chunk)
        h.update(chunk)
        done += len(chunk)
        progress.update(done)
    progress.close(done)
    return h.hexdigest()


class _Progress:
    """A one-line progress bar on stderr, only for a TTY and for files of 8 MiB or more."""

    def __init__(self, total: int, label: str, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.label = label
        self.enabled = total >= PROGRESS_MIN_BYTES and _isatty(self.stream)
        self.start = time.monotonic()
        self.last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        frac = min(1.0, done / self.total) if self.total else 1.0
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        rate = done / max(now - self.start, 1e-6)
        self.stream.write(f"\r{self.label[:40]} [{bar}] {frac:6.1%} {_human(done)}/{_human(self.total)} {_human(rate)}/s ")
        self.stream.flush()

    def close(self, done: int) -> None:
        if self.enabled:
            self.update(done, force=True)
            self.stream.write("\n")
            self.stream.flush()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


__all__ = ["LOCAL_PRINCIPAL", "register_cli"]
