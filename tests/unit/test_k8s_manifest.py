"""The Kubernetes engine's pod, NetworkPolicy and PVC manifests (no cluster needed)."""

from __future__ import annotations

import pytest

from mcp_codeexec.engines.kubernetes import (
    L_ID,
    PodSettings,
    network_policy_manifest,
    new_container_id,
    object_name,
    pod_manifest,
    pvc_manifest,
)
from mcp_codeexec.errors import ContainerExpired


def test_a_pod_is_hardened_and_limited_like_a_docker_sandbox() -> None:
    cid = new_container_id()
    pod = pod_manifest(cid, "alice", PodSettings(), now=100.0, expires=200.0)
    spec = pod["spec"]
    (c,) = spec["containers"]
    assert c["resources"]["requests"] == c["resources"]["limits"] == {"cpu": "1", "memory": "5Gi"}
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] and not c["securityContext"]["allowPrivilegeEscalation"]
    assert c["stdin"] and not c["stdinOnce"] and not c["tty"] and c["imagePullPolicy"] == "Never"
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] == 1000
    assert not spec["automountServiceAccountToken"] and not spec["enableServiceLinks"]
    assert spec["dnsPolicy"] == "None" and spec["dnsConfig"]["nameservers"] == ["127.0.0.1"]
    assert all("hostPath" not in v for v in spec["volumes"])
    masks = {m["mountPath"] for m in c["volumeMounts"] if m.get("readOnly")}
    assert masks == {"/sys/block", "/sys/devices/virtual/block"}  # the node's block devices, hidden as on Docker
    assert "runtimeClassName" not in spec
    assert pod["metadata"]["annotations"]["mcp-codeexec/owner"] == "alice"
    assert pod["metadata"]["labels"][L_ID] == cid


def test_a_storage_class_puts_the_workspace_on_a_pvc_and_a_runtime_class_is_passed_on() -> None:
    cid = new_container_id()
    settings = PodSettings(storage_class="fast", runtime_class="gvisor")
    pod = pod_manifest(cid, "bob", settings, now=0, expires=1)
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    assert pod["spec"]["volumes"][0] == {"name": "workspace", "persistentVolumeClaim": {"claimName": object_name(cid)}}
    assert pvc_manifest(cid, settings)["spec"]["resources"]["requests"]["storage"] == "5Gi"


def test_a_pod_rebuilt_around_its_claim_gets_only_the_lifetime_that_is_left() -> None:
    cid = new_container_id()
    fresh = pod_manifest(cid, "bob", PodSettings(storage_class="fast"), now=1000.0, expires=4600.0)
    rebuilt = pod_manifest(cid, "bob", PodSettings(storage_class="fast"), now=1000.0, expires=4600.0, started=4000.0)
    assert fresh["spec"]["activeDeadlineSeconds"] == 3600 and rebuilt["spec"]["activeDeadlineSeconds"] == 600
    assert rebuilt["metadata"]["annotations"]["mcp-codeexec/created-at"] == "1000.000"  # still the sandbox's own


def test_the_network_policy_denies_both_directions_for_its_pod_only() -> None:
    cid = new_container_id()
    spec = network_policy_manifest(cid, PodSettings())["spec"]
    assert spec == {"podSelector": {"matchLabels": {L_ID: cid}}, "policyTypes": ["Ingress", "Egress"]}


def test_object_names_come_only_from_issued_container_ids() -> None:
    with pytest.raises(ContainerExpired):
        object_name("container_../../etc")
