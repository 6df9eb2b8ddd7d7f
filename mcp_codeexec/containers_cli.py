"""``mcp-codeexec containers ls | inspect | stop | rm | prune`` — the sandboxes from the command line.

The commands go through the configured engine (``--backend docker | kubernetes``, as ``serve``):
sandboxes are found by their labels (Docker: ``io.mcp-codeexec.*``; Kubernetes: the pods' and
claims' ``mcp-codeexec/*``), so this works whether or not a server is running. ``stop``, ``rm`` and
``prune`` are the engine's own stop, remove and reap; only what ``ls`` and ``inspect`` show is
engine-specific (Kubernetes rows: ``containers_k8s``). ``ls`` shows the sandboxes of this data
directory (``--all-data-dirs``: every mcp-codeexec sandbox on the engine, or in the namespace).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .config import Settings


def register_cli(subparsers: Any, get_settings: Callable[..., Settings]) -> argparse.ArgumentParser:
    containers = subparsers.add_parser(
        "containers",
        help="list, inspect, remove and prune sandbox containers",
        description="The sandbox containers (found by their Docker labels): age, expiry, owner, disk use.",
    )
    sub = containers.add_subparsers(dest="containers_command", metavar="COMMAND")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="the server's data directory (default: the configured one)")
        p.add_argument("--backend", choices=["docker", "kubernetes"], help="the engine (default: the configured backend)")
        p.add_argument("--kubeconfig", help="kubernetes backend: kubeconfig file (default: the configured one)")
        p.add_argument("--namespace", help="kubernetes backend: namespace of the sandbox pods")
        p.add_argument("--storage-class", help="kubernetes backend: the StorageClass of the workspace claims, if any")

    p = sub.add_parser("ls", help="list sandboxes: id, owner, age, expiry, status, runtime, disk use")
    p.add_argument("--json", action="store_true", help="one JSON array")
    p.add_argument("--all-data-dirs", action="store_true", help="every mcp-codeexec sandbox on the engine")
    common(p)
    p.set_defaults(func=lambda ns: _guard(lambda: _ls(ns, get_settings)))

    p = sub.add_parser("inspect", help="everything known about one sandbox, as JSON")
    p.add_argument("container_id", metavar="ID")
    common(p)
    p.set_defaults(func=lambda ns: _guard(lambda: _inspect(ns, get_settings)))

    p = sub.add_parser("stop", help="stop sandboxes (their files stay; the next call starts them again)")
    p.add_argument("container_ids", metavar="ID", nargs="+")
    common(p)
    p.set_defaults(func=lambda ns: _guard(lambda: _stop(ns, get_settings)))

    p = sub.add_parser("rm", help="remove sandboxes (container or pod, workspace, ownership record)")
    p.add_argument("container_ids", metavar="ID", nargs="+")
    common(p)
    p.set_defaults(func=lambda ns: _guard(lambda: _rm(ns, get_settings)))

    p = sub.add_parser("prune", help="remove expired and leftover sandboxes (--all: every one of this data dir)")
    p.add_argument("--all", action="store_true", help="remove every sandbox of this data directory, expired or not")
    p.add_argument("--yes", action="store_true", help="confirm --all")
    common(p)
    p.set_defaults(func=lambda ns: _guard(lambda: _prune(ns, get_settings)))
    return containers


# --------------------------------------------------------------------------- plumbing


def _err(message: str) -> None:
    print(f"mcp-codeexec: {message}", file=sys.stderr)


def _guard(action: Callable[[], int]) -> int:
    from .errors import CodeExecError

    try:
        return action()
    except CodeExecError as exc:
        _err(exc.message)
        return 1


def _settings(ns: argparse.Namespace, get_settings: Callable[..., Settings]) -> Settings:
    overrides = {"data_dir": ns.data_dir, "backend": getattr(ns, "backend", None), "kubeconfig": getattr(ns, "kubeconfig", None),
                 "k8s_namespace": getattr(ns, "namespace", None), "k8s_storage_class": getattr(ns, "storage_class", None)}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return get_settings(**overrides) if overrides else get_settings()


def _engine(ns: argparse.Namespace, get_settings: Callable[..., Settings]) -> tuple[Settings, Any]:
    """The settings and the engine they name (Docker: with a short connect timeout)."""
    from .errors import Unavailable

    settings = _settings(ns, get_settings)
    if settings.backend == "hosted":
        raise Unavailable("the hosted backend runs no local sandboxes (choose --backend docker or kubernetes)")
    if settings.backend == "docker":
        from .engines.docker import SandboxManager, connect

        return settings, SandboxManager(settings, connect(timeout=15))
    from .engines import build_engine

    return settings, build_engine(settings)


def _manager(ns: argparse.Namespace, get_settings: Callable[..., Settings]) -> Any:
    return _engine(ns, get_settings)[1]


def _row(manager: Any, cid: str, owner: str, created: datetime, expires: datetime, quota: str,
         usage: int | None, **rest: Any) -> dict[str, Any]:
    """One sandbox as `ls --json` shows it: the fields every sandbox has, then ``rest``."""
    now = datetime.now(UTC)
    return {
        "id": cid,
        "owner": owner,
        "created": created.isoformat().replace("+00:00", "Z"),
        "age_seconds": round((now - created).total_seconds()),
        "expires": expires.isoformat().replace("+00:00", "Z"),
        "expires_in_seconds": round((expires - now).total_seconds()),
        "expired": now >= expires,
        **rest,
        "quota": quota,
        # loop (Docker) and pvc (Kubernetes) are hard limits; a pvc's is what the claim asked for.
        "disk_limit_bytes": manager.settings.disk_bytes if quota in ("loop", "pvc") else None,
        "disk_used_bytes": usage,
    }


def _describe(manager: Any, record: Any, container: Any, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    from .engines.docker import NAME_PREFIX

    attrs = container.attrs or {}
    host_config = attrs.get("HostConfig") or {}
    usage = _mounted_usage(attrs) if record.quota == "loop" else None
    if usage is None and sizes is not None:
        usage = sizes.get(NAME_PREFIX + record.id)
    return _row(
        manager, record.id, record.owner or "(pool)", record.created, record.expires, record.quota, usage,
        status=record.status, runtime=host_config.get("Runtime") or "runc", image=(attrs.get("Config") or {}).get("Image"),
    ) | {"pool": record.pool, "this_data_dir": record.install == manager.install, "docker_id": record.ref[:12],
         "in_use": manager.leases.in_use(record.id)} | _repl(
        manager, record
    ) | _services(manager, record, attrs)


def _services(manager: Any, record: Any, attrs: dict[str, Any]) -> dict[str, Any]:
    """The services of a running sandbox as its server last recorded them (services.py says why
    the CLI does not ask the agent); none for a stopped one (they died with its container)."""
    from .services import read_record

    if record.status != "running":
        return {"services": [], "services_as_of_seconds": None}
    started = (attrs.get("State") or {}).get("StartedAt")
    try:
        started_at = datetime.fromisoformat(started).timestamp() if started else None
    except ValueError:
        started_at = None
    found = read_record(manager.settings.data_dir, record.id, started_at)
    if found is None:
        return {"services": [], "services_as_of_seconds": None}
    return {"services": found["services"], "services_as_of_seconds": found["as_of_seconds"]}


def _repl(manager: Any, record: Any) -> dict[str, Any]:
    """Whether the sandbox's Python interpreter holds state (recorded by the server that runs it) and
    the idle limit that applies to the sandbox."""
    from .backends.sandbox import read_repl_marker

    marker = read_repl_marker(manager.settings.data_dir, record.id) or {}
    alive = bool(marker.get("alive")) and record.status == "running"
    limit = marker.get("idle_stop_seconds") if alive else manager.settings.idle_stop_seconds
    return {"repl_state": alive, "idle_stop_seconds": limit, "checkpointed": _checkpointed(manager, record)}


def _checkpointed(manager: Any, record: Any) -> bool:
    """A stopped sandbox holding an idle checkpoint (its next call restores the interpreter's state)."""
    if record.status == "running" or not record.ref:
        return False
    from .checkpoint import Checkpointer

    return bool(Checkpointer(manager.client, enabled=False).names(record.ref))


def _describe_detached(manager: Any, cid: str, data: dict[str, Any]) -> dict[str, Any]:
    """A sandbox whose container was removed behind the server's back; its workspace is kept and
    the container is rebuilt on its next use."""
    mode = manager.volumes.mode
    return _row(
        manager, cid, data["owner"], datetime.fromtimestamp(data["created"], UTC),
        datetime.fromtimestamp(data["expires"], UTC), mode, manager.volumes.usage(cid) if mode == "loop" else None,
        status="detached", runtime=None, image=None,
    ) | {"pool": False, "this_data_dir": True, "docker_id": None, "in_use": manager.leases.in_use(cid)}


def _mounted_usage(attrs: dict[str, Any]) -> int | None:
    """Bytes used in a loop-mounted workspace (its bind source is the mount point on this host)."""
    import os

    for mount in attrs.get("Mounts") or []:
        if mount.get("Destination") == "/workspace" and mount.get("Type") == "bind":
            source = mount.get("Source") or ""
            if source and os.path.ismount(source):
                st = os.statvfs(source)
                return (st.f_blocks - st.f_bfree) * st.f_frsize
    return None


def _volume_sizes(manager: Any) -> dict[str, int]:
    """Named-volume sizes from ``docker system df`` (one call; empty when the engine refuses)."""
    import docker.errors

    try:
        df = manager.client.df()
    except docker.errors.DockerException:
        return {}
    sizes = {}
    for volume in df.get("Volumes") or []:
        size = (volume.get("UsageData") or {}).get("Size")
        if isinstance(size, int) and size >= 0:
            sizes[volume.get("Name", "")] = size
    return sizes


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def _human_duration(seconds: float) -> str:
    past = seconds < 0
    s = abs(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if s >= size:
            text = f"{s / size:.0f}{unit}"
            break
    else:
        text = f"{s:.0f}s"
    return f"{text} ago" if past else text


# --------------------------------------------------------------------------- commands


def _rows(settings: Settings, manager: Any, all_data_dirs: bool) -> list[dict[str, Any]]:
    if manager.name != "docker":
        from . import containers_k8s

        return containers_k8s.rows(_row, manager, settings, all_instances=all_data_dirs)
    pairs = [(r, c) for r, c in manager.list() if all_data_dirs or r.install == manager.install]
    sizes = _volume_sizes(manager) if any(r.quota != "loop" for r, _ in pairs) else {}
    detached = manager.detached(present={r.id for r, _ in pairs})
    return [_describe(manager, r, c, sizes) for r, c in pairs] + [_describe_detached(manager, cid, d) for cid, d in detached]


def _ls(ns: argparse.Namespace, get_settings: Callable[..., Settings]) -> int:
    settings, manager = _engine(ns, get_settings)
    rows = _rows(settings, manager, ns.all_data_dirs)
    rows.sort(key=lambda d: d["created"], reverse=True)
    if ns.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no sandboxes" + ("" if ns.all_data_dirs else f" for data dir {settings.data_dir}"), file=sys.stderr)
        return 0
    table = [("ID", "OWNER", "AGE", "EXPIRES IN", "STATUS", "RUNTIME", "DISK USED")]
    for d in rows:
        limit = f" / {_human_bytes(d['disk_limit_bytes'])}" if d["disk_limit_bytes"] else ""
        table.append((
            d["id"], d["owner"], _human_duration(d["age_seconds"]),
            "expired" if d["expired"] else _human_duration(d["expires_in_seconds"]),
            d["status"] + (" +repl" if d.get("repl_state") else "") + (" +checkpoint" if d.get("checkpointed") else ""), d["runtime"] or "-", _human_bytes(d["disk_used_bytes"]) + limit,
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row, d in zip(table, [None, *rows]):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        for line in _service_lines(d or {}):
            print("  " + line)
    if hasattr(manager, "kept"):  # Docker's caps on stopped sandboxes per principal
        _print_kept(manager)
    return 0


def _service_lines(d: dict[str, Any]) -> list[str]:
    """One indented line per service under its sandbox's row."""
    lines = []
    for svc in d.get("services") or []:
        state = str(svc.get("status"))
        if svc.get("exit_code") is not None:
            state += f" ({svc['exit_code']})"
        uptime = svc.get("uptime_seconds")
        up = _human_duration(uptime) if isinstance(uptime, int | float) else "-"
        lines.append(f"service {svc.get('name')}: {state}, pid {svc.get('pid')}, up {up}, "
                     f"as of {_human_duration(d['services_as_of_seconds'])} ago: {_short(svc.get('command'))}")
    return lines


def _short(command: Any, width: int = 60) -> str:
    first = (str(command or "").splitlines() or [""])[0]
    return first if len(first) <= width and "\n" not in str(command) else first[: width - 3] + "..."


def _print_kept(manager: Any) -> None:
    """Per principal: the stopped sandboxes kept against the caps (beyond them the reaper evicts
    the least recently used)."""
    s = manager.settings
    for owner, entries in sorted(manager.kept().items()):
        print(
            f"{owner}: {len(entries)} stopped sandbox(es) kept of at most {s.max_kept_sandboxes_per_principal}, "
            f"{_human_bytes(sum(size for _, _, size in entries))} of {_human_bytes(s.max_kept_disk_bytes_per_principal)} "
            "workspace disk (least recently used evicted beyond either)"
        )


def _find(manager: Any, cid: str) -> tuple[Any, Any] | None:
    from .engines.docker import is_valid_container_id

    if not is_valid_container_id(cid):
        return None
    for record, container in manager.list():
        if record.id == cid:
            return record, container
    return None


def _inspect(ns: argparse.Namespace, get_settings: Callable[..., Settings]) -> int:
    settings, manager = _engine(ns, get_settings)
    if manager.name != "docker":
        from . import containers_k8s
        from .engines.base import is_valid_container_id

        shown = containers_k8s.inspect(_row, manager, settings, ns.container_id) if is_valid_container_id(ns.container_id) else None
        if shown is None:
            _err(f"no such sandbox: {ns.container_id}")
            return 1
        return _print_inspected(settings, shown)
    found = _find(manager, ns.container_id)
    # Not listed: the id has no container, so no container can rule it out of the detached ones.
    detached = dict(manager.detached(present=set())) if found is None else {}
    if found is None and ns.container_id not in detached:
        _err(f"no such sandbox: {ns.container_id}")
        return 1
    if found is None:  # its container was removed outside the server; the next call rebuilds it
        data = _describe_detached(manager, ns.container_id, detached[ns.container_id])
        data.update(started_at=None, limits=None, server=None)
    else:
        record, container = found
        sizes = _volume_sizes(manager) if record.quota != "loop" else {}
        data = _describe(manager, record, container, sizes)
        attrs = container.attrs or {}
        host_config = attrs.get("HostConfig") or {}
        state = attrs.get("State") or {}
        data.update(
            started_at=state.get("StartedAt"),
            limits={
                "cpus": (host_config.get("NanoCpus") or 0) / 1e9 or None,
                "memory_bytes": host_config.get("Memory") or None,
                "pids": host_config.get("PidsLimit"),
                "network": host_config.get("NetworkMode"),
                "read_only_root": host_config.get("ReadonlyRootfs"),
                "cap_drop": host_config.get("CapDrop"),
            },
            server=record.server,
        )
    return _print_inspected(settings, data)


def _print_inspected(settings: Settings, data: dict[str, Any]) -> int:
    """``data`` and the stored files the sandbox produced, as JSON."""
    try:
        from .files import FileStore

        with FileStore(settings.files_dir, settings.file_retention_days) as store:
            files = store.list(container_id=data["id"], limit=None)
        data["files"] = [{"id": f.id, "filename": f.filename, "size": f.size, "origin": f.origin} for f in files]
    except OSError:
        data["files"] = None
    print(json.dumps(data, indent=2))
    return 0


def _known(manager: Any) -> tuple[set[str], set[str]]:
    """(ids with a container or pod, ids kept without one: detached or stopped idle)."""
    present = {record.id for record, _ in manager.list()}
    return present, {cid for cid, _ in manager.detached(present)}


def _stop(ns: argparse.Namespace, get_settings: Callable[..., Settings]) -> int:
    manager = _manager(ns, get_settings)
    if not manager.stoppable:
        _err(f"the {manager.name} engine keeps idle sandboxes running: without a workspace claim (k8s_storage_class) "
             "their files live only as long as the pod")
        return 1
    status = 0
    present, kept = _known(manager)
    for cid in ns.container_ids:
        if cid not in present | kept:
            _err(f"no such sandbox: {cid}")
            status = 1
            continue
        if cid in present:
            manager.stop(cid)
        print(f"stopped {cid}")
    return status


def _rm(ns: argparse.Namespace, get_settings: Callable[..., Settings]) -> int:
    manager = _manager(ns, get_settings)
    status = 0
    present, kept = _known(manager)
    known = present | kept
    for cid in ns.container_ids:
        if cid not in known:
            _err(f"no such sandbox: {cid}")
            status = 1
            continue
        manager.remove(cid)
        print(f"removed {cid}")
    return status


def _prune(ns: argparse.Namespace, get_settings: Callable[..., Settings]) -> int:
    settings, manager = _engine(ns, get_settings)
    if ns.all:
        mine = [r.id for r, _ in manager.list() if r.install == manager.install]
        if not ns.yes:
            _err(
                f"--all removes every sandbox of {settings.data_dir} ({len(mine)} now), with their "
                "workspaces, running or not. Add --yes to confirm."
            )
            return 2
        if manager.name == "docker":
            removed = manager.remove_installation()
        else:
            # Each sandbox through the engine's remove (not remove_installation: that also deletes
            # the leader Lease a running server holds).
            removed = sorted(set(mine) | {cid for cid, _ in manager.detached()})
            for cid in removed:
                manager.remove(cid)
    else:
        removed = manager.reap()
    for cid in removed:
        print(f"removed {cid}")
    print(f"{len(removed)} sandbox{'es' * (len(removed) != 1)} removed", file=sys.stderr)
    return 0


__all__ = ["register_cli"]
