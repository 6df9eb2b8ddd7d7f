"""The Kubernetes deployment in deploy/kubernetes: parses, and wires replicas to the shared store
with the least privilege (no cluster needed; applying it is for the cluster suite)."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
BASE = DEPLOY / "base"
LOCAL = DEPLOY / "overlays" / "local-cluster"


def _docs() -> list[dict]:
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = []
    for name in kust["resources"]:
        docs += [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]
    return docs


def _one(docs: list[dict], kind: str, name: str) -> dict:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_the_server_runs_as_three_replicas_sharing_postgres_from_a_secret() -> None:
    docs = _docs()
    deployment = _one(docs, "Deployment", "mcp-codeexec")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    env = {e["name"]: e for e in server["env"]}
    assert env["MCP_CODEEXEC_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "mcp-codeexec", "key": "database-url"}
    assert "value" not in env["MCP_CODEEXEC_AUTH_TOKENS"]  # tokens come from the Secret too
    assert pod["serviceAccountName"] == "mcp-codeexec"
    assert server["securityContext"]["allowPrivilegeEscalation"] is False
    service = _one(docs, "Service", "mcp-codeexec")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_the_server_may_touch_only_sandbox_objects_in_the_sandbox_namespace() -> None:
    docs = _docs()
    role = _one(docs, "Role", "mcp-codeexec-sandboxes")
    assert role["metadata"]["namespace"] == "mcp-codeexec-sandboxes"
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {"pods", "pods/attach", "persistentvolumeclaims", "networkpolicies"}
    assert not any("*" in rule["verbs"] or "secrets" in rule["resources"] for rule in role["rules"])
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_the_entry_point_is_the_base_and_keeps_postgres_and_the_local_overlay_out() -> None:
    assert yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["bases"] == ["base"]
    assert not [d for d in _docs() if d["kind"] in ("StatefulSet", "Secret")]  # no toy database, no secret values
    local = yaml.safe_load((LOCAL / "kustomization.yaml").read_text())
    assert local["bases"] == ["../../base"]  # kubectl 1.20's kustomize: a base may not contain its overlay


def test_the_local_overlay_keeps_every_listener_on_loopback_and_pulls_nothing() -> None:
    (patch,) = [d for d in yaml.safe_load_all((LOCAL / "server.yaml").read_text()) if d]
    pod = patch["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    (server,) = pod["containers"]
    script = server["args"][0]
    assert "--host 127.0.0.1" in script and "0.0.0.0" not in script and '"127.0.0.1", 0' in script
    assert server["imagePullPolicy"] == "Never" and server["ports"] is None  # no host port is claimed
    env = {e["name"]: e["value"] for e in server["env"]}
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1" and env["MCP_CODEEXEC_K8S_IMAGE_PULL_POLICY"] == "Never"
    for probe in (server["readinessProbe"], server["livenessProbe"]):
        assert probe["httpGet"] is None and "http://127.0.0.1:" in probe["exec"]["command"][-1]
