"""``doctor`` on the kubernetes backend against a fake cluster: each check's verdict and fix, and that
RBAC is asked for exactly the verbs the engine uses, in the sandbox namespace (leases in theirs)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("kubernetes")

from kubernetes.client.exceptions import ApiException

from mcp_codeexec.config import Settings
from mcp_codeexec.engines.k8s_doctor import ClusterApis, kubernetes_checks, needed_permissions


class FakeCluster:
    def __init__(self, *, denied: set[tuple[str, str]] = frozenset(), namespaces: set[str] = frozenset({"sandboxes"}),
                 runtime_classes: dict[str, str] | None = None, storage_classes: dict[str, str] | None = None,
                 down: bool = False) -> None:
        self.denied, self.namespaces, self.down = set(denied), set(namespaces), down
        self.runtime_classes = runtime_classes or {}
        self.storage_classes = storage_classes or {}
        self.reviews: list[dict[str, Any]] = []

    def apis(self) -> ClusterApis:
        cluster = self

        class Version:
            def get_code(self, **kw: Any) -> Any:
                if cluster.down:
                    raise ApiException(status=503, reason="Service Unavailable")
                return SimpleNamespace(git_version="v1.20.2")

        class Core:
            def read_namespace(self, name: str, **kw: Any) -> Any:
                if name not in cluster.namespaces:
                    raise ApiException(status=404, reason="Not Found")
                return SimpleNamespace()

        class Authz:
            def create_self_subject_access_review(self, body: dict[str, Any], **kw: Any) -> Any:
                attrs = body["spec"]["resourceAttributes"]
                cluster.reviews.append(attrs)
                resource = attrs["resource"] + ("/" + attrs["subresource"] if attrs.get("subresource") else "")
                return SimpleNamespace(status=SimpleNamespace(allowed=(attrs["verb"], resource) not in cluster.denied))

        def reader(table: dict[str, str], attr: str) -> Any:
            def read(name: str, **kw: Any) -> Any:
                if name not in table:
                    raise ApiException(status=404, reason="Not Found")
                return SimpleNamespace(**{attr: table[name]})
            return read

        return ClusterApis(version=Version(), core=Core(), authz=Authz(),
                           node=SimpleNamespace(read_runtime_class=reader(self.runtime_classes, "handler")),
                           storage=SimpleNamespace(read_storage_class=reader(self.storage_classes, "provisioner")))


def settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(data_dir=tmp_path, backend="kubernetes", kubeconfig=str(tmp_path / "kubeconfig"),
                    k8s_namespace="sandboxes", **kw)


def by_name(checks: list[Any]) -> dict[str, Any]:
    return {c.name: c for c in checks}


def test_a_healthy_cluster_passes_and_rbac_is_asked_for_exactly_the_verbs_used(tmp_path: Path) -> None:
    cluster = FakeCluster()
    checks = by_name(kubernetes_checks(settings(tmp_path), 1.0, cluster.apis()))
    assert checks["cluster"].status == "OK" and "v1.20.2" in checks["cluster"].message
    assert checks["namespace"].status == "OK"
    assert checks["RBAC"].status == "OK"
    asked = {(r["verb"], r["resource"], r.get("subresource", ""), r["group"]) for r in cluster.reviews}
    assert asked == {
        *{(v, "pods", "", "") for v in ("create", "get", "list", "patch", "delete")},
        ("get", "pods", "attach", ""), ("create", "pods", "attach", ""),
        *{(v, "networkpolicies", "", "networking.k8s.io") for v in ("create", "list", "delete")},
        *{(v, "leases", "", "coordination.k8s.io") for v in ("get", "create", "update")},
    }
    assert {r["namespace"] for r in cluster.reviews} == {"sandboxes"}
    assert checks["RuntimeClass"].status == "SKIP" and checks["StorageClass"].status == "SKIP"
    assert checks["network self-check"].status == "SKIP" and "--start" in checks["network self-check"].message


def test_a_storage_class_adds_the_claim_verbs_and_leases_are_asked_in_their_own_namespace(tmp_path: Path) -> None:
    cluster = FakeCluster(storage_classes={"fast": "pd.csi.storage.gke.io"})
    s = settings(tmp_path, k8s_storage_class="fast", k8s_lease_namespace="servers")
    checks = by_name(kubernetes_checks(s, 1.0, cluster.apis()))
    assert checks["StorageClass"].status == "OK" and "pd.csi" in checks["StorageClass"].message
    assert {r["verb"] for r in cluster.reviews if r["resource"] == "persistentvolumeclaims"} == {"create", "get", "list", "patch", "delete"}
    assert {r["namespace"] for r in cluster.reviews if r["resource"] == "leases"} == {"servers"}
    assert len(cluster.reviews) == len(needed_permissions(s))


def test_missing_permissions_fail_naming_each_and_the_rules_to_grant(tmp_path: Path) -> None:
    cluster = FakeCluster(denied={("patch", "pods"), ("get", "pods/attach")})
    rbac = by_name(kubernetes_checks(settings(tmp_path), 1.0, cluster.apis()))["RBAC"]
    assert rbac.status == "FAIL"
    assert "patch pods" in rbac.message and "get pods/attach" in rbac.message and "create pods," not in rbac.message
    assert "core/pods/attach: get,create" in rbac.fix and "rbac.yaml" in rbac.fix


def test_a_missing_namespace_runtime_class_or_storage_class_fails_with_the_fix(tmp_path: Path) -> None:
    cluster = FakeCluster(namespaces=set(), runtime_classes={"other": "runsc"})
    checks = by_name(kubernetes_checks(settings(tmp_path, k8s_runtime_class="gvisor", k8s_storage_class="none"), 1.0, cluster.apis()))
    assert checks["namespace"].status == "FAIL" and checks["namespace"].fix == "kubectl create namespace sandboxes"
    assert checks["RuntimeClass"].status == "FAIL" and "runsc" in checks["RuntimeClass"].fix
    assert checks["StorageClass"].status == "FAIL"
    assert checks["network self-check"].status == "SKIP"  # even with --start: fix the failures first


def test_an_unreachable_cluster_fails_once_and_skips_the_rest(tmp_path: Path) -> None:
    checks = kubernetes_checks(settings(tmp_path), 1.0, FakeCluster(down=True).apis())
    assert checks[0].name == "cluster" and checks[0].status == "FAIL" and "503" in checks[0].message
    assert all(c.status == "SKIP" for c in checks[1:]) and len(checks) == 6


def test_an_unreadable_kubeconfig_fails_with_the_setting_to_fix(tmp_path: Path) -> None:
    checks = kubernetes_checks(settings(tmp_path), 1.0)  # the kubeconfig file does not exist
    assert checks[0].status == "FAIL" and "kubeconfig" in checks[0].fix
