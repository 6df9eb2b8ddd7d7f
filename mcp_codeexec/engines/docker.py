"""The Docker engine: sandboxes as hardened containers; create, find again, quota volumes, reap.

Everything here but ``open_stream`` is synchronous (docker-py and subprocess) and is called through
``anyio.to_thread`` by the lifecycle (``backends.sandbox``). Docker-py errors are translated into
the project's error family by ``translate_docker_errors``, the one choke point for foreign errors.
This module is the only importer of ``docker`` on the serving path.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.abc
import anyio.to_thread
import docker
import docker.errors
import requests.exceptions
from anyio.abc import SocketStream
from docker.models.containers import Container
from docker.types import Mount, Ulimit

from ..config import Settings
from ..database import open_owner_registry
from ..errors import ContainerExpired, Unavailable
from ..image import DERIVED_LABEL, derived_tag, image_tag, is_bare_name
from ..mounts import ResolvedMount, StagedMounts, decode, encode, resolve_all
from .base import (  # noqa: F401 - re-exported: the names callers knew from ``sandboxes``
    POOL_KEEPALIVE_SECONDS,
    POOL_OWNER,
    POOL_SILENCE_SECONDS,
    SERVER_TAG,
    CreateTicket,
    Leases,
    SandboxRecord,
    installation_label,
    is_valid_container_id,
    new_container_id,
    server_alive,
    utcnow,
)

if TYPE_CHECKING:
    from ..checkpoint import Checkpointer
    from ..skills import SkillSet

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
L_SKILLS = f"{LABEL}.skills"
"""The container's skill set as the hosted ``container.skills`` (JSON), fixed at creation."""
L_SKILLS_IMAGE = f"{LABEL}.skills-image"
SKILLS_IMAGE_REPO = "mcp-codeexec-skills"
L_MOUNTS = f"{LABEL}.mounts"

# gVisor 2022 ignores PR_SET_DUMPABLE for /proc/<pid>/fd and checks the open against the file's
# owner instead: the agent's stdio pipes belong to the container's first user. Started as root,
# they are root's, so code running as 1000 cannot open /proc/1/fd/{0,1,2} (the host channel). The
# agent drops to 1000:1000 before anything else, emptying the capability bounding set first
# (SETPCAP), so nothing of root remains; runc honours the dumpable flag and starts as 1000.
GVISOR_START_CAPS = ("SETUID", "SETGID", "SETPCAP")


def _start_user(runtime: str | None) -> str:
    return "0:0" if runtime == "runsc" else "1000:1000"


NAME_PREFIX = "mcp-codeexec-"
IMAGE_PREFIX = "ws_"  # workspace image files: ws_<random token>.img
WORKSPACE = "/workspace"


MASKED_SYS_PATHS = ("/sys/block", "/sys/devices/virtual/block")
FOREIGN_EXPIRY_GRACE = timedelta(days=1)
"""How long past its expiry another installation's sandbox is left to that installation's reaper."""
# A workspace or owner record with no container is left alone this long: a create may be between
# making the workspace and starting its container. Measured from the file's mtime, which a
# still-mounted loop image moves whenever its journal commits (every ~5 s after a write).
ORPHAN_GRACE_SECONDS = 120.0


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
        from .docker_endpoints import (
            local_docker_host,  # DOCKER_HOST unset: docker context, Docker Desktop, colima, OrbStack...
        )

        host = local_docker_host()
        client = docker.DockerClient(base_url=host, timeout=int(timeout)) if host else docker.from_env(timeout=int(timeout))
        client.ping()
        return client


