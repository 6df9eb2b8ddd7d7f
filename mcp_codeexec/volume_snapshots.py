"""Snapshots and forks of named-volume workspaces (quota mode ``none``; snapshots.py has the loop ones).

Without root beside the engine a workspace is a named Docker volume (``mcp-codeexec-<id>``), which
this process cannot read or write: the engine may be remote, or in a VM. So every copy is made by
the engine, in a short-lived helper container of the sandbox image: ``cp -a /src/. /dst/`` (links,
modes, owners and times kept; symbolic links are copied as links, never followed) with the source
volume mounted read-only, then ``du`` for the size. The helper is as confined as a sandbox: no
network, read-only root, ``no-new-privileges``, every capability dropped except the three ``cp -a``
needs as root (CHOWN, DAC_OVERRIDE, FOWNER: files the sandbox made unreadable to itself are still
copied), the sandbox's runtime, bounded memory and pids. It sees only the two volumes.

A running source is paused (the cgroup freezer: ``docker pause``) while it is copied, so no
process writes mid-copy, and always resumed. A snapshot is a volume ``mcp-codeexec-snap-<token>``
labelled as a snapshot, not as a sandbox workspace: the reaper and ``containers prune --all`` (which
remove workspaces by the sandbox labels) never touch it; ``snapshots rm`` removes it. A new sandbox
from a snapshot or a fork gets its workspace volume (with the sandbox labels) filled the same way
before its container is made, and is otherwise a new sandbox: its own id, record and limits. No
copy-on-write here: a volume is copied file by file.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Any

import requests

from .errors import ContainerExpired, Unavailable

SNAP_PREFIX = "mcp-codeexec-snap-"
L_SNAPSHOT = "io.mcp-codeexec.snapshot"
L_SNAPSHOT_INSTALL = "io.mcp-codeexec.snapshot-install"
L_HELPER = "io.mcp-codeexec.copy-helper"
COPY_SECONDS = 3600
SCRIPT = "cp -a /src/. /dst/ && du -sk /dst | cut -f1"


def _docker_errors() -> Any:
    import docker.errors

    return docker.errors


def copy(manager: Any, src: str, dst: str) -> int:
    """Copy volume ``src`` into volume ``dst`` (existing) with a helper container; the KiB ``du``
    counts in ``dst``, as bytes."""
    from docker.types import Mount

    errors = _docker_errors()
    s = manager.settings
    helper = None
    try:
        helper = manager.client.containers.create(
            manager.image, entrypoint=["/bin/sh", "-c", SCRIPT], command=[], user="0:0",
            name=f"mcp-codeexec-copy-{secrets.token_hex(6)}", labels={L_HELPER: manager.install},
            network_mode="none", read_only=True, cap_drop=["ALL"], cap_add=["CHOWN", "DAC_OVERRIDE", "FOWNER"],
            security_opt=["no-new-privileges:true"], runtime=s.runtime, mem_limit=256 * 1024**2, pids_limit=64,
            nano_cpus=int(min(s.cpus, 1.0) * 1e9), working_dir="/",
            mounts=[Mount("/src", src, type="volume", read_only=True), Mount("/dst", dst, type="volume", no_copy=True)],
        )
        helper.start()
        status = helper.wait(timeout=COPY_SECONDS)
        out = helper.logs(stdout=True, stderr=False).decode(errors="replace").strip()
        err = helper.logs(stdout=False, stderr=True).decode(errors="replace").strip()
        if status.get("StatusCode") != 0:
            raise Unavailable(f"copying workspace volume {src} failed: {err[-500:] or status}")
        try:
            return int(out.splitlines()[-1]) * 1024
        except (IndexError, ValueError):
            return 0
    except (errors.DockerException, requests.exceptions.RequestException) as exc:  # a refusal or a timeout
        raise Unavailable(f"copying workspace volume {src}: {exc}") from exc
    finally:
        if helper is not None:
            with contextlib.suppress(errors.DockerException):
                helper.remove(force=True)


def _paused(manager: Any, cid: str) -> contextlib.AbstractContextManager[None]:
    """Freeze sandbox ``cid``'s processes while its workspace is copied (nothing when it is not running)."""
    from .engines.docker import NAME_PREFIX

    errors = _docker_errors()

    @contextlib.contextmanager
    def paused() -> Any:
        try:
            container = manager.client.containers.get(NAME_PREFIX + cid)
        except errors.NotFound:
            container = None
        if container is None or container.status != "running":
            yield
            return
        try:
            container.pause()
        except errors.APIError as exc:
            raise Unavailable(f"pausing sandbox {cid} for a consistent copy failed: {exc}") from exc
        try:
            yield
        finally:
            for attempt in range(5):  # a paused sandbox would hang its session: never leave it so
                try:
                    container.unpause()
                    break
                except errors.APIError:
                    if attempt == 4:
                        raise

    return paused()


