"""``mcp-codeexec snapshots save | ls | rm | start | fork`` — workspace snapshots and forks.

``save ID NAME`` copies a sandbox's workspace (frozen while copied) to a named snapshot; ``start
NAME`` makes a new sandbox from it; ``fork ID`` makes a new sandbox from a sandbox's workspace
directly. New sandboxes belong to ``--owner`` (default: the source's owner, else ``local``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from .config import Settings
from .containers_cli import _err, _guard, _human_bytes, _human_duration, _manager


def register_cli(subparsers: Any, get_settings: Callable[..., Settings]) -> argparse.ArgumentParser:
    snapshots = subparsers.add_parser(
        "snapshots",
        help="save sandbox workspaces as named snapshots, start or fork sandboxes from them",
        description="Workspace snapshots (copy-on-write where the host filesystem can) and forks.",
    )
    sub = snapshots.add_subparsers(dest="snapshots_command", metavar="COMMAND")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="the server's data directory (default: the configured one)")

    p = sub.add_parser("save", help="save sandbox ID's workspace as snapshot NAME")
    p.add_argument("container_id", metavar="ID")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--replace", action="store_true", help="replace an existing snapshot of that name")
    common(p)
    p.set_defaults(func=lambda ns: _guard(lambda: _save(ns, get_settings)))

    p = sub.add_parser("ls", help="list snapshots: name, owner, source sandbox, age, size, disk")
    p.add_argument("--json", action="store_true", help="one JSON array")
    common(p)
    p.set_defaults(func=lambda ns: _guard(lambda: _ls(ns, get_settings)))

    p = sub.add_parser("rm", help="remove snapshots")
    p.add_argument("names", metavar="NAME", nargs="+")
    common(p)
    p.set_defaults(func=lambda ns: _guard(lambda: _rm(ns, get_settings)))

    p = sub.add_parser("start", help="start a new sandbox from snapshot NAME; prints its id")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--owner", help="the new sandbox's owner (default: the snapshot's)")
    common(p)
    p.set_defaults(func=lambda ns: _guard(lambda: _start(ns, get_settings)))

    p = sub.add_parser("fork", help="a new sandbox with a copy of sandbox ID's workspace; prints its id")
    p.add_argument("container_id", metavar="ID")
    p.add_argument("--owner", help="the new sandbox's owner (default: the source's)")
    common(p)
    p.set_defaults(func=lambda ns: _guard(lambda: _fork(ns, get_settings)))
    return snapshots


def _store(manager: Any) -> Any:
    from .snapshots import SnapshotStore

    return SnapshotStore(manager.settings)


def _owner_of(manager: Any, cid: str) -> str:
    record, _ = manager.find(cid)  # container_expired for an unknown id
    return record.owner or "local"


def _save(ns: argparse.Namespace, get_settings: Callable[..., Settings]) -> int:
    manager = _manager(ns, get_settings)
    started = time.monotonic()
    snap = _store(manager).save(manager, ns.container_id, ns.name, _owner_of(manager, ns.container_id), replace=ns.replace)
    print(f"saved {snap.name} from {ns.container_id} in {time.monotonic() - started:.2f} s "
          f"({_human_bytes(snap.disk_bytes)} on disk)")
    return 0


def _ls(ns: argparse.Namespace, get_settings: Callable[..., Settings]) -> int:
    from .snapshots import SnapshotStore

    settings = get_settings(data_dir=ns.data_dir) if ns.data_dir else get_settings()
    snaps = SnapshotStore(settings).list()
    if ns.json:
        print(json.dumps([s.as_dict() for s in snaps], indent=2))
        return 0
    if not snaps:
        print("no snapshots")
        return 0
    print(f"{'NAME':<24} {'OWNER':<12} {'SOURCE':<34} {'AGE':>8} {'SIZE':>10} {'DISK':>10}")
    for s in snaps:
        print(f"{s.name:<24} {s.owner:<12} {s.source:<34} {_human_duration(time.time() - s.created):>8} "
              f"{_human_bytes(s.size_bytes):>10} {_human_bytes(s.disk_bytes):>10}")
    return 0


def _rm(ns: argparse.Namespace, get_settings: Callable[..., Settings]) -> int:
    from .errors import CodeExecError
    from .snapshots import SnapshotStore

    settings = get_settings(data_dir=ns.data_dir) if ns.data_dir else get_settings()
    store, status = SnapshotStore(settings), 0
    for name in ns.names:
        try:
            store.remove(name)
        except CodeExecError as exc:
            _err(exc.message)
            status = 1
            continue
        print(f"removed {name}")
    return status


def _start(ns: argparse.Namespace, get_settings: Callable[..., Settings]) -> int:
    manager = _manager(ns, get_settings)
    store = _store(manager)
    owner = ns.owner or store.get(ns.name).owner
    print(store.start(manager, ns.name, owner))
    return 0


def _fork(ns: argparse.Namespace, get_settings: Callable[..., Settings]) -> int:
    from .snapshots import fork

    manager = _manager(ns, get_settings)
    owner = ns.owner or _owner_of(manager, ns.container_id)
    print(fork(manager, ns.container_id, owner))
    return 0
