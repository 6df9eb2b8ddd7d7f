"""Sandboxes stopped idle on the kubernetes backend (the pod deleted, the workspace claim kept) and
``mcp-codeexec containers`` over the engine interface, against a fake API (no cluster needed)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mcp_codeexec.cli import build_parser
from mcp_codeexec.config import Settings
from mcp_codeexec.engines.base import new_container_id
from mcp_codeexec.engines.kubernetes import (
    A_CREATED,
    A_EXPIRES,
    A_OWNER,
    KubernetesEngine,
    PodSettings,
    object_name,
    pod_manifest,
    pvc_manifest,
)

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def _matches(obj: dict[str, Any], selector: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, _, v in (term.partition("=") for term in selector.split(",") if term))


class FakeObjects:
    """One kind of namespaced object, as the client's list / read / delete calls see it."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    def list(self, namespace: str, label_selector: str = "", **_: Any) -> SimpleNamespace:
        return SimpleNamespace(items=[o for o in self.items.values() if _matches(o, label_selector)])

    def read(self, name: str, namespace: str) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        if name not in self.items:
            raise ApiException(status=404, reason="Not Found")
        return self.items[name]

    def delete(self, name: str, namespace: str, **_: Any) -> None:
        from kubernetes.client.exceptions import ApiException

        if self.items.pop(name, None) is None:
            raise ApiException(status=404, reason="Not Found")


class FakeCore:
    def __init__(self) -> None:
        self.pods, self.claims = FakeObjects(), FakeObjects()
        self.list_namespaced_pod, self.read_namespaced_pod, self.delete_namespaced_pod = self.pods.list, self.pods.read, self.pods.delete
        self.list_namespaced_persistent_volume_claim = self.claims.list
        self.read_namespaced_persistent_volume_claim = self.claims.read
        self.delete_namespaced_persistent_volume_claim = self.claims.delete


class FakeNet:
    def __init__(self) -> None:
        self.policies = FakeObjects()
        self.list_namespaced_network_policy = self.policies.list
        self.delete_namespaced_network_policy = self.policies.delete


def fake_engine(tmp_path: Path, storage_class: str | None = "fast") -> KubernetesEngine:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    engine = KubernetesEngine(PodSettings(storage_class=storage_class, instance="inst"), kubeconfig=str(tmp_path / "kubeconfig"),
                              data_dir=tmp_path / "data")
    engine.core, engine.net = FakeCore(), FakeNet()  # type: ignore[assignment]
    return engine


