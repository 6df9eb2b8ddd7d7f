"""Snapshots and forks of sandbox workspaces (issue 17 item 5).

A workspace is an ext4 image file (``<data>/volumes/ws_<token>.img``, loop-mounted; quota mode
``loop``). A snapshot is a copy of that file under ``<data>/snapshots/<name>.img`` with a JSON
record beside it; a sandbox started from a snapshot, or forked from a running sandbox, gets a
copy as its own new workspace image and is otherwise a new sandbox: its own id, owner record,
lifetime, limits (memory, CPUs, pids from the settings) and container. Its workspace keeps the
source's size (the image is copied whole, not resized). Files are copied, processes are not: the
new sandbox's shell starts in the saved working directory with the saved exports (the shell state
is on the workspace), its Python interpreter is fresh (the first code_execution call says the
earlier interpreter's state is not there), and no service runs in it.

Copies are ``cp --reflink=auto --sparse=always``: copy-on-write (instant, no extra disk until
either side writes) on filesystems that can (btrfs, XFS with reflink), else a sparse copy that
reads and writes only the allocated blocks. A running source is copied while its filesystem is
frozen (``fsfreeze -f`` on the host mount point: dirty data and the journal are flushed and writers
block until ``fsfreeze -u``), so the copy is a consistent, cleanly-journalled ext4 image.

Snapshots live outside ``volumes/``, so the reaper (which removes workspace images no sandbox
links to) never sees them; they stay until ``snapshots rm``. Per principal at most
``max_snapshots_per_principal`` within ``max_snapshot_disk_bytes_per_principal`` of host disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import CodeExecError, InvalidToolInput, Unavailable

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class SnapshotNotFound(InvalidToolInput):
    pass


@dataclass
class Snapshot:
    name: str
    owner: str
    source: str
    created: float
    size_bytes: int
    """The image's apparent size (the workspace's capacity plus ext4 metadata)."""
    disk_bytes: int
    """Host disk the snapshot takes (allocated blocks; 0 extra while shared by a reflink)."""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _copy(src: Path, dst: Path) -> None:
    proc = subprocess.run(["cp", "--reflink=auto", "--sparse=always", "--", str(src), str(dst)],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        with contextlib.suppress(FileNotFoundError):
            dst.unlink()
        raise Unavailable(f"copying a workspace image failed: {proc.stderr.strip()}")


def _freeze(mnt: Path, on: bool) -> None:
    proc = subprocess.run(["fsfreeze", "-f" if on else "-u", str(mnt)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise Unavailable(f"fsfreeze {'-f' if on else '-u'} {mnt} failed: {proc.stderr.strip()}")


def quiesced_copy(manager: Any, cid: str, dst: Path) -> None:
    """Copy sandbox ``cid``'s workspace image to ``dst``, frozen while it is mounted."""
    if manager.volumes.mode != "loop":
        raise Unavailable("snapshots and forks need loop-mounted workspaces (quota = loop: root beside a local engine)")
    link, mnt = manager.volumes.paths(cid)
    if not link.exists():
        raise Unavailable(f"container_expired: sandbox {cid!r} has no workspace here")
    src = link.resolve()
    if not os.path.ismount(mnt):
        _copy(src, dst)
        return
    _freeze(mnt, True)
    try:
        _copy(src, dst)
    finally:
        for attempt in range(5):  # a frozen workspace would hang the sandbox: never leave it so
            try:
                _freeze(mnt, False)
                break
            except Unavailable:
                if attempt == 4:
                    raise
                time.sleep(0.2)


class SnapshotStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.data_dir / "snapshots"

    def _paths(self, name: str) -> tuple[Path, Path]:
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise InvalidToolInput(f"snapshot name {name!r}: 1-64 of letters, digits, '_', '.', '-' (starting with a letter or digit)")
        return self.root / f"{name}.img", self.root / f"{name}.json"

    def get(self, name: str, owner: str | None = None) -> Snapshot:
        """``owner``: the caller's principal (None or "local": any snapshot of this data directory)."""
        image, meta = self._paths(name)
        try:
            data = json.loads(meta.read_text())
        except (FileNotFoundError, ValueError):
            raise SnapshotNotFound(f"no snapshot named {name!r}") from None
        if owner not in (None, "local") and data.get("owner") != owner:
            raise SnapshotNotFound(f"no snapshot named {name!r}")
        data["disk_bytes"] = image.stat().st_blocks * 512 if image.exists() else 0
        return Snapshot(**data)

    def list(self, owner: str | None = None) -> list[Snapshot]:
        found = []
        for meta in sorted(self.root.glob("*.json")) if self.root.exists() else []:
            with contextlib.suppress(CodeExecError):
                found.append(self.get(meta.stem, owner))
        return sorted(found, key=lambda s: s.created)

    def save(self, manager: Any, cid: str, name: str, owner: str, *, replace: bool = False) -> Snapshot:
        """Snapshot sandbox ``cid``'s workspace as ``name`` (``owner``: who may use it)."""
        image, meta = self._paths(name)
        if meta.exists() and not replace:
            raise InvalidToolInput(f"a snapshot named {name!r} exists (remove it first, or replace it)")
        mine = [x for x in self.list() if x.owner == owner and x.name != name]
        s = self.settings
        if len(mine) >= s.max_snapshots_per_principal:
            raise InvalidToolInput(f"{owner} has {len(mine)} snapshots, the most it may keep; remove one first")
        used = sum(x.disk_bytes for x in mine)
        if used >= s.max_snapshot_disk_bytes_per_principal:
            raise InvalidToolInput(f"{owner}'s snapshots take {used} bytes, at least the {s.max_snapshot_disk_bytes_per_principal} allowed; remove one first")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.root / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            quiesced_copy(manager, cid, tmp)
            os.replace(tmp, image)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        record = {"name": name, "owner": owner, "source": cid, "created": time.time(), "size_bytes": image.stat().st_size}
        tmp_meta = meta.with_suffix(".json.tmp")
        tmp_meta.write_text(json.dumps(record))
        os.replace(tmp_meta, meta)
        return self.get(name)

    def remove(self, name: str, owner: str | None = None) -> None:
        self.get(name, owner)  # exists and is the caller's
        image, meta = self._paths(name)
        meta.unlink()
        with contextlib.suppress(FileNotFoundError):
            image.unlink()

    def start(self, manager: Any, name: str, owner: str) -> str:
        """A new sandbox whose workspace is a copy of snapshot ``name``; returns its id."""
        snap = self.get(name, owner)
        image, _ = self._paths(snap.name)
        record, _ = manager.create(owner, workspace_from=lambda dst: _copy(image, dst))
        return record.id


def fork(manager: Any, cid: str, owner: str) -> str:
    """A new sandbox whose workspace is a consistent copy of sandbox ``cid``'s (running or not)."""
    record, _ = manager.create(owner, workspace_from=lambda dst: quiesced_copy(manager, cid, dst))
    return record.id
