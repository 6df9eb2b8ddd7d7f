"""Idle checkpoints with memory, like the hosted tool: under gVisor (``runtime = "runsc"``) an idle
sandbox whose Python interpreter holds state is checkpointed (``docker checkpoint create``: the
whole sandbox's memory, so the REPL's variables and the agent itself) and so stopped; its next call
starts it from the checkpoint (``docker start --checkpoint``) instead of cold. Where that fails the
container starts cold as before: files intact, the lost interpreter reported by the agent.

What this engine needs (Docker 20.10 + containerd 1.6 + runsc 2022, found by probing):
- dockerd with ``experimental: true`` (the checkpoint endpoints are experimental);
- a fresh checkpoint name each time, deleted once used (the engine keeps them with the container);
- a restore retried for a moment: right after the checkpoint the engine may still be cleaning up
  the old task ("id already in use", "content ... already exists");
- runsc 2022 leaves a *restored* sandbox's state file "paused" after its next checkpoint, although
  the sandbox process is gone; containerd then cannot delete the task and neither a restore nor a
  plain start works. ``_repair`` marks that dead sandbox "running" again so that runsc's own delete
  (``runsc delete --force``) can clean it up. This needs write access to runsc's state directory,
  i.e. a server running as root on the engine's host; without it checkpointing stays off.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import requests

from .config import Settings

log = logging.getLogger(__name__)

PREFIX = "codeexec-idle-"
# Where dockerd's runc-compatible shim keeps runsc's container state ("--root" of runsc).
RUNSC_ROOTS = (Path("/run/docker/runtime-runc/moby"), Path("/var/run/docker/runtime-runc/moby"))
DOCKER_CONTAINERS = Path("/var/lib/docker/containers")  # default checkpoint location, for the size
_RETRY_ERRORS = ("already exists", "already in use", "failed precondition")
RESTORE_TRIES = 20
RETRY_PAUSE = 0.25
EXIT_WAIT = 60.0  # a loaded machine can take its time to stop the sandbox after the image is written

_DockerFailure = (docker.errors.DockerException, requests.exceptions.RequestException, ConnectionError)


@dataclass(frozen=True)
class CheckpointStats:
    name: str
    seconds: float
    """From the request to the container being stopped."""
    size_bytes: int | None
    """The checkpoint image on disk (None when this server cannot read the engine's directory)."""


def runsc_root() -> Path | None:
    """runsc's state directory under dockerd, when this server may write to it."""
    for root in RUNSC_ROOTS:
        if root.is_dir() and os.access(root, os.W_OK | os.X_OK):
            return root
    return None


def unavailable_reason(info: Mapping[str, Any], settings: Settings) -> str | None:
    """Why idle sandboxes are not checkpointed on this engine (None: they are)."""
    runtime = settings.runtime or info.get("DefaultRuntime", "runc")
    if not settings.checkpoint_idle:
        return "turned off (checkpoint_idle = false)"
    if runtime != "runsc":
        return (f"the {runtime} runtime does not checkpoint here (only gVisor does: `--runtime runsc`; "
                "runc would need CRIU)")
    if not info.get("ExperimentalBuild"):
        return "the engine runs without experimental features (`docker checkpoint` needs dockerd `experimental: true`)"
    if runsc_root() is None:
        return ("this server cannot write runsc's state directory (" + ", ".join(map(str, RUNSC_ROOTS)) + "), which "
                "checkpointing a restored sandbox again needs (runsc 2022 leaves it 'paused'); run the server as root "
                "on the engine's host")
    return None


class CheckpointFailed(Exception):
    pass


class Checkpointer:
    """Checkpoint / restore of one engine's sandbox containers (blocking calls: run in a thread)."""

    def __init__(self, client: docker.DockerClient, *, enabled: bool, runsc_path: str = "runsc") -> None:
        self.client = client
        self.enabled = enabled
        """Idle sandboxes holding REPL state are checkpointed (restoring works whenever a checkpoint exists)."""
        self.runsc_path = runsc_path
        self.last: CheckpointStats | None = None

    @classmethod
    def for_engine(cls, client: docker.DockerClient, settings: Settings) -> Checkpointer:
        try:
            info = client.info()
        except _DockerFailure as exc:
            log.info("checkpoints: no `docker info` (%s); idle sandboxes are stopped", exc)
            return cls(client, enabled=False)
        reason = unavailable_reason(info, settings)
        if reason:
            log.info("idle checkpoints off: %s", reason)
        path = ((info.get("Runtimes") or {}).get("runsc") or {}).get("path") or "runsc"
        return cls(client, enabled=reason is None, runsc_path=path)

    # --- engine calls -------------------------------------------------------------------------

    def _url(self, path: str, *args: str) -> str:
        return self.client.api._url(path, *args)

    def names(self, container_id: str) -> list[str]:
        """This project's checkpoints of the container, oldest first."""
        try:
            response = self.client.api._get(self._url("/containers/{0}/checkpoints", container_id))
            self.client.api._raise_for_status(response)
            listed = response.json() or []
        except _DockerFailure:
            return []  # an engine without checkpoints (not experimental) or the container is gone
        return sorted(c["Name"] for c in listed if str(c.get("Name", "")).startswith(PREFIX))

    def discard(self, container_id: str) -> None:
        for name in self.names(container_id):
            try:
                self.client.api._raise_for_status(
                    self.client.api._delete(self._url("/containers/{0}/checkpoints/{1}", container_id, name)))
            except _DockerFailure as exc:
                log.warning("sandbox container %s: cannot delete checkpoint %s: %s", container_id[:12], name, exc)

    def memory_bytes(self, container_id: str) -> int | None:
        """The container's memory use less its page cache: about the size its checkpoint would be."""
        try:
            stats = self.client.api.stats(container_id, stream=False, one_shot=True).get("memory_stats") or {}
        except _DockerFailure:
            return None
        usage = stats.get("usage")
        if not isinstance(usage, int):
            return None
        detail = stats.get("stats") or {}
        return usage - int(detail.get("total_inactive_file", detail.get("inactive_file", 0)) or 0)

    def create(self, container_id: str) -> CheckpointStats:
        """Checkpoint the running container (id or name) with its memory; the engine stops it. Raises
        CheckpointFailed (the container may then still run: the caller stops it the ordinary way)."""
        name = f"{PREFIX}{time.time_ns()}"
        start = time.monotonic()
        try:
            container_id = self.client.api.inspect_container(container_id)["Id"]  # runsc's state is by id
            response = self.client.api._post_json(
                self._url("/containers/{0}/checkpoints", container_id), data={"CheckpointID": name, "Exit": True})
            self.client.api._raise_for_status(response)
            deadline = time.monotonic() + EXIT_WAIT
            while self.client.api.inspect_container(container_id)["State"]["Running"]:
                if time.monotonic() > deadline:
                    raise CheckpointFailed(f"the container still ran {EXIT_WAIT:g} s after its checkpoint")
                time.sleep(0.05)
        except _DockerFailure as exc:
            self.discard(container_id)
            raise CheckpointFailed(str(exc)) from exc
        except CheckpointFailed:
            self.discard(container_id)
            raise
        seconds = time.monotonic() - start
        self._repair(container_id)
        self.last = CheckpointStats(name, seconds, _size(container_id, name))
        return self.last

    def restore(self, container_id: str) -> bool:
        """Start the stopped container from its latest checkpoint; False (nothing restored, every
        checkpoint deleted, the container ready for a plain start) if there is none or it fails."""
        names = self.names(container_id)
        if not names:
            return False
        if _started_ns(self.client, container_id) > int(names[-1].removeprefix(PREFIX)):
            # It ran again since (started by something that did not restore it): that memory image
            # is older than its files now. Never restore it.
            log.warning("sandbox container %s: discarding checkpoint %s, older than the container's last start",
                        container_id[:12], names[-1])
            self.discard(container_id)
            return False
        error = ""
        try:
            for _ in range(RESTORE_TRIES):
                try:
                    response = self.client.api._post(self._url("/containers/{0}/start", container_id),
                                                     params={"checkpoint": names[-1]})
                    self.client.api._raise_for_status(response)
                    return True
                except docker.errors.APIError as exc:
                    error = str(exc.explanation or exc)
                    if not any(marker in error for marker in _RETRY_ERRORS):
                        break
                self._repair(container_id)
                time.sleep(RETRY_PAUSE)
            log.warning("sandbox container %s: restoring checkpoint %s failed (%s); starting it afresh",
                        container_id[:12], names[-1], error)
            self._repair(container_id)
            return False
        except _DockerFailure as exc:
            log.warning("sandbox container %s: restoring checkpoint %s failed (%s); starting it afresh",
                        container_id[:12], names[-1], exc)
            return False
        finally:
            self.discard(container_id)

    def start(self, container_id: str) -> bool:
        """Start a stopped sandbox container: from its checkpoint if it has one, else (or when that
        fails) afresh. True when it came back from a checkpoint. Raises docker's errors like a start."""
        if self.restore(container_id):
            return True
        for attempt in range(RESTORE_TRIES):
            try:
                self.client.api.start(container_id)
                return False
            except docker.errors.APIError as exc:
                if attempt == RESTORE_TRIES - 1 or not any(m in str(exc.explanation or exc) for m in _RETRY_ERRORS):
                    raise
            self._repair(container_id)
            time.sleep(RETRY_PAUSE)
        return False

    # --- runsc 2022 ---------------------------------------------------------------------------

    def _repair(self, container_id: str) -> None:
        """A dead sandbox that runsc still calls "paused" (after checkpointing a restored sandbox):
        mark it running so that ``runsc delete --force`` (and containerd's delete) can clean it up."""
        root = runsc_root()
        if root is None:
            return
        state = root / f"{container_id}_sandbox:{container_id}.state"
        try:
            text = state.read_text()
            data = json.loads(text)
        except (OSError, ValueError):
            return  # no state left: nothing to repair
        pid = (data.get("sandbox") or {}).get("pid") or 0
        if data.get("status") != "paused" or _alive(pid):
            return
        try:
            tmp = state.with_name(state.name + ".repair")
            tmp.write_text(text.replace('"status":"paused"', '"status":"running"', 1))
            tmp.replace(state)
            subprocess.run([self.runsc_path, "--root", str(root), "delete", "--force", container_id],
                           capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("sandbox container %s: cannot clean up runsc's stale state: %s", container_id[:12], exc)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _started_ns(client: docker.DockerClient, container_id: str) -> int:
    """When the container was last started (ns since the epoch; 0 if never or unknown)."""
    try:
        raw = client.api.inspect_container(container_id)["State"].get("StartedAt") or ""
    except _DockerFailure:
        return 0
    # "2026-12-01T23:29:27.420387731Z": Python parses at most microseconds.
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", raw)
    if not match:
        return 0
    base = datetime.fromisoformat(match[1] + ("+00:00" if match[3] == "Z" else match[3]))
    if base.year < 1970:
        return 0  # "0001-01-01T00:00:00Z": never started
    return int(base.timestamp()) * 10**9 + int((match[2] or "0")[:9].ljust(9, "0"))


def _size(container_id: str, name: str) -> int | None:
    directory = DOCKER_CONTAINERS / container_id / "checkpoints" / name
    try:
        return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    except OSError:
        return None
