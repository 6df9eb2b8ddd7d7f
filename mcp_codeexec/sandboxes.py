"""Sandbox container lifecycle on a Docker engine: create, find again, quota volumes, reap.

Everything here is synchronous (docker-py and subprocess) and is called through
``anyio.to_thread`` by ``backends.docker``. Docker-py errors are translated into the project's
error family by ``translate_docker_errors``, the one choke point for foreign errors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import Mount, Ulimit

from .config import Settings
from .errors import ContainerExpired, Unavailable
from .image import image_tag

log = logging.getLogger(__name__)

LABEL = "io.mcp-codeexec"
L_MANAGED = f"{LABEL}.managed"
L_ID = f"{LABEL}.id"
L_CREATED = f"{LABEL}.created"
L_EXPIRES = f"{LABEL}.expires"
L_OWNER = f"{LABEL}.owner"
L_POOL = f"{LABEL}.pool"
L_QUOTA = f"{LABEL}.quota"
L_INSTALL = f"{LABEL}.install"
L_SERVER = f"{LABEL}.server"
NAME_PREFIX = "mcp-codeexec-"
WORKSPACE = "/workspace"
POOL_OWNER = ""


FOREIGN_EXPIRY_GRACE = timedelta(days=1)
"""How long past its expiry another installation's sandbox is left to that installation's reaper."""
# A workspace or owner record with no container is left alone this long: a create may be between
# making the workspace and starting its container. Measured from the file's mtime, which a
# still-mounted loop image moves whenever its journal commits (every ~5 s after a write).
ORPHAN_GRACE_SECONDS = 120.0


def installation_label(data_dir: Path) -> str:
    """Which data directory (file store, workspaces) a container belongs to."""
    import hashlib

    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]


SERVER_TAG = f"{socket.gethostname()}:{os.getpid()}:{time.time():.0f}"
"""Identifies this server process; a pool container whose server process is gone is a leftover."""


def server_alive(tag: str) -> bool:
    host, _, rest = tag.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's server: not ours to judge
    if tag == SERVER_TAG:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = _process_state(int(pid))
    if proc is not None:
        state, start = proc
        if state == "Z":
            return False  # exited, not yet collected by its parent
        if started.isdigit() and start > int(started) + 5:
            return False  # the pid was reused: this process started after the server tagged it
    return True


def _process_state(pid: int) -> tuple[str, float] | None:
    """(state letter, start time in epoch seconds) of a process, from /proc; None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        with open("/proc/stat") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        return fields[0], boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def new_container_id() -> str:
    return "container_" + secrets.token_hex(12)