def workspace_volume(manager: Any, cid: str) -> str:
    from .engines.docker import NAME_PREFIX

    name = NAME_PREFIX + cid
    try:
        manager.client.volumes.get(name)
    except _docker_errors().NotFound:
        raise ContainerExpired(cid, "its workspace volume is gone") from None
    return name


def quiesced_copy(manager: Any, cid: str, dst: str) -> int:
    """Copy sandbox ``cid``'s workspace volume into volume ``dst``, the sandbox paused meanwhile."""
    with _engine_errors(f"copying sandbox {cid}'s workspace"):
        src = workspace_volume(manager, cid)
        with _paused(manager, cid):
            return copy(manager, src, dst)


@contextlib.contextmanager
def _engine_errors(doing: str) -> Any:
    """The engine's refusals and timeouts as ``unavailable`` (errors.py's codes), with what was being done."""
    try:
        yield
    except (_docker_errors().DockerException, requests.exceptions.RequestException) as exc:
        raise Unavailable(f"{doing}: {exc}") from exc


def save(manager: Any, cid: str, name: str) -> tuple[str, int]:
    """A new snapshot volume holding sandbox ``cid``'s workspace: (volume name, bytes used)."""
    volume = SNAP_PREFIX + secrets.token_hex(8)
    with _engine_errors("making a snapshot volume"):
        made = manager.client.volumes.create(volume, labels={L_SNAPSHOT: name, L_SNAPSHOT_INSTALL: manager.install})
    try:
        return volume, quiesced_copy(manager, cid, volume)
    except BaseException:
        with contextlib.suppress(_docker_errors().DockerException):
            made.remove(force=True)
        raise


def remove(client: Any, volume: str) -> None:
    with _engine_errors(f"removing snapshot volume {volume}"), contextlib.suppress(_docker_errors().NotFound):
        client.volumes.get(volume).remove(force=True)


def fill(manager: Any, mount: Any, source: Any) -> None:
    """Make the new sandbox's workspace volume ``mount`` names (with its labels) and fill it from
    ``source``: a snapshot volume name (``str``) or ``("fork", cid)``."""
    labels = ((mount.get("VolumeOptions") or {}).get("Labels")) or {}
    if isinstance(source, str):  # mounting a missing volume would make an empty one: say so instead
        with _engine_errors("looking up a snapshot volume"):
            try:
                manager.client.volumes.get(source)
            except _docker_errors().NotFound:
                raise Unavailable(f"the snapshot's volume {source} is gone (removed outside mcp-codeexec)") from None
    with _engine_errors("making a workspace volume"):
        made = manager.client.volumes.create(mount["Source"], labels=labels)
    try:
        if isinstance(source, tuple):
            quiesced_copy(manager, source[1], mount["Source"])
        else:
            copy(manager, source, mount["Source"])
    except BaseException:
        with contextlib.suppress(_docker_errors().DockerException):
            made.remove(force=True)
        raise
