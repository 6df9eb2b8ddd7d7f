"""The Kubernetes deployment in deploy/kubernetes: parses, and wires replicas to the shared store
with the least privilege (no cluster needed; applying it is for the cluster suite)."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def _docs() -> list[dict]:
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs = []
    for name in kust["resources"]:
        docs += [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
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
