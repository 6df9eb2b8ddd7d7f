"""The Kubernetes engine's listing, as the lifecycle calls it: the replicas' per-principal quota asks
for running sandboxes only (``list(all_=False)``, the Docker engine's signature) and gets the pods
that have not ended."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from mcp_codeexec.engines.base import new_container_id
from mcp_codeexec.engines.kubernetes import KubernetesEngine, PodSettings, pod_manifest


def pod(phase: str, *, deleting: bool = False) -> dict[str, Any]:
    now = time.time()
    body = pod_manifest(new_container_id(), "alice", PodSettings(), now=now, expires=now + 3600)
    body["metadata"]["creationTimestamp"] = "2026-12-02T00:00:00Z"
    if deleting:
        body["metadata"]["deletionTimestamp"] = "2026-12-02T00:01:00Z"
    return body | {"status": {"phase": phase}}


def engine_with(pods: list[dict[str, Any]]) -> KubernetesEngine:
    engine = KubernetesEngine.__new__(KubernetesEngine)
    engine.settings = PodSettings()
    engine.core = SimpleNamespace(list_namespaced_pod=lambda ns, label_selector: SimpleNamespace(items=pods))
    engine.api_client = SimpleNamespace(sanitize_for_serialization=lambda obj: obj)
    return engine


def test_running_only_listing_leaves_out_ended_and_deleted_pods_and_the_full_one_has_them_all() -> None:
    pods = [pod("Running"), pod("Pending"), pod("Succeeded"), pod("Failed"), pod("Running", deleting=True)]
    engine = engine_with(pods)
    assert [r.status for r, _ in engine.list(all_=False)] == ["running", "pending"]
    assert len(engine.list()) == 5
    assert all(r.owner == "alice" for r, _ in engine.list())