def _stamp(age: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")


def add_sandbox(engine: KubernetesEngine, owner: str = "local", *, pod: bool = True, expires_in: float = 3600.0,
                age: float = 10.0) -> str:
    """A sandbox's objects as create makes them: its policy, its claim (with a StorageClass) and,
    unless it was stopped idle, its running pod."""
    cid = new_container_id()
    now = time.time()
    s = engine.settings
    engine.net.policies.items[object_name(cid)] = {"metadata": {"name": object_name(cid), "labels": {
        "app.kubernetes.io/managed-by": "mcp-codeexec", "mcp-codeexec/instance": s.instance, "mcp-codeexec/id": cid},
        "creationTimestamp": _stamp(age)}}
    if s.storage_class:
        claim = pvc_manifest(cid, s, {A_OWNER: owner, A_CREATED: f"{now - age:.3f}", A_EXPIRES: f"{now + expires_in:.3f}"})
        claim["metadata"]["creationTimestamp"] = _stamp(age)
        claim["status"] = {"phase": "Bound", "capacity": {"storage": "5Gi"}}
        engine.core.claims.items[object_name(cid)] = claim
    if pod:
        manifest = pod_manifest(cid, owner, s, now=now - age, expires=now + expires_in, server="elsewhere:1:1")
        manifest["metadata"]["creationTimestamp"] = _stamp(age)
        manifest["spec"]["nodeName"] = "node-1"
        manifest["status"] = {"phase": "Running", "startTime": _stamp(age)}
        engine.core.pods.items[object_name(cid)] = manifest
    return cid


def test_a_sandbox_stopped_idle_is_detached_and_resumable_by_its_owner_only(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path)
    running = add_sandbox(engine)
    stopped = add_sandbox(engine, pod=False)
    add_sandbox(engine, pod=False, expires_in=-1)  # expired: nothing to resume
    other = add_sandbox(engine, "alice", pod=False)
    assert [cid for cid, _ in engine.detached()] == [stopped, other]
    assert set(engine.resumable("local")) == {running, stopped}
    assert engine.resumable("alice") == [other]
    assert engine.leases.acquire(stopped)  # a live server uses it: not resumable
    assert engine.resumable("local") == [running]


def test_without_a_storage_class_nothing_is_detached(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, storage_class=None)
    add_sandbox(engine)
    assert engine.detached() == [] and not engine.stoppable


def test_the_reaper_removes_an_expired_stopped_sandbox_at_once_and_keeps_live_ones(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path)
    live = add_sandbox(engine, pod=False)
    expired = add_sandbox(engine, pod=False, expires_in=-1, age=5)  # younger than the orphan grace
    ownerless = add_sandbox(engine, "", pod=False, age=5)  # a pool create between its claim and its pod
    assert engine.reap() == [expired]
    names = set(engine.core.claims.items)
    assert object_name(expired) not in names and object_name(expired) not in engine.net.policies.items
    assert {object_name(live), object_name(ownerless)} <= names
    engine.orphan_grace = 1.0
    assert engine.reap() == [ownerless]


# --------------------------------------------------------------------------- containers CLI


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run ``mcp-codeexec containers ...`` in-process with the fake engine; returns (exit code, stdout, stderr)."""
    engine = fake_engine(tmp_path)
    built: list[Settings] = []

    def build_engine(settings: Settings) -> KubernetesEngine:
        built.append(settings)
        return engine

    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.setenv("MCP_CODEEXEC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr("mcp_codeexec.engines.build_engine", build_engine)

    def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        ns = build_parser().parse_args(["containers", *args])
        code = ns.func(ns)
        out, err = capsys.readouterr()
        return code, out, err

    run.engine, run.built = engine, built  # type: ignore[attr-defined]
    return run


def test_containers_ls_on_the_kubernetes_backend_lists_pods_and_stopped_sandboxes(cli: Any, capsys: pytest.CaptureFixture[str]) -> None:
    running = add_sandbox(cli.engine)
    stopped = add_sandbox(cli.engine, pod=False)
    code, out, err = cli(capsys, "ls", "--json", "--backend", "kubernetes", "--kubeconfig", "/k/config", "--namespace", "sandboxes",
                         "--storage-class", "fast")
    assert code == 0, err
    (settings,) = cli.built
    assert (settings.backend, settings.kubeconfig, settings.k8s_namespace, settings.k8s_storage_class) == (
        "kubernetes", "/k/config", "sandboxes", "fast")
    rows = {row["id"]: row for row in json.loads(out)}
    assert set(rows) == {running, stopped}
    assert rows[running]["status"] == "running" and rows[running]["pod"] == object_name(running)
    assert rows[running]["node"] == "node-1" and rows[running]["runtime"] == "default" and rows[running]["owner"] == "local"
    assert rows[running]["quota"] == "pvc" and rows[running]["disk_limit_bytes"] == 5 * 1024**3
    assert rows[stopped]["status"] == "stopped" and rows[stopped]["pod"] is None and rows[stopped]["expired"] is False
    code, table, _ = cli(capsys, "ls", "--backend", "kubernetes")
    assert code == 0 and running in table and "stopped" in table


def test_containers_inspect_stop_rm_and_prune_go_through_the_engine(cli: Any, capsys: pytest.CaptureFixture[str]) -> None:
    engine = cli.engine
    cid = add_sandbox(engine)
    code, out, err = cli(capsys, "inspect", cid, "--backend", "kubernetes")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["limits"]["cpus"] == 1.0 and shown["limits"]["memory_bytes"] == 5 * 1024**3
    assert shown["limits"]["cap_drop"] == ["ALL"] and shown["limits"]["read_only_root"] is True
    assert shown["claim"]["name"] == object_name(cid) and shown["claim"]["capacity_bytes"] == 5 * 1024**3
    assert shown["files"] == []

    code, out, _ = cli(capsys, "stop", cid, "--backend", "kubernetes")
    assert code == 0 and out == f"stopped {cid}\n"
    assert object_name(cid) not in engine.core.pods.items and object_name(cid) in engine.core.claims.items  # files kept
    assert json.loads(cli(capsys, "inspect", cid, "--backend", "kubernetes")[1])["status"] == "stopped"

    missing = "container_" + "e" * 24
    code, out, err = cli(capsys, "rm", cid, missing, "--backend", "kubernetes")
    assert code == 1 and out == f"removed {cid}\n" and f"no such sandbox: {missing}" in err
    assert not engine.core.claims.items and not engine.net.policies.items
    assert cli(capsys, "inspect", cid, "--backend", "kubernetes")[0] == 1

    expired = add_sandbox(engine, pod=False, expires_in=-1)
    kept = add_sandbox(engine)
    code, out, _ = cli(capsys, "prune", "--backend", "kubernetes")
    assert code == 0 and out == f"removed {expired}\n"
    assert cli(capsys, "prune", "--all", "--backend", "kubernetes")[0] == 2  # --all wants --yes
    code, out, _ = cli(capsys, "prune", "--all", "--yes", "--backend", "kubernetes")
    assert code == 0 and out == f"removed {kept}\n" and not engine.core.pods.items and not engine.core.claims.items


def test_containers_stop_refuses_where_a_stop_would_lose_the_files(tmp_path: Path, cli: Any,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    engine = fake_engine(tmp_path / "emptydir", storage_class=None)
    monkeypatch.setattr("mcp_codeexec.engines.build_engine", lambda settings: engine)
    cid = add_sandbox(engine)
    code, _, err = cli(capsys, "stop", cid, "--backend", "kubernetes")
    assert code == 1 and "k8s_storage_class" in err
    assert object_name(cid) in engine.core.pods.items
