"""``doctor`` and the network self-check on the real cluster: the canary pod reports no interface but
lo and no route (this cluster's pods get only lo), and leaves nothing behind; doctor --start passes
every cluster check and runs a sandbox."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from mcp_codeexec.doctor import run_checks
from mcp_codeexec.engines.k8s_netcheck import network_check
from tests.support.backends import backend_settings

from .test_faults import engine_of, no_leftovers

pytestmark = pytest.mark.anyio


async def test_the_canary_pod_shows_no_route_out_and_is_removed(tmp_path: Path, kubeconfig: str) -> None:
    engine = engine_of(backend_settings("kubernetes", tmp_path))
    made: list[str] = []
    real = engine.core.create_namespaced_pod

    def create(namespace: str, body: dict) -> object:
        # The canary runs behind its own deny-all policy, made before it.
        name = body["metadata"]["name"]
        policy = engine.net.read_namespaced_network_policy(name, namespace)
        assert policy.spec.policy_types == ["Ingress", "Egress"] and not policy.spec.ingress and not policy.spec.egress
        made.append(name)
        return real(namespace, body)

    engine.core.create_namespaced_pod = create  # type: ignore[method-assign]
    with anyio.fail_after(120):
        verdict = await anyio.to_thread.run_sync(network_check, engine)
    assert made and verdict.complete and verdict.isolated, verdict.report
    assert verdict.interfaces == () and verdict.routes == ()
    await no_leftovers(engine)


async def test_doctor_start_passes_every_cluster_check_on_the_local_cluster(tmp_path: Path, kubeconfig: str) -> None:
    settings = backend_settings("kubernetes", tmp_path)
    checks = await anyio.to_thread.run_sync(lambda: run_checks(lambda: settings, timeout=5.0, start=True))
    by_name = {c.name: c for c in checks}
    for name in ("cluster", "namespace", "RBAC", "network self-check", "sandbox"):
        assert by_name[name].status == "OK", (name, by_name[name])
    assert "v1.20" in by_name["cluster"].message
    assert by_name["RuntimeClass"].status in ("SKIP", "OK") and by_name["StorageClass"].status in ("SKIP", "OK")
    assert not any(c.status == "FAIL" for c in checks), checks
    await no_leftovers(engine_of(settings))
