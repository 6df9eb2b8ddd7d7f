"""Snapshots and forks of sandbox workspaces (issue 17 item 5).

A workspace is an ext4 image file (``<data>/volumes/ws_<token>.img``, loop-mounted; quota mode
``loop``). A snapshot is a copy of that file under ``<data>/snapshots/<name>.img`` with a JSON
record beside it; a sandbox started from a snapshot, or forked from a running sandbox, gets a
copy as its own new workspace image and is otherwise a new sandbox: its own id, owner record,
lifetime, limits (memory, CPUs, pids and disk from the settings) and container. Its workspace is
grown to the configured ``disk_bytes`` when that is larger than the source's (``resize2fs``,
offline), never shrunk (a smaller limit than the source's keeps the source's size). Files are copied, processes are not: the
new sandbox's shell starts in the saved working directory with the saved exports (the shell state
is on the workspace), its Python interpreter is fresh (the first code_execution call says the
earlier interpreter's state is not there), and no service runs in it.

Copies are ``cp --reflink=auto --sparse=always``: copy-on-write (instant, no extra disk until
either side writes) on filesystems that can (btrfs, XFS with reflink), else a sparse copy that
reads and writes only the allocated blocks. A running source is copied while its filesystem is
frozen (``fsfreeze -f`` on the host mount point: dirty data and the journal are flushed and writers
block until ``fsfreeze -u``), so the copy is a consistent, cleanly-journalled ext4 image.

Named-volume workspaces (quota ``none``) are copied by the engine instead (volume_snapshots.py); a
snapshot starts sandboxes only in the mode it was saved in.

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

from . import volume_snapshots
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
    """Host disk the snapshot's image has allocated (blocks shared by a reflink are counted in full)."""
    volume: str | None = None
    """Volume mode (quota ``none``): the Docker volume holding the files (volume_snapshots.py)."""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _copy(src: Path, dst: Path) -> None:
    proc = subprocess.run(["cp", "--reflink=auto", "--sparse=always", "--", str(src), str(dst)],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        with contextlib.suppress(FileNotFoundError):
            dst.unlink()
        raise Unavailable(f"copying a workspace image failed: {proc.stderr.strip()}")


def _grow(image: Path, disk_bytes: int) -> None:
    """Give a copied workspace the new sandbox's own disk limit when that is larger than the
    source's (an ext4 image grows offline; it is never shrunk: the files might not fit)."""
    want = disk_bytes + disk_bytes * 3 // 100  # the padding QuotaVolumes.create gives a new image
    if image.stat().st_size >= want:
        return
    with open(image, "r+b") as fh:
        fh.truncate(want)
    for argv in (["e2fsck", "-fp", str(image)], ["resize2fs", str(image)]):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if proc.returncode not in (0, 1):  # e2fsck 1: errors corrected
            raise Unavailable(f"{argv[0]} on a copied workspace failed: {(proc.stderr or proc.stdout).strip()}")


def _freeze(mnt: Path, on: bool) -> None:
    proc = subprocess.run(["fsfreeze", "-f" if on else "-u", str(mnt)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise Unavailable(f"fsfreeze {'-f' if on else '-u'} {mnt} failed: {proc.stderr.strip()}")


def quiesced_copy(manager: Any, cid: str, dst: Path) -> None:
    """Copy sandbox ``cid``'s workspace image to ``dst``, frozen while it is mounted."""
    if manager.volumes.mode != "loop":
        raise Unavailable("copying a workspace image needs loop-mounted workspaces (volume_snapshots.py copies volumes)")
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
        if data.get("volume"):
            data.setdefault("disk_bytes", data.get("size_bytes", 0))  # measured by du when saved
        else:
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
        if manager.volumes.mode != "loop":
            return self._save_volume(manager, cid, name, owner)
        tmp = self.root / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            quiesced_copy(manager, cid, tmp)
            os.replace(tmp, image)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        record = {"name": name, "owner": owner, "source": cid, "created": time.time(), "size_bytes": image.stat().st_size}
        old = self._volume_of(name)
        self._write(meta, record)
        if old:
            volume_snapshots.remove(manager.client, old)
        return self.get(name)

    @staticmethod
    def _write(meta: Path, record: dict[str, Any]) -> None:
        tmp_meta = meta.with_suffix(".json.tmp")
        tmp_meta.write_text(json.dumps(record))
        os.replace(tmp_meta, meta)

    def _volume_of(self, name: str) -> str | None:
        """The Docker volume of an existing volume-mode snapshot ``name``."""
        with contextlib.suppress(CodeExecError):
            return self.get(name).volume
        return None

    def _save_volume(self, manager: Any, cid: str, name: str, owner: str) -> Snapshot:
        """Volume mode: the files go to a new snapshot volume; a replaced snapshot's is removed after."""
        image, meta = self._paths(name)
        old = self._volume_of(name)
        volume, used = volume_snapshots.save(manager, cid, name)
        record = {"name": name, "owner": owner, "source": cid, "created": time.time(), "size_bytes": used,
                  "disk_bytes": used, "volume": volume}
        try:
            self._write(meta, record)
        except BaseException:
            volume_snapshots.remove(manager.client, volume)
            raise
        if old:
            volume_snapshots.remove(manager.client, old)
        with contextlib.suppress(FileNotFoundError):
            image.unlink()  # a loop-mode snapshot of that name it replaced
        return self.get(name)

    def remove(self, name: str, owner: str | None = None, client: Any = None) -> None:
        """``client``: the engine's, to remove a volume-mode snapshot's volume (connected when not given)."""
        snap = self.get(name, owner)  # exists and is the caller's
        image, meta = self._paths(name)
        if snap.volume:
            if client is None:
                from .engines.docker import connect

                client = connect()
            volume_snapshots.remove(client, snap.volume)
        meta.unlink()
        with contextlib.suppress(FileNotFoundError):
            image.unlink()

    def start(self, manager: Any, name: str, owner: str) -> str:
        """A new sandbox whose workspace is a copy of snapshot ``name``; returns its id."""
        snap = self.get(name, owner)
        image, _ = self._paths(snap.name)
        _same_mode(manager, snap)

        def fill(dst: Any) -> None:
            if snap.volume:
                volume_snapshots.fill(manager, dst, snap.volume)
                return
            _copy(image, dst)
            _grow(dst, manager.settings.disk_bytes)

        record, _ = manager.create(owner, workspace_from=fill)
        return record.id


def _same_mode(manager: Any, snap: Snapshot) -> None:
    """A snapshot starts sandboxes in the workspace mode it was saved in (an ext4 image is not a volume)."""
    loop = manager.volumes.mode == "loop"
    if loop == bool(snap.volume):
        saved, here = ("a named volume", "loop-mounted images") if loop else ("a loop-mounted image", "named volumes")
        raise InvalidToolInput(f"snapshot {snap.name!r} was saved from {saved}; this server's workspaces are {here} "
                               "(quota setting): save it again here")


def fork(manager: Any, cid: str, owner: str) -> str:
    """A new sandbox whose workspace is a consistent copy of sandbox ``cid``'s (running or not)."""
    def fill(dst: Any) -> None:
        if manager.volumes.mode != "loop":
            volume_snapshots.fill(manager, dst, ("fork", cid))
            return
        quiesced_copy(manager, cid, dst)
        _grow(dst, manager.settings.disk_bytes)

    record, _ = manager.create(owner, workspace_from=fill)
    return record.id


def check_room(manager: Any, owner: str) -> None:
    """A principal's new sandboxes from snapshots and forks count against ``max_containers_per_principal``."""
    from .errors import TooManyRequests

    if owner == "local":
        return
    limit = manager.settings.max_containers_per_principal
    owned = sum(1 for record, _ in manager.list() if record.install == manager.install and record.owner == owner)
    if owned >= limit:
        raise TooManyRequests(f"at most {limit} containers per principal (remove one first)")


# --------------------------------------------------------------------------- the MCP tool (opt-in)

SNAPSHOTS = "snapshots"


def tool_definition(settings: Settings) -> Any:
    import mcp_types as types

    return types.Tool(
        name=SNAPSHOTS,
        title="Snapshot or fork the sandbox's workspace",
        description=(
            "Save the code-execution container's /workspace as a named snapshot, start new containers from "
            "snapshots, or fork the current container. action=save (name; replace: true to overwrite); "
            "list; remove (name); start (name) and fork: make a new container with a copy of the files and "
            "return its container_id — pass that as container_id to bash_code_execution, "
            "text_editor_code_execution or code_execution to work in it. Files (and the shell's working "
            "directory and exports) are copied; running processes and Python variables are not. "
            f"At most {settings.max_snapshots_per_principal} snapshots per client."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "action": {"type": "string", "enum": ["save", "list", "remove", "start", "fork"]},
                "name": {"type": "string", "description": "The snapshot's name (letters, digits, _ . -)."},
                "replace": {"type": "boolean", "description": "save: overwrite a snapshot of that name."},
                "container_id": {"type": "string", "description": "save/fork: a container other than the session's."},
            },
            "required": ["action"],
            "additionalProperties": False,
        },
        annotations=types.ToolAnnotations(title="Snapshot or fork the sandbox's workspace", open_world_hint=False),
    )


async def run(backend: Any, arguments: dict[str, Any], ctx: Any) -> tuple[dict[str, Any], str]:
    """(structured result, text) of one ``snapshots`` call; CodeExecError on failure."""
    import anyio.to_thread

    args = {k: v for k, v in arguments.items() if v not in (None, "", [])}
    action = args.pop("action", None)
    name, replace, container_id = args.pop("name", None), bool(args.pop("replace", False)), args.pop("container_id", None)
    if args or action not in ("save", "list", "remove", "start", "fork"):
        raise InvalidToolInput(f"invalid input for {SNAPSHOTS}: action is one of save, list, remove, start, fork"
                               + (f"; unknown fields {sorted(args)}" if args else ""))
    if action in ("save", "remove", "start") and not isinstance(name, str):
        raise InvalidToolInput(f"snapshots {action}: `name` is required")
    hook = getattr(backend, "sandbox_manager", None)
    if hook is None:
        raise Unavailable("snapshots need the docker backend (the hosted tool has none)")
    manager = await hook()
    store = SnapshotStore(manager.settings)
    owner = ctx.principal

    def call(fn: Any) -> Any:
        return anyio.to_thread.run_sync(fn, abandon_on_cancel=False)

    if action == "list":
        snaps = await call(lambda: store.list(owner))
        items = [s.as_dict() for s in snaps]
        text = "\n".join(f"{s['name']}: from {s['source']}, {s['disk_bytes']} bytes on disk" for s in items) or "no snapshots"
        return {"snapshots": items}, text
    if action == "remove":
        await call(lambda: store.remove(name, owner, manager.client))
        return {"removed": name}, f"removed snapshot {name}"
    if action == "start":
        await call(lambda: store.get(name, owner))
        await call(lambda: check_room(manager, owner))
        cid = await call(lambda: store.start(manager, name, owner))
        return {"container_id": cid, "snapshot": name}, f"started {cid} from snapshot {name}"
    sandbox = await backend.sandbox_for(ctx, container_id)  # the session's (or the named, if the caller's)
    source = sandbox.record.id
    if action == "save":
        snap = await call(lambda: store.save(manager, source, name, owner, replace=replace))
        return {"snapshot": snap.as_dict()}, f"saved {source} as snapshot {name} ({snap.disk_bytes} bytes on disk)"
    await call(lambda: check_room(manager, owner))
    cid = await call(lambda: fork(manager, source, owner))
    return {"container_id": cid, "source": source}, f"forked {source} into {cid}"


async def call(backend: Any, arguments: dict[str, Any], ctx: Any, settings: Settings) -> Any:
    import mcp_types as types

    from .services import error_result

    try:
        structured, text = await run(backend, arguments, ctx)
    except CodeExecError as exc:
        result = error_result(exc)
        result.structured_content["type"] = "snapshots_error"
        return result
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content={"type": "snapshots_result", **structured}, is_error=False,
    )
