"""Host folders in a sandbox (opt-in): parsing, host-side checks, and the staged bind mounts.

A mount spec is ``HOST[:SANDBOX_PATH][:ro|rw]`` (read-only unless ``rw``). ``check_mount``
resolves ``HOST`` on the host (symlinks, ``..``) and refuses anything outside the operator's
``allowed_mount_roots`` and the paths no sandbox may see (``/``, ``/proc``, ``/sys``, ``/dev``,
the Docker socket and data root, this server's data directory).

How a checked folder reaches the container (``StagedMounts``, Linux and root, the usual engine
host): the folder is opened once (``O_PATH|O_NOFOLLOW``), the opened directory's real path is
checked again, and a detached clone of exactly that directory is made from the descriptor
(``open_tree``), marked private, nosuid, nodev (and read-only for ``ro``) and attached under
``<data>/mounts/<sandbox>/<n>``; Docker binds that staging point. A rename or symlink swap on the
host after the check changes nothing: the bind holds the directory, not its name, and the kernel
confines every lookup to it. For ``rw`` the clone is an idmapped mount (``MOUNT_ATTR_IDMAP``,
Linux 5.12+): the folder owner's uid/gid appear as the sandbox user 1000 inside and files the
sandbox writes are the folder owner's on the host, while the sandbox keeps running as uid 1000
(its own /workspace stays its own). gVisor (runsc) does not accept idmapped mounts, so ``rw`` is
refused there. Where the staging cannot be done (not root), an ``ro`` mount falls back to a plain
read-only bind of the resolved path and ``rw`` is refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

SANDBOX_ROOTS = ("/workspace/", "/mnt/")
"""Where a mount may appear inside the sandbox."""
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock")
DENIED_TREES = ("/proc", "/sys", "/dev", "/var/lib/docker", "/var/lib/containerd", "/run/docker", "/run/containerd")
SANDBOX_UID = 1000
_SPEC_MODE = re.compile(r"^(.*?)(?::(ro|rw))?$")


class MountError(ValueError):
    """A mount spec that is malformed or not allowed; the message says which and why."""


@dataclass(frozen=True)
class MountSpec:
    host: str
    target: str | None
    rw: bool


@dataclass(frozen=True)
class ResolvedMount:
    """A checked mount: the resolved host directory, where it appears, and its owner."""

    host: str
    target: str
    rw: bool
    uid: int
    gid: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResolvedMount:
        return cls(str(data["host"]), str(data["target"]), bool(data["rw"]), int(data["uid"]), int(data["gid"]))


def parse_spec(text: str) -> MountSpec:
    """``HOST[:SANDBOX_PATH][:ro|rw]``."""
    text = text.strip()
    match = _SPEC_MODE.match(text)
    assert match is not None
    rest, mode = match.group(1), match.group(2)
    host, sep, target = rest.partition(":")
    if not host:
        raise MountError(f"mount {text!r}: expected HOST[:SANDBOX_PATH][:ro|rw]")
    if sep and not target:
        raise MountError(f"mount {text!r}: empty SANDBOX_PATH")
    if ":" in target:
        raise MountError(f"mount {text!r}: expected HOST[:SANDBOX_PATH][:ro|rw] (mode is ro or rw)")
    return MountSpec(host, target or None, mode == "rw")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _denied(resolved: str, data_dir: Path | None) -> str | None:
    """Why ``resolved`` may not be mounted, or None."""
    if resolved == "/":
        return "the host's root directory"
    for sock in DOCKER_SOCKETS:
        real = os.path.realpath(sock)
        if _inside(real, resolved) or _inside(resolved, real):
            return f"the Docker socket {sock} (or a folder holding it)"
    for tree in DENIED_TREES:
        real = os.path.realpath(tree)
        if _inside(resolved, real) or _inside(real, resolved):
            return f"{tree} (or a folder holding it)"
    if data_dir is not None:
        real = os.path.realpath(data_dir)
        if _inside(resolved, real) or _inside(real, resolved):
            return f"the server's data directory {data_dir} (or a folder holding it)"
    return None


def _target(spec: MountSpec, resolved: str) -> str:
    name = spec.target or f"/workspace/{PurePosixPath(resolved).name}"
    if not name.startswith("/") or ".." in PurePosixPath(name).parts:
        raise MountError(f"mount {spec.host}: sandbox path {name!r} must be absolute, without '..'")
    norm = os.path.normpath(name)
    if not any(norm.startswith(root) and len(norm) > len(root) for root in SANDBOX_ROOTS):
        raise MountError(f"mount {spec.host}: sandbox path {norm!r} must be below /workspace/ or /mnt/")
    return norm


def check_mount(spec: MountSpec, allowed_roots: Iterable[Path | str], data_dir: Path | None = None) -> ResolvedMount:
    """Resolve ``spec.host`` on this host and check it; raises MountError with the reason."""
    roots = [os.path.realpath(os.path.expanduser(str(r))) for r in allowed_roots]
    if not roots:
        raise MountError(
            f"mount {spec.host}: no host folder may be mounted until the operator lists allowed roots "
            "(allowed_mount_roots / MCP_CODEEXEC_ALLOWED_MOUNT_ROOTS)"
        )
    given = os.path.expanduser(spec.host)
    if not os.path.isabs(given):
        raise MountError(f"mount {spec.host}: the host path must be absolute")
    resolved = os.path.realpath(given)
    if not os.path.isdir(resolved):
        raise MountError(f"mount {spec.host}: {resolved} is not a directory")
    why = _denied(resolved, data_dir)
    if why:
        raise MountError(f"mount {spec.host}: {why} is never mounted into a sandbox")
    for root in roots:
        if root == "/":
            raise MountError("allowed_mount_roots: '/' may not be an allowed root")
    if not any(_inside(resolved, root) for root in roots):
        raise MountError(
            f"mount {spec.host}: {resolved} is outside the allowed mount roots ({', '.join(roots)})"
        )
    st = os.stat(resolved)
    return ResolvedMount(resolved, _target(spec, resolved), spec.rw, st.st_uid, st.st_gid)


def resolve_all(
    specs: Iterable[str], allowed_roots: Iterable[Path | str], data_dir: Path | None, runtime: str | None
) -> list[ResolvedMount]:
    """Check every spec (config time); targets must be distinct and not nested."""
    roots = list(allowed_roots)
    found = [check_mount(parse_spec(s), roots, data_dir) for s in specs]
    targets = [m.target for m in found]
    for i, a in enumerate(targets):
        for b in targets[i + 1:]:
            if _inside(a, b) or _inside(b, a):
                raise MountError(f"mounts: sandbox paths {a} and {b} overlap")
    if runtime == "runsc" and any(m.rw for m in found):
        raise MountError("mounts: rw mounts need idmapped mounts, which gVisor (runtime runsc) does not support; use ro")
    return found


def encode(mounts: Iterable[ResolvedMount]) -> str:
    return json.dumps([m.to_json() for m in mounts], separators=(",", ":"))


def decode(text: str | None) -> list[ResolvedMount]:
    if not text:
        return []
    return [ResolvedMount.from_json(d) for d in json.loads(text)]


# ---------------------------------------------------------------------------------------------
# staging: the new mount API through ctypes (x86_64 and arm64 share these syscall numbers)

_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 1, 0o2000000
_AT_EMPTY_PATH, _AT_FDCWD = 0x1000, -100
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV, _MOUNT_ATTR_IDMAP = 0x1, 0x2, 0x4, 0x100000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _syscall(number: int, *args: Any) -> int:
    result = _libc().syscall(number, *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def staging_supported() -> bool:
    return sys.platform == "linux" and hasattr(os, "geteuid") and os.geteuid() == 0


def _userns_fd(host_uid: int, host_gid: int) -> int:
    """A user namespace whose id H maps to the sandbox's 1000: as an idmapped mount's idmapping, a
    file the folder owner H owns appears as 1000 and one 1000 creates is stored as H."""
    me = os.readlink("/proc/self/ns/user")
    proc = subprocess.Popen(["unshare", "--user", "--", "sleep", "30"], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{proc.pid}/ns/user") == me:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise OSError(errno.EPERM, "could not create a user namespace (unshare --user)")
            time.sleep(0.002)
        Path(f"/proc/{proc.pid}/uid_map").write_text(f"{host_uid} {SANDBOX_UID} 1\n")
        Path(f"/proc/{proc.pid}/setgroups").write_text("deny")
        Path(f"/proc/{proc.pid}/gid_map").write_text(f"{host_gid} {SANDBOX_UID} 1\n")
        return os.open(f"/proc/{proc.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        proc.kill()
        proc.wait()


def _is_mount(path: Path) -> bool:
    """Whether ``path`` is a mount point (a bind of the same filesystem included, which
    ``os.path.ismount`` cannot tell from a plain directory)."""
    target = os.path.realpath(path).encode().decode("unicode_escape")
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return os.path.ismount(path)
    # Field 5 is the mount point, with spaces and the like octal-escaped (\040).
    return any(len(f := line.split(" ")) > 4 and f[4].encode().decode("unicode_escape") == target for line in lines)


class StagedMounts:
    """The per-sandbox staging points under ``root`` (``<data>/mounts/<cid>/<n>``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def point(self, cid: str, index: int) -> Path:
        return self.root / cid / str(index)

    def ensure(self, cid: str, mounts: list[ResolvedMount], allowed_roots: Iterable[Path | str],
               data_dir: Path | None) -> list[str]:
        """Stage each mount of ``cid`` not staged yet (a host reboot drops them); return the
        sources Docker binds. Re-checks each recorded host path against today's allowed roots."""
        roots = list(allowed_roots)
        sources = []
        for index, mount in enumerate(mounts):
            if not staging_supported():
                if mount.rw:
                    raise MountError(f"mount {mount.host}: rw mounts need root on the engine's host (idmapped mounts)")
                check_mount(MountSpec(mount.host, mount.target, False), roots, data_dir)
                sources.append(mount.host)
                continue
            point = self.point(cid, index)
            if not _is_mount(point):
                self._stage(mount, point, roots, data_dir)
            sources.append(str(point))
        return sources

    def _stage(self, mount: ResolvedMount, point: Path, roots: list[Path | str], data_dir: Path | None) -> None:
        point.mkdir(parents=True, exist_ok=True)
        os.chmod(point.parent, 0o700)
        fd = os.open(mount.host, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            # The check that counts is on what was opened: a name swapped since config time is caught here.
            real = os.readlink(f"/proc/self/fd/{fd}")
            if real != mount.host:
                raise MountError(f"mount {mount.host}: it now resolves to {real}; refused")
            check_mount(MountSpec(real, mount.target, mount.rw), roots, data_dir)
            tree = _syscall(_SYS_OPEN_TREE, fd, b"", _AT_EMPTY_PATH | _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC)
        finally:
            os.close(fd)
        userns = -1
        try:
            flags = _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV | (0 if mount.rw else _MOUNT_ATTR_RDONLY)
            attr = _MountAttr(flags, 0, _MS_PRIVATE, 0)
            _syscall(_SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr))
            if mount.rw:
                userns = _userns_fd(mount.uid, mount.gid)
                idmap = _MountAttr(_MOUNT_ATTR_IDMAP, 0, 0, userns)
                try:
                    _syscall(_SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH, ctypes.byref(idmap), ctypes.sizeof(idmap))
                except OSError as exc:
                    raise MountError(
                        f"mount {mount.host}: this kernel or filesystem refuses idmapped mounts ({exc.strerror}); "
                        "rw mounts need them so files stay the folder owner's"
                    ) from exc
            _syscall(_SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, str(point).encode(), _MOVE_MOUNT_F_EMPTY_PATH)
        finally:
            os.close(tree)
            if userns >= 0:
                os.close(userns)

    def release(self, cid: str) -> None:
        """Detach and remove ``cid``'s staging points (no-op when there are none)."""
        folder = self.root / cid
        if not folder.is_dir():
            return
        for point in folder.iterdir():
            while _is_mount(point):
                if _libc().umount2(str(point).encode(), _MNT_DETACH) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"umount {point}: {os.strerror(err)}")
            with contextlib.suppress(OSError):
                point.rmdir()
        with contextlib.suppress(OSError):
            folder.rmdir()

    def staged(self) -> list[str]:
        """Sandbox ids that have staging points."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name.startswith("container_"))


__all__ = ["MountError", "MountSpec", "ResolvedMount", "StagedMounts", "check_mount", "decode", "encode",
           "parse_spec", "resolve_all"]