def is_valid_container_id(value: str) -> bool:
    return value.startswith("container_") and len(value) == 34 and all(c in "0123456789abcdef" for c in value[10:])


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@contextlib.contextmanager
def translate_docker_errors(what: str) -> Iterator[None]:
    """Turn docker-py / transport failures into ``Unavailable`` with an actionable message."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise Unavailable(
            f"{what}: the sandbox image is missing ({exc.explanation}). Build it with "
            "`mcp-codeexec image build` (add `--base debian` where Docker Hub is unreachable)."
        ) from exc
    except docker.errors.NotFound as exc:
        raise Unavailable(f"{what}: {exc.explanation}") from exc
    except docker.errors.APIError as exc:
        raise Unavailable(f"{what}: the Docker engine refused: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException, ConnectionError) as exc:
        raise Unavailable(
            f"{what}: the Docker engine is not reachable ({exc}). Start Docker (Docker Desktop, "
            "`sudo systemctl start docker`, or `dockerd`) and check with `mcp-codeexec doctor`."
        ) from exc


def connect(timeout: float = 30.0) -> docker.DockerClient:
    with translate_docker_errors("connecting to Docker"):
        from .doctor import local_docker_host  # DOCKER_HOST unset: docker context, Docker Desktop, colima, OrbStack...

        host = local_docker_host()
        client = docker.DockerClient(base_url=host, timeout=int(timeout)) if host else docker.from_env(timeout=int(timeout))
        client.ping()
        return client


@dataclass(frozen=True)
class SandboxRecord:
    """What the labels (and the ownership file) say about one sandbox container."""

    id: str
    docker_id: str
    created: datetime
    expires: datetime
    owner: str
    pool: bool
    quota: str
    status: str
    install: str
    server: str

    @property
    def expired(self) -> bool:
        return utcnow() >= self.expires


def record_of(container: Container, owners: OwnerRegistry) -> SandboxRecord:
    labels = container.labels
    cid = labels[L_ID]
    return SandboxRecord(
        id=cid,
        docker_id=container.id,
        created=datetime.fromtimestamp(float(labels[L_CREATED]), timezone.utc),
        expires=datetime.fromtimestamp(float(labels[L_EXPIRES]), timezone.utc),
        owner=labels.get(L_OWNER) or owners.get(cid) or POOL_OWNER,
        pool=labels.get(L_POOL) == "1",
        quota=labels.get(L_QUOTA, "none"),
        status=container.status,
        install=labels.get(L_INSTALL, ""),
        server=labels.get(L_SERVER, ""),
    )


class OwnerRegistry:
    """Each handed-out sandbox's owner and lifetime, one small JSON file per container, written
    atomically. Labels are immutable, so a pool container records its owner here when handed out;
    and the record outlives the container, so a sandbox whose container was removed behind our
    back (``docker container prune`` takes idle-stopped ones) can be rebuilt around its workspace."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def record(self, cid: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.root / f"{cid}.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("owner"), str) else None

    def get(self, cid: str) -> str | None:
        data = self.record(cid)
        return data["owner"] if data else None

    def set(self, cid: str, owner: str, *, created: float, expires: float, quota: str) -> None:
        data = {"owner": owner, "assigned": time.time(), "created": created, "expires": expires, "quota": quota}
        tmp = self.root / f".{cid}.{secrets.token_hex(4)}.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.root / f"{cid}.json")

    def revivable(self, cid: str) -> dict[str, Any] | None:
        """The record of a sandbox that may be rebuilt now: it has a lifetime and has not expired."""
        data = self.record(cid)
        if data is None or not isinstance(data.get("expires"), (int, float)) or not isinstance(data.get("created"), (int, float)):
            return None
        return data if time.time() < data["expires"] else None

    def forget(self, cid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / f"{cid}.json").unlink()


class QuotaVolumes:
    """Workspaces as loop-mounted ext4 images: a hard size and inode limit that works on any host
    filesystem (overlay2 on ext4 refuses ``--storage-opt size``). Needs root on the engine's host
    (the usual Linux setup); elsewhere ``mode`` is ``none`` and a plain named volume is used."""

    def __init__(self, root: Path, mode: str, install: str = "") -> None:
        self.root = root
        self.install = install
        self.mode = self.detect() if mode == "auto" else mode
        if self.mode == "loop":
            root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def detect() -> str:
        docker_host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        local = docker_host.startswith("unix://") and Path(docker_host[7:]).exists()
        if hasattr(os, "geteuid") and os.geteuid() == 0 and local and shutil.which("mkfs.ext4") and shutil.which("mount"):
            return "loop"
        return "none"

    def paths(self, cid: str) -> tuple[Path, Path]:
        return self.root / f"{cid}.img", self.root / f"{cid}.mnt"

    def create(self, cid: str, size_bytes: int) -> Mount:
        if self.mode != "loop":
            return Mount(WORKSPACE, f"{NAME_PREFIX}{cid}", type="volume", labels={L_MANAGED: "1", L_ID: cid, L_INSTALL: self.install})
        image, mnt = self.paths(cid)
        # ext4 metadata takes ~3%: size the image so the usable space is the promised size.
        with open(image, "wb") as fh:
            fh.truncate(size_bytes + size_bytes // 25)
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "root_owner=1000:1000,lazy_itable_init=1", str(image)])
        self.ensure_mounted(cid)
        return Mount(WORKSPACE, str(mnt), type="bind")

    def ensure_mounted(self, cid: str) -> None:
        if self.mode != "loop":
            return
        image, mnt = self.paths(cid)
        if os.path.ismount(mnt):
            return
        if not image.exists():
            raise ContainerExpired(cid, "its workspace image is gone")
        mnt.mkdir(exist_ok=True)
        # discard: blocks freed inside the sandbox are punched out of the sparse image, so deleting
        # a big file gives the host its disk back (without it the image keeps its high-water mark).
        _run(["mount", "-o", "loop,nosuid,nodev,discard", str(image), str(mnt)])

    def remove(self, cid: str) -> None:
        image, mnt = self.paths(cid)
        if os.path.ismount(mnt):
            _run(["umount", "-l", str(mnt)])
        with contextlib.suppress(OSError):
            mnt.rmdir()
        with contextlib.suppress(FileNotFoundError):
            image.unlink()

    def usage(self, cid: str) -> int | None:
        _, mnt = self.paths(cid)
        if self.mode != "loop" or not os.path.ismount(mnt):
            return None
        st = os.statvfs(mnt)
        return (st.f_blocks - st.f_bfree) * st.f_frsize


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise Unavailable(f"{argv[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}")


