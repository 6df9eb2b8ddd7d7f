"""A snapshot starts sandboxes only in the workspace mode it was saved in (snapshots.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from mcp_codeexec.config import load_settings
from mcp_codeexec.errors import InvalidToolInput
from mcp_codeexec.snapshots import SnapshotStore


def _record(store: SnapshotStore, name: str, **extra: object) -> None:
    store.root.mkdir(parents=True, exist_ok=True)
    (store.root / f"{name}.json").write_text(json.dumps(
        {"name": name, "owner": "local", "source": "container_x", "created": 1.0, "size_bytes": 10, **extra}))


@pytest.mark.parametrize(("mode", "volume", "words"), [
    ("none", None, "saved from a loop-mounted image; this server's workspaces are named volumes"),
    ("loop", "mcp-codeexec-snap-ab", "saved from a named volume; this server's workspaces are loop-mounted images"),
])
def test_a_snapshot_saved_in_the_other_workspace_mode_is_refused_with_the_reason(tmp_path, mode, volume, words) -> None:
    store = SnapshotStore(load_settings(data_dir=str(tmp_path), config_file=None))
    _record(store, "s", **({"volume": volume, "disk_bytes": 10} if volume else {}))
    manager = SimpleNamespace(volumes=SimpleNamespace(mode=mode), create=lambda *a, **k: pytest.fail("created"))
    with pytest.raises(InvalidToolInput, match=words):
        store.start(manager, "s", "local")


def test_a_volume_snapshots_disk_use_is_the_size_measured_when_it_was_saved(tmp_path) -> None:
    store = SnapshotStore(load_settings(data_dir=str(tmp_path), config_file=None))
    _record(store, "v", volume="mcp-codeexec-snap-cd", disk_bytes=4096)
    snap = store.get("v")
    assert snap.volume == "mcp-codeexec-snap-cd" and snap.disk_bytes == 4096