def record_of(container: Container, owners: OwnerRegistry) -> SandboxRecord:
    labels = container.labels
    cid = labels[L_ID]
    # Ownership has one source of truth: the owner label of a container created for a session, else
    # the owner record written when a pool container is handed out. A pool-born container with an
    # owner record is a session's sandbox like any other (labels are immutable: its pool label stays).
    owner = labels.get(L_OWNER) or owners.get(cid) or POOL_OWNER
    return SandboxRecord(
        id=cid,
        ref=container.id,
        created=datetime.fromtimestamp(float(labels[L_CREATED]), timezone.utc),
        expires=datetime.fromtimestamp(float(labels[L_EXPIRES]), timezone.utc),
        owner=owner,
        pool=labels.get(L_POOL) == "1" and owner == POOL_OWNER,
        quota=labels.get(L_QUOTA, "none"),
        status=container.status,
        install=labels.get(L_INSTALL, ""),
        server=labels.get(L_SERVER, ""),
        skills=_skills_label(labels.get(L_SKILLS)),
        image=labels.get(L_SKILLS_IMAGE, ""),
        mounts=labels.get(L_MOUNTS, ""),
    )


def _skills_label(raw: str | None) -> tuple[dict[str, str], ...]:
    try:
        items = json.loads(raw) if raw else []
    except ValueError:
        return ()
    return tuple(i for i in items if isinstance(i, dict)) if isinstance(items, list) else ()


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

    def set(self, cid: str, owner: str, *, created: float, expires: float, quota: str, extra: dict[str, Any] | None = None,
            mounts: str = "") -> None:
        data = {"owner": owner, "assigned": time.time(), "created": created, "expires": expires, "quota": quota, **(extra or {})}
        if mounts:
            data["mounts"] = mounts  # host folders, fixed at creation: a rebuilt container gets the same
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

    def ids(self) -> list[str]:
        """Every container with a record (the PostgreSQL registry overrides this and ``age``)."""
        return sorted(p.stem for p in self.root.glob("container_*.json"))

    def age(self, cid: str) -> float | None:
        """Seconds since the record was last written; None when there is none."""
        try:
            return time.time() - (self.root / f"{cid}.json").stat().st_mtime
        except FileNotFoundError:
            return None


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
        """``<cid>.img`` (a symlink to the image file, or the image itself when made before images
        were named by token) and ``<cid>.mnt``."""
        return self.root / f"{cid}.img", self.root / f"{cid}.mnt"

    def create(self, cid: str, size_bytes: int, fill: Callable[[Any], None] | None = None) -> Mount:
        """``fill``: writes the new image file (a Path) instead of mkfs, or in volume mode makes and
        fills the named volume the returned Mount names (a snapshot or a fork: snapshots.py)."""
        if self.mode != "loop":
            mount = Mount(WORKSPACE, f"{NAME_PREFIX}{cid}", type="volume", labels={L_MANAGED: "1", L_ID: cid, L_INSTALL: self.install})
            if fill is not None:
                fill(mount)
            return mount
        link, mnt = self.paths(cid)
        # The loop device's backing file path is what the kernel shows in /sys/block/loopN/loop/backing_file:
        # the image is named by a random token, unrelated to the container id, and found through
        # the ``<cid>.img`` symlink. The link is made first, so a crash leaves nothing unfindable.
        image = self.root / f"{IMAGE_PREFIX}{secrets.token_hex(16)}.img"
        os.symlink(image.name, link)
        if fill is not None:
            try:
                fill(image)
                self.ensure_mounted(cid)
            except BaseException:
                self.remove(cid)
                raise
            return Mount(WORKSPACE, str(mnt), type="bind")
        # ext4 metadata (inode tables, bitmaps, the journal) takes ~2.2% of a 5 GiB image: 3% of
        # padding keeps the usable space at least the promised size (the image is sparse, so the
        # padding costs no disk until metadata is written).
        with open(image, "wb") as fh:
            fh.truncate(size_bytes + size_bytes * 3 // 100)
        # A fresh sparse file reads as zeros, so nothing needs zeroing (lazy_*_init): an empty
        # workspace costs ~0.3 MiB of host disk instead of ~67 MiB (mostly the zeroed 64 MiB journal).
        # A 16 MiB journal bounds what a busy workspace's journal can ever allocate; the image never
        # grows, so no reserved GDT blocks (^resize_inode).
        # (Below 1 GiB mkfs's own journal is already smaller, and a 16 MiB one may not fit at all.)
        journal = ["-J", "size=16"] if size_bytes >= 2**30 else []
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^resize_inode", *journal,
              "-E", "root_owner=1000:1000,lazy_itable_init=1,lazy_journal_init=1", str(image)])
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
        # noinit_itable: the kernel does not zero the inode tables in the background either (the
        # sparse image's unwritten blocks already read as zeros).
        _run(["mount", "-o", "loop,nosuid,nodev,discard,noinit_itable", str(image.resolve()), str(mnt)])
        # mkfs.ext4's lost+found (root's, empty) would show in every workspace listing; fsck
        # recreates it should it ever need one.
        with contextlib.suppress(OSError):
            (mnt / "lost+found").rmdir()

    def remove(self, cid: str) -> None:
        link, mnt = self.paths(cid)
        if os.path.ismount(mnt):
            _run(["umount", "-l", str(mnt)])
        with contextlib.suppress(OSError):
            mnt.rmdir()
        if link.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                (self.root / os.readlink(link)).unlink()
        with contextlib.suppress(FileNotFoundError):
            link.unlink()

    def unlinked_images(self) -> list[Path]:
        """Token-named images no ``<cid>.img`` link points at (a create that died between the two)."""
        linked = {os.readlink(p) for p in self.root.glob("container_*.img") if p.is_symlink()}
        return [p for p in self.root.glob(f"{IMAGE_PREFIX}*.img") if p.name not in linked]

    def usage(self, cid: str) -> int | None:
        _, mnt = self.paths(cid)
        if self.mode != "loop" or not os.path.ismount(mnt):
            return None
        st = os.statvfs(mnt)
        return (st.f_blocks - st.f_bfree) * st.f_frsize


