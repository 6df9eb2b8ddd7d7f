"""What ``mcp-codeexec containers ls | inspect`` show for sandboxes on the kubernetes backend.

The commands themselves (``containers_cli``) go through the engine interface (list, detached, stop,
remove, reap); only the rows are engine-specific, since a pod says different things than a Docker
container: its phase, node, runtime class, limits and workspace claim. A sandbox stopped idle has no
pod, only its claim: it is listed as ``stopped`` (its next call rebuilds the pod, files intact).
Disk use inside a pod is not known without running a command in it, so it is left unknown.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .config import Settings


def _quantity_bytes(text: str | None) -> int | None:
    if not text:
        return None
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    try:
        return int(text)
    except ValueError:
        return None


def _cpus(text: str | None) -> float | None:
    if not text:
        return None
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _repl(settings: Settings, cid: str, running: bool) -> dict[str, Any]:
    from .backends.sandbox import read_repl_marker

    marker = read_repl_marker(settings.data_dir, cid) or {}
    alive = bool(marker.get("alive")) and running
    return {"repl_state": alive, "idle_stop_seconds": marker.get("idle_stop_seconds") if alive else settings.idle_stop_seconds,
            "checkpointed": False}


def pod_row(row: Any, engine: Any, settings: Settings, record: Any, pod: dict[str, Any]) -> dict[str, Any]:
    """One sandbox pod as ``ls --json`` shows it (``row``: containers_cli._row, the common fields)."""
    spec = pod.get("spec") or {}
    (container, *_) = spec.get("containers") or [{}]
    claim = any("persistentVolumeClaim" in v for v in spec.get("volumes") or [] if v.get("name") == "workspace")
    status = record.status
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        status = "terminating"
    return row(
        engine, record.id, record.owner or "(pool)", record.created, record.expires, "pvc" if claim else "emptydir", None,
        status=status, runtime=spec.get("runtimeClassName") or "default", image=container.get("image"),
    ) | {"pool": record.pool, "this_data_dir": record.install == engine.install, "pod": record.ref,
         "namespace": engine.settings.namespace, "node": spec.get("nodeName"), "in_use": engine.leases.in_use(record.id)} | _repl(
        settings, record.id, record.status == "running"
    ) | {"services": [], "services_as_of_seconds": None}


def stopped_row(row: Any, engine: Any, settings: Settings, cid: str, data: dict[str, Any]) -> dict[str, Any]:
    """A sandbox whose pod is gone but whose claim is kept (stopped idle, evicted, deleted)."""
    return row(
        engine, cid, data["owner"], datetime.fromtimestamp(data["created"], UTC), datetime.fromtimestamp(data["expires"], UTC),
        "pvc", None, status="stopped", runtime=None, image=None,
    ) | {"pool": False, "this_data_dir": True, "pod": None, "namespace": engine.settings.namespace, "node": None,
         "in_use": engine.leases.in_use(cid)} | _repl(settings, cid, False) | {"services": [], "services_as_of_seconds": None}


def rows(row: Any, engine: Any, settings: Settings, *, all_instances: bool = False) -> list[dict[str, Any]]:
    pairs = engine.list(all_instances=all_instances)
    found = [pod_row(row, engine, settings, r, pod) for r, pod in pairs]
    found += [stopped_row(row, engine, settings, cid, data)
              for cid, data in engine.detached(present={r.id for r, _ in pairs if r.install == engine.install})]
    return found


def inspect(row: Any, engine: Any, settings: Settings, cid: str) -> dict[str, Any] | None:
    """Everything the API says about one sandbox of this installation; None when there is none."""
    pairs = [(r, pod) for r, pod in engine.list() if r.id == cid]
    claim = engine._read_pvc(cid) if engine.settings.storage_class else None
    if pairs:
        record, pod = pairs[0]
        data = pod_row(row, engine, settings, record, pod)
        spec = pod.get("spec") or {}
        (container, *_) = spec.get("containers") or [{}]
        limits = (container.get("resources") or {}).get("limits") or {}
        security = container.get("securityContext") or {}
        data.update(
            started_at=(pod.get("status") or {}).get("startTime"),
            limits={
                "cpus": _cpus(limits.get("cpu")),
                "memory_bytes": _quantity_bytes(limits.get("memory")),
                "pids": None,
                "network": "deny-all NetworkPolicy",
                "read_only_root": security.get("readOnlyRootFilesystem"),
                "cap_drop": (security.get("capabilities") or {}).get("drop"),
            },
            server=record.server,
        )
    else:
        stopped = dict(engine.detached(present=set()))
        if cid not in stopped:
            return None
        data = stopped_row(row, engine, settings, cid, stopped[cid])
        data.update(started_at=None, limits=None, server=None)
    if claim is not None:
        cstatus = claim.get("status") or {}
        data["claim"] = {"name": claim["metadata"]["name"], "phase": cstatus.get("phase"),
                         "storage_class": (claim.get("spec") or {}).get("storageClassName"),
                         "volume": (claim.get("spec") or {}).get("volumeName"),
                         "capacity_bytes": _quantity_bytes((cstatus.get("capacity") or {}).get("storage"))}
    return data