class SandboxManager:
    """Creates and finds sandbox containers. Synchronous; one instance per backend."""

    def __init__(self, settings: Settings, client: docker.DockerClient) -> None:
        self.settings = settings
        self.client = client
        self.image = settings.image or image_tag("full")
        self.owners = OwnerRegistry(settings.data_dir / "owners")
        self.install = installation_label(settings.data_dir)
        self.volumes = QuotaVolumes(settings.volumes_dir, settings.quota, self.install)
        self.orphan_grace = ORPHAN_GRACE_SECONDS

    def resolve_image(self) -> str:
        """The configured image, or the minimal one when only that is built."""
        with translate_docker_errors("checking the sandbox image"):
            for candidate in [self.image] + ([image_tag("minimal")] if not self.settings.image else []):
                try:
                    self.client.images.get(candidate)
                    self.image = candidate
                    return candidate
                except docker.errors.ImageNotFound:
                    continue
        raise Unavailable(
            f"the sandbox image {self.image} is not built. Build it with `mcp-codeexec image build` "
            "(or `mcp-codeexec image build --base debian` where Docker Hub is unreachable), "
            "or set MCP_CODEEXEC_AUTO_BUILD_IMAGE=true to build it on first use."
        )

    def create(self, owner: str, *, pool: bool = False) -> tuple[SandboxRecord, Container]:
        s = self.settings
        cid = new_container_id()
        now = time.time()
        labels = self._labels(cid, now, now + s.container_ttl_seconds, "" if pool else owner, pool)
        workspace = self.volumes.create(cid, s.disk_bytes)
        try:
            container = self._run(cid, labels, workspace)
        except BaseException:
            self._remove_quietly(cid)
            raise
        if not pool:
            self.owners.set(cid, owner, created=now, expires=now + s.container_ttl_seconds, quota=self.volumes.mode)
        return record_of(container, self.owners), container

    def revive(self, cid: str) -> tuple[SandboxRecord, Container] | None:
        """Rebuild the container of a handed-out, unexpired sandbox around its surviving workspace
        (same id, owner, lifetime and files); None when there is nothing to rebuild."""
        data = self.owners.revivable(cid)
        workspace = self._surviving_workspace(cid, data)
        if data is None or workspace is None:
            return None
        self.volumes.ensure_mounted(cid)
        labels = self._labels(cid, data["created"], data["expires"], data["owner"], False)
        try:
            container = self._run(cid, labels, workspace)
        except Unavailable:
            # Another server rebuilt it at the same moment (the name is taken): use theirs.
            with translate_docker_errors("looking up a sandbox"), contextlib.suppress(docker.errors.NotFound):
                container = self.client.containers.get(NAME_PREFIX + cid)
                if container.labels.get(L_ID) == cid and container.labels.get(L_INSTALL) == self.install:
                    return record_of(container, self.owners), container
            raise
        log.warning("sandbox %s: its container was removed behind the server's back; rebuilt around its workspace", cid)
        return record_of(container, self.owners), container

    def detached(self, present: set[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Sandboxes of this installation whose container is gone but which ``revive`` would
        rebuild on their next use: (id, owner record). ``present``: the ids of the containers that
        exist, when the caller has just listed them."""
        if present is None:
            present = {record.id for record, _ in self.list()}
        found = []
        for owner_file in sorted(self.owners.root.glob("container_*.json")):
            cid = owner_file.stem
            data = self.owners.revivable(cid)
            if cid not in present and data is not None and self._surviving_workspace(cid, data) is not None:
                found.append((cid, data))
        return found

    def _surviving_workspace(self, cid: str, record: dict[str, Any] | None) -> Mount | None:
        """The mount of ``cid``'s workspace if it is still there (in the mode it was made in)."""
        if record is None or record.get("quota") != self.volumes.mode:
            return None
        if self.volumes.mode == "loop":
            image, mnt = self.volumes.paths(cid)
            return Mount(WORKSPACE, str(mnt), type="bind") if image.exists() else None
        with translate_docker_errors("looking up a workspace volume"):
            try:
                self.client.volumes.get(NAME_PREFIX + cid)
            except docker.errors.NotFound:
                return None
        return Mount(WORKSPACE, NAME_PREFIX + cid, type="volume")

    def _labels(self, cid: str, created: float, expires: float, owner: str, pool: bool) -> dict[str, str]:
        return {
            L_MANAGED: "1",
            L_ID: cid,
            L_CREATED: f"{created:.3f}",
            L_EXPIRES: f"{expires:.3f}",
            L_OWNER: owner,
            L_POOL: "1" if pool else "0",
            L_QUOTA: self.volumes.mode,
            L_INSTALL: self.install,
            L_SERVER: SERVER_TAG,
        }

    def _run(self, cid: str, labels: dict[str, str], workspace: Mount) -> Container:
        """Create and start the hardened container of sandbox ``cid`` on ``workspace``."""
        s = self.settings
        kwargs: dict[str, Any] = dict(
            image=self.image,
            name=NAME_PREFIX + cid,
            detach=True,
            stdin_open=True,
            tty=False,
            user="1000:1000",
            network_mode="bridge" if s.network else "none",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={s.tmp_bytes},mode=1777"},
            shm_size=64 * 1024 * 1024,
            mounts=[workspace],
            working_dir=WORKSPACE,
            mem_limit=s.memory_bytes,
            memswap_limit=s.memory_bytes,
            nano_cpus=int(s.cpus * 1e9),
            pids_limit=s.pids_limit,
            ulimits=[Ulimit(name="nofile", soft=4096, hard=4096), Ulimit(name="core", soft=0, hard=0)],
            log_config={"type": "none"},
            hostname="sandbox",
            labels=labels,
            restart_policy={"Name": "no"},
        )
        if s.runtime:
            kwargs["runtime"] = s.runtime
        with translate_docker_errors("creating a sandbox"):
            container = self.client.containers.create(**kwargs)
            try:
                container.start()
                container.reload()
            except BaseException:
                with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                    container.remove(force=True)
                raise
        return container

    def find(self, cid: str) -> tuple[SandboxRecord, Container]:
        """The live container for ``cid``, started if it was stopped. Raises ContainerExpired."""
        if not is_valid_container_id(cid):
            raise ContainerExpired(cid, "it is not a container id issued by this server")
        with translate_docker_errors("looking up a sandbox"):
            try:
                container = self.client.containers.get(NAME_PREFIX + cid)
            except docker.errors.NotFound:
                revived = self.revive(cid)
                if revived is None:
                    raise ContainerExpired(cid) from None
                return revived
            if container.labels.get(L_MANAGED) != "1" or container.labels.get(L_ID) != cid:
                raise ContainerExpired(cid)
            if container.labels.get(L_INSTALL) != self.install:
                # Another data directory's sandbox: its principals are other people (a principal name
                # means something only within one installation) and its workspace and files are not ours.
                raise ContainerExpired(cid)
            try:
                record = record_of(container, self.owners)
            except (KeyError, ValueError, OverflowError):
                raise ContainerExpired(cid, "its labels are not a sandbox's") from None
            if record.expired:
                raise ContainerExpired(cid, "it expired at " + record.expires.isoformat())
            if container.status != "running":
                if record.quota == "loop":
                    self.volumes.ensure_mounted(cid)
                container.start()
                container.reload()
            return record_of(container, self.owners), container

    def stop(self, cid: str) -> None:
        """Stop an idle sandbox; its files stay, and ``find`` starts it again on its next call."""
        with translate_docker_errors("stopping a sandbox"):
            try:
                self.client.containers.get(NAME_PREFIX + cid).stop(timeout=2)
            except docker.errors.NotFound:
                pass

    def claim(self, record: SandboxRecord, owner: str) -> None:
        self.owners.set(record.id, owner, created=record.created.timestamp(), expires=record.expires.timestamp(),
                        quota=record.quota)

    def list(self, *, all_: bool = True) -> list[tuple[SandboxRecord, Container]]:
        with translate_docker_errors("listing sandboxes"):
            containers = self.client.containers.list(all=all_, filters={"label": f"{L_MANAGED}=1"}, ignore_removed=True)
        found = []
        for c in containers:
            if L_ID not in c.labels:
                continue
            try:
                found.append((record_of(c, self.owners), c))
            except (KeyError, ValueError, OverflowError) as exc:
                # Someone else's container wearing our label key: not ours to list, reap or crash on.
                log.warning("ignoring container %s: malformed %s labels (%s)", c.name, LABEL, exc)
        return found

    def remove_installation(self) -> list[str]:
        """Remove every sandbox of this data directory, expired or not (tests, `containers prune --all`)."""
        removed = []
        with translate_docker_errors("listing sandboxes"):
            containers = self.client.containers.list(all=True, filters={"label": f"{L_INSTALL}={self.install}"}, ignore_removed=True)
        for container in containers:
            self.remove(container.labels[L_ID])
            removed.append(container.labels[L_ID])
        if self.volumes.root.exists():
            for image in self.volumes.root.glob("container_*.img"):
                self._remove_quietly(image.stem)
        with translate_docker_errors("removing workspace volumes"):
            for volume in self.client.volumes.list(filters={"label": f"{L_INSTALL}={self.install}"}):
                with contextlib.suppress(docker.errors.APIError):
                    volume.remove(force=True)
        for owner_file in self.owners.root.glob("container_*.json"):
            self.owners.forget(owner_file.stem)
        return removed

    def remove(self, cid: str) -> None:
        with translate_docker_errors("removing a sandbox"):
            try:
                self.client.containers.get(NAME_PREFIX + cid).remove(force=True)
            except docker.errors.NotFound:
                pass
        self._remove_quietly(cid)

    def _remove_quietly(self, cid: str) -> None:
        """Remove what a sandbox left besides its container: workspace and ownership record."""
        self.volumes.remove(cid)
        if self.volumes.mode != "loop":
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                self.client.volumes.get(NAME_PREFIX + cid).remove(force=True)
        self.owners.forget(cid)

    def reap(self) -> list[str]:
        """Remove this installation's expired sandboxes, unassigned pool containers whose server
        process is gone, and workspaces whose container is gone. Never touches anything without
        our label. Another installation's (data directory's) sandbox is its own server's to reap;
        only one expired for over ``FOREIGN_EXPIRY_GRACE`` (its data directory deleted, say) goes."""
        removed = []
        known = set()
        now = utcnow()
        for record, _container in self.list():
            known.add(record.id)
            pool_leftover = record.pool and record.owner == POOL_OWNER and not server_alive(record.server)
            if record.install == self.install:
                expired = now >= record.expires
            else:
                expired = now >= record.expires + FOREIGN_EXPIRY_GRACE
            if expired or pool_leftover:
                self.remove(record.id)
                removed.append(record.id)
        # A workspace whose container is gone is kept while its sandbox is handed out and unexpired
        # (the next call rebuilds the container around it: see revive); otherwise it is released.
        if self.volumes.mode == "loop" and self.volumes.root.exists():
            for image in self.volumes.root.glob("container_*.img"):
                cid = image.stem
                if cid not in known and self.owners.revivable(cid) is None and time.time() - image.stat().st_mtime > self.orphan_grace:
                    self._remove_quietly(cid)
                    removed.append(cid)
        with translate_docker_errors("reaping volumes"):
            for volume in self.client.volumes.list(filters={"label": f"{L_MANAGED}=1"}):
                labels = volume.attrs.get("Labels") or {}
                cid = labels.get(L_ID)
                if labels.get(L_INSTALL, self.install) != self.install:
                    continue  # another installation's workspace: its owner record is not here to judge
                if cid and cid not in known and self.owners.revivable(cid) is None:
                    with contextlib.suppress(docker.errors.APIError):
                        volume.remove(force=True)
        # Ownership records of containers that are gone and cannot come back. Written only after
        # their container exists; the age guard covers a create racing this listing.
        for owner_file in self.owners.root.glob("container_*.json"):
            cid = owner_file.stem
            with contextlib.suppress(FileNotFoundError):
                if cid not in known and self.owners.revivable(cid) is None and time.time() - owner_file.stat().st_mtime > self.orphan_grace:
                    self.owners.forget(cid)
        return removed