def _mtime(path: Path) -> float:
    """The newest mtime of a link and what it points at (a dangling link counts by itself)."""
    try:
        return max(path.lstat().st_mtime, path.stat().st_mtime)
    except FileNotFoundError:
        return path.lstat().st_mtime


def _skill_labels(entries: list[dict[str, str]], image: str) -> dict[str, str]:
    return {L_SKILLS: json.dumps(entries, separators=(",", ":")), L_SKILLS_IMAGE: image} if entries else {}


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise Unavailable(f"{argv[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}")


class DockerEngine:
    """Creates and finds sandbox containers (``engines.base.Engine``). Synchronous; one per backend."""

    name = "docker"
    stoppable = True
    # The attach stream is a local socket to dockerd: it breaks only when dockerd or the container
    # goes, and neither comes back under a running request, so a broken stream fails it at once.
    stream_resume_seconds = 0.0

    def __init__(self, settings: Settings, client: docker.DockerClient) -> None:
        self.settings = settings
        self.client = client
        self.image = settings.image or image_tag("full")
        self.owners = open_owner_registry(settings, settings.data_dir / "owners")  # PostgreSQL when replicas share one
        self.leases = Leases(settings.data_dir / "leases")
        self.install = installation_label(settings.data_dir)
        self.volumes = QuotaVolumes(settings.volumes_dir, settings.quota, self.install)
        self.orphan_grace = ORPHAN_GRACE_SECONDS
        self.staged = StagedMounts(settings.data_dir / "mounts")
        self._mounts: list[ResolvedMount] | None = None
        self.closing = threading.Event()
        self._creates = threading.Condition()
        self._active_creates = 0
        self._skills_images: dict[str, str] = {}
        self.checkpoints: Checkpointer | None = None  # set by the backend: restores idle checkpoints
        self._egress: Any = None

    @property
    def egress(self) -> Any:
        """The allow-list's networks and proxies (network = "allowlist"; see egress.py)."""
        if self._egress is None:
            from ..egress import Egress, Policy

            s = self.settings
            policy = Policy.from_settings(s.allow_hosts, s.mirrors, s.egress_network)
            self._egress = Egress(self.client, policy, self.install, s.egress_image)
        return self._egress

    @property
    def mounts(self) -> list[ResolvedMount]:
        """The operator's host folders, checked on first use (a manager that only finds, stops or
        removes sandboxes never needs them)."""
        if self._mounts is None:
            s = self.settings
            from ..mounts import MountError

            try:
                self._mounts = resolve_all(s.mounts, s.allowed_mount_roots, s.data_dir, s.runtime) if s.mounts else []
            except MountError as exc:
                raise Unavailable(str(exc)) from exc
        return self._mounts

    def drain_creates(self, timeout: float) -> bool:
        """At shutdown (after ``closing`` is set): wait for creates still running in worker threads
        to finish and remove what they made. False if some are still running after ``timeout``."""
        with self._creates:
            return self._creates.wait_for(lambda: self._active_creates == 0, timeout)

    def default_skills(self) -> SkillSet:
        """What a pool container carries: the folder skills (every sandbox has them)."""
        from ..skills import catalog_for

        return catalog_for(self.settings).folder_set()

    def skills_image(self, skills: SkillSet) -> str:
        """The sandbox image with ``skills`` baked in at /skills (built once per image and skill set).
        Part of the read-only root filesystem: writes fail with EROFS and no mount shows a host path."""
        if not skills.skills:
            return self.image
        with translate_docker_errors("building the skills image"):
            base_id = self.client.images.get(self.image).id
            # Per installation: its reaper removes the images it built without racing another's creates.
            key = hashlib.sha256(f"{base_id}\0{skills.digest}\0{self.install}".encode()).hexdigest()[:20]
            tag = f"{SKILLS_IMAGE_REPO}:{key}"
            if self._skills_images.get(key) == tag:
                return tag
            try:
                self.client.images.get(tag)
            except docker.errors.ImageNotFound:
                context = skills.build_context(self.image)
                try:
                    self.client.images.build(fileobj=io.BytesIO(context), custom_context=True, tag=tag, rm=True, forcerm=True,
                                             pull=False, labels={L_INSTALL: self.install})
                except docker.errors.BuildError as exc:
                    raise Unavailable(f"building the skills image failed: {exc.msg}") from exc
                log.info("built %s with skills %s", tag, ", ".join(s.name for s in skills.skills))
            self._skills_images[key] = tag
            return tag

    def checkpointer(self) -> Checkpointer:
        """Idle checkpoints with memory (runsc), restored by ``find``: see checkpoint.py."""
        from ..checkpoint import Checkpointer

        self.checkpoints = Checkpointer.for_engine(self.client, self.settings)
        return self.checkpoints

    def resolve_image(self) -> str:
        """The configured image, or the minimal one when only that is built."""
        wanted = self.settings.image
        candidates = [self.image] + ([image_tag("minimal")] if not wanted else [])
        if wanted and is_bare_name(wanted):
            candidates = [derived_tag(wanted), wanted]  # a name from `image build --name`, else a plain image name
        with translate_docker_errors("checking the sandbox image"):
            for candidate in candidates:
                try:
                    found = self.client.images.get(candidate)
                except docker.errors.ImageNotFound:
                    continue
                if wanted and is_bare_name(wanted) and candidate == derived_tag(wanted) and (found.labels or {}).get(DERIVED_LABEL) != wanted:
                    continue  # that tag was not made by `image build --name`
                self.image = candidate
                return candidate
        raise Unavailable(
            f"the sandbox image {self.image} is not built. Build it with `mcp-codeexec image build` "
            "(`mcp-codeexec serve` does that on start unless MCP_CODEEXEC_AUTO_BUILD_IMAGE=false)."
        )

    def create(self, owner: str, *, pool: bool = False, ticket: CreateTicket | None = None,
               skills: SkillSet | None = None,
               workspace_from: Callable[[Any], None] | None = None,
               extra_mounts: list[ResolvedMount] | None = None) -> tuple[SandboxRecord, Container]:
        """Make a sandbox. A create whose caller gave up (``ticket``) or whose server is shutting
        down (``closing``) removes what it made: no create outlives its server unowned."""
        s = self.settings
        skills = self.default_skills() if skills is None else skills
        image = self.skills_image(skills)
        cid = new_container_id()
        now = time.time()
        chosen = [*self.mounts, *(extra_mounts or [])]  # the operator's, plus named ones a client chose
        mounts = encode(chosen) if chosen else ""
        labels = self._labels(cid, now, now + s.container_ttl_seconds, "" if pool else owner, pool, mounts)
        labels.update(_skill_labels(skills.entries(), image))
        with self._creates:
            self._active_creates += 1
        try:
            if self.closing.is_set():
                raise Unavailable("the server is shutting down")
            workspace = self.volumes.create(cid, s.disk_bytes, workspace_from)
            try:
                container = self._run(cid, labels, workspace, image, pool=pool)
                if self.closing.is_set() or (ticket is not None and not ticket.deliver(cid)):
                    raise Unavailable("the server is shutting down" if self.closing.is_set() else "the call was cancelled")
            except BaseException:
                with contextlib.suppress(Unavailable):
                    self.remove(cid)
                raise
        finally:
            with self._creates:
                self._active_creates -= 1
                self._creates.notify_all()
        if not pool:
            self.owners.set(cid, owner, created=now, expires=now + s.container_ttl_seconds, quota=self.volumes.mode,
                            extra={"skills": skills.entries(), "image": image}, mounts=mounts)
        return record_of(container, self.owners), container

    def revive(self, cid: str) -> tuple[SandboxRecord, Container] | None:
        """Rebuild the container of a handed-out, unexpired sandbox around its surviving workspace
        (same id, owner, lifetime and files); None when there is nothing to rebuild."""
        data = self.owners.revivable(cid)
        workspace = self._surviving_workspace(cid, data)
        if data is None or workspace is None:
            return None
        self.volumes.ensure_mounted(cid)
        labels = self._labels(cid, data["created"], data["expires"], data["owner"], False, str(data.get("mounts") or ""))
        image = data.get("image") if isinstance(data.get("image"), str) else None
        if image:
            labels.update(_skill_labels(data.get("skills") or [], image))
        try:
            container = self._run(cid, labels, workspace, image)
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
        for cid in self.owners.ids():
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

    def _labels(self, cid: str, created: float, expires: float, owner: str, pool: bool, mounts: str = "") -> dict[str, str]:
        extra = {L_MOUNTS: mounts} if mounts else {}
        return {
            **extra,
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

    def _run(self, cid: str, labels: dict[str, str], workspace: Mount, image: str | None = None, *, pool: bool = False) -> Container:
        """Create and start the hardened container of sandbox ``cid`` on ``workspace``. A pool
        container is removed by the engine when its agent exits, which an unclaimed one does when
        its server is gone (see the agent's POOL_SILENCE): a killed server leaves no pool behind."""
        s = self.settings
        # The host's block devices are none of the sandbox's business: /sys/block/loopN/loop/backing_file
        # names every other sandbox's workspace image and the host's data directory (gVisor hides them already).
        masks = {path: "ro,nosuid,nodev,noexec,size=4k,mode=0555" for path in MASKED_SYS_PATHS}
        kwargs: dict[str, Any] = dict(
            image=image or self.image,
            name=NAME_PREFIX + cid,
            detach=True,
            stdin_open=True,
            tty=False,
            # Under gVisor the agent starts as root and drops to 1000 at once (see _start_user).
            user=_start_user(s.runtime),
            network_mode="bridge" if s.network is True else "none",
            cap_drop=["ALL"],
            cap_add=list(GVISOR_START_CAPS) if s.runtime == "runsc" else None,
            security_opt=["no-new-privileges:true"],
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={s.tmp_bytes},mode=1777", **masks},
            shm_size=64 * 1024 * 1024,
            mounts=[workspace, *self._host_mounts(cid, labels)],
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
        if pool:
            kwargs.update(auto_remove=True, environment={"CODEEXEC_POOL": "1", "CODEEXEC_POOL_SILENCE": f"{POOL_SILENCE_SECONDS:g}"})
        if s.runtime:
            kwargs["runtime"] = s.runtime
        if s.runtime == "runsc":
            kwargs["environment"] = {**kwargs.get("environment", {}), "CODEEXEC_DROP_ROOT": "1"}
        allowlist = s.network == "allowlist"
        if allowlist:  # its own internal network, proxy and proxy variables (removed with the sandbox)
            egress = self.egress.prepare(cid)
            kwargs.update(egress, environment={**kwargs.get("environment", {}), **egress["environment"]})
        with translate_docker_errors("creating a sandbox"):
            container = self.client.containers.create(**kwargs)
            try:
                container.start()
                if allowlist:
                    self.egress.seal(container)
                container.reload()
            except BaseException:
                with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                    container.remove(force=True)
                raise
        return container

    def _host_mounts(self, cid: str, labels: dict[str, str]) -> list[Mount]:
        """The host folders recorded in ``labels`` (fixed at creation), staged and checked again."""
        mounts = decode(labels.get(L_MOUNTS))
        if not mounts:
            return []
        from ..mounts import MountError

        s = self.settings
        try:
            sources = self.staged.ensure(cid, mounts, s.allowed_mount_roots, s.data_dir)
        except (MountError, OSError) as exc:
            raise Unavailable(f"mounting host folders into sandbox {cid}: {exc}") from exc
        return [Mount(m.target, src, type="bind", read_only=not m.rw, propagation="rprivate") for m, src in zip(mounts, sources)]

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
                self._host_mounts(cid, container.labels)  # staging points a host reboot dropped
                if self.checkpoints is not None:
                    self.checkpoints.start(container.id)  # from its idle checkpoint, memory and all, if it has one
                else:
                    container.start()
                if self.settings.network == "allowlist":
                    self.egress.resume(cid, container)
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
        """Hand a pool container to ``owner``. No reaper can take it meanwhile: a pool container is a
        leftover only when its server (this live one) is gone, and ``reap`` re-reads the owner
        record right before removing one."""
        extra = {"skills": list(record.skills), "image": record.image} if record.image else None
        self.owners.set(record.id, owner, created=record.created.timestamp(), expires=record.expires.timestamp(),
                        quota=record.quota, extra=extra, mounts=encode(self.mounts) if self.mounts else "")

    def list(self, *, all_: bool = True) -> list[tuple[SandboxRecord, Container]]:
        with translate_docker_errors("listing sandboxes"):
            containers = self.client.containers.list(all=all_, ignore_removed=True, filters={"label": f"{L_MANAGED}=1"})
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

    def remove_skills_images(self, min_age: float) -> list[str]:
        """This installation's skills images that no container uses and that are older than
        ``min_age`` seconds (a create may be between building one and starting its container)."""
        removed = []
        with translate_docker_errors("listing skills images"):
            used = {c.attrs.get("Config", {}).get("Image") for c in self.client.containers.list(all=True, ignore_removed=True, filters={"label": f"{L_MANAGED}=1"})}
            images = self.client.images.list(name=SKILLS_IMAGE_REPO, filters={"label": f"{L_INSTALL}={self.install}"})
        for image in images:
            created = datetime.fromisoformat(image.attrs["Created"][:26].rstrip("Z")).replace(tzinfo=timezone.utc)
            if (utcnow() - created).total_seconds() < min_age or used & set(image.tags):
                continue
            for tag in image.tags:
                with contextlib.suppress(docker.errors.APIError):
                    self.client.images.remove(tag, noprune=False)
                    removed.append(tag)
                    self._skills_images = {k: v for k, v in self._skills_images.items() if v != tag}
        return removed

    def remove_installation(self) -> list[str]:
        """Remove every sandbox of this data directory, expired or not (tests, `containers prune --all`)."""
        removed = []
        with translate_docker_errors("listing sandboxes"):
            containers = self.client.containers.list(all=True, ignore_removed=True, filters={"label": f"{L_INSTALL}={self.install}"})
        for container in containers:
            self.remove(container.labels[L_ID])
            removed.append(container.labels[L_ID])
        if self.volumes.root.exists():
            for image in self.volumes.root.glob("container_*.img"):
                self._remove_quietly(image.stem)
            for stray in self.volumes.unlinked_images():
                stray.unlink(missing_ok=True)
        with translate_docker_errors("removing workspace volumes"):
            for volume in self.client.volumes.list(filters={"label": f"{L_INSTALL}={self.install}"}):
                with contextlib.suppress(docker.errors.APIError):
                    volume.remove(force=True)
        for cid in self.owners.ids():
            self.owners.forget(cid)
        self.remove_skills_images(0)
        for cid in self.staged.staged():
            with contextlib.suppress(OSError):
                self.staged.release(cid)
        return removed

    def remove(self, cid: str) -> None:
        with translate_docker_errors("removing a sandbox"):
            try:
                self.client.containers.get(NAME_PREFIX + cid).remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: the engine is removing it already (AutoRemove)
                    raise
        if self.settings.network == "allowlist":
            self.egress.release(cid)
        self._remove_quietly(cid)

    def _remove_quietly(self, cid: str) -> None:
        """Remove what a sandbox left besides its container: workspace, ownership record, lease file."""
        with contextlib.suppress(OSError):
            self.staged.release(cid)
        self.volumes.remove(cid)
        if self.volumes.mode != "loop":
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                self.client.volumes.get(NAME_PREFIX + cid).remove(force=True)
        self.owners.forget(cid)
        self.leases.forget(cid)

    def last_used(self, cid: str, record: dict[str, Any] | None = None) -> float:
        """When a sandbox was last used by a session: its lease, else its hand-out, else its creation."""
        record = record if record is not None else self.owners.record(cid)
        times = [self.leases.last_used(cid) or 0.0]
        if record is not None:
            times += [float(record.get("assigned") or 0), float(record.get("created") or 0)]
        return max(times)

    def kept(self) -> dict[str, list[tuple[str, float, int]]]:
        """This installation's sandboxes that no server uses and whose container is stopped or gone,
        by owner, most recently used first: (id, last used, workspace bytes)."""
        found: dict[str, list[tuple[str, float, int]]] = {}
        present = set()
        candidates = []
        for record, _ in self.list():
            present.add(record.id)
            if record.install == self.install and record.owner != POOL_OWNER and record.status != "running":
                candidates.append((record.id, record.owner, None))
        candidates += [(cid, data["owner"], data) for cid, data in self.detached(present)]
        for cid, owner, data in candidates:
            if self.leases.in_use(cid):
                continue
            found.setdefault(owner, []).append((cid, self.last_used(cid, data), self.disk_bytes(cid)))
        for entries in found.values():
            entries.sort(key=lambda e: e[1], reverse=True)
        return found

    def disk_bytes(self, cid: str) -> int:
        """Host disk a workspace takes (loop images: allocated blocks of the sparse image)."""
        if self.volumes.mode != "loop":
            return 0
        try:
            return self.volumes.paths(cid)[0].stat().st_blocks * 512
        except FileNotFoundError:
            return 0

    def evict_kept(self) -> list[str]:
        """Per principal: keep the newest ``max_kept_sandboxes_per_principal`` stopped sandboxes within
        ``max_kept_disk_bytes_per_principal``; remove the least recently used beyond either."""
        s = self.settings
        removed = []
        for owner, entries in self.kept().items():
            total = 0
            for n, (cid, _, size) in enumerate(entries):
                total += size
                if n >= s.max_kept_sandboxes_per_principal or (n > 0 and total > s.max_kept_disk_bytes_per_principal):
                    log.info("evicting sandbox %s of %s: beyond the %d stopped sandboxes / %d bytes a principal keeps",
                             cid, owner, s.max_kept_sandboxes_per_principal, s.max_kept_disk_bytes_per_principal)
                    self.remove(cid)
                    removed.append(cid)
                    total -= size
        return removed

    def resumable(self, owner: str) -> list[str]:
        """``owner``'s unexpired sandboxes of this installation, most recently used first (the
        caller takes the first whose lease it gets)."""
        candidates = []
        for cid in self.owners.ids():
            data = self.owners.revivable(cid)
            if data is not None and data["owner"] == owner and not self.leases.in_use(cid):
                candidates.append((self.last_used(cid, data), cid))
        return [cid for _, cid in sorted(candidates, reverse=True)]

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
            # Only this installation's owner records say whether a pool-born container was handed
            # out: another installation's is judged by its own servers (unclaimed ones exit by
            # themselves when their server is gone), never here.
            pool_leftover = (record.install == self.install and record.pool and record.owner == POOL_OWNER
                             and not server_alive(record.server))
            if record.install == self.install:
                expired = now >= record.expires
            else:
                expired = now >= record.expires + FOREIGN_EXPIRY_GRACE
            if pool_leftover and self.owners.get(record.id) is not None:
                pool_leftover = False  # handed out since it was listed: a session's sandbox now
            if expired or pool_leftover:
                self.remove(record.id)
                removed.append(record.id)
        # A workspace whose container is gone is kept while its sandbox is handed out and unexpired
        # (the next call rebuilds the container around it: see revive); otherwise it is released.
        if self.volumes.mode == "loop" and self.volumes.root.exists():
            for image in self.volumes.root.glob("container_*.img"):
                cid = image.stem
                if cid not in known and self.owners.revivable(cid) is None and time.time() - _mtime(image) > self.orphan_grace:
                    self._remove_quietly(cid)
                    removed.append(cid)
            for stray in self.volumes.unlinked_images():
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - stray.lstat().st_mtime > self.orphan_grace:
                        stray.unlink()
        with translate_docker_errors("reaping volumes"):
            for volume in self.client.volumes.list(filters={"label": f"{L_MANAGED}=1"}):
                labels = volume.attrs.get("Labels") or {}
                cid = labels.get(L_ID)
                if labels.get(L_INSTALL, self.install) != self.install:
                    continue  # another installation's workspace: its owner record is not here to judge
                if cid and cid not in known and self.owners.revivable(cid) is None:
                    with contextlib.suppress(docker.errors.APIError):
                        volume.remove(force=True)
        for cid in self.staged.staged():  # host-folder staging points of sandboxes gone for good
            if (cid not in known and self.owners.revivable(cid) is None
                    and time.time() - _mtime(self.staged.root / cid) > self.orphan_grace):
                with contextlib.suppress(OSError):
                    self.staged.release(cid)
        removed += self.evict_kept()
        # Allow-list proxies and networks whose sandbox is gone, whatever this server's own network
        # mode: an allow-list server's leftovers are released by whichever server reaps next.
        from ..egress import sweep_leftovers

        sweep_leftovers(self.client, self.install)
        # Ownership records of containers that are gone and cannot come back. Written only after
        # their container exists; the age guard covers a create racing this listing.
        for cid in self.owners.ids():
            age = self.owners.age(cid)
            if cid not in known and self.owners.revivable(cid) is None and age is not None and age > self.orphan_grace:
                self.owners.forget(cid)
        # A skills image is kept while a container (running, stopped or revivable) may need it.
        if not self.detached(known):
            self.remove_skills_images(self.orphan_grace)
        return removed

    async def open_stream(self, record: SandboxRecord, handle: Container) -> tuple[anyio.abc.ByteStream, bool]:
        """The container's attach socket (PID 1's stdin/stdout, multiplexed by the engine)."""

        def attach() -> Any:
            with translate_docker_errors("attaching to a sandbox"):
                sock = self.client.api.attach_socket(handle.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
                return sock._sock  # the raw socket under docker-py's SocketIO

        raw = await anyio.to_thread.run_sync(attach, abandon_on_cancel=True)
        return await SocketStream.from_socket(raw), True


SandboxManager = DockerEngine
"""The name tests, the CLI and the bench know it by."""
