"""A ServiceAccount bound to a Role with exactly the rules doctor asks for can do everything the server
does (doctor --start passes, the Lease is taken); take one verb away and doctor names it."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import yaml

from mcp_codeexec.doctor import run_checks
from mcp_codeexec.engines.k8s_doctor import NEEDED
from mcp_codeexec.engines.k8s_lease import LeaseElection
from tests.support.backends import backend_settings

from .test_faults import engine_of, no_leftovers

pytestmark = pytest.mark.anyio


def role_rules(drop: tuple[str, str] | None = None) -> list[dict[str, object]]:
    rules = []
    for group, resource, sub, verbs in NEEDED:
        name = f"{resource}/{sub}" if sub else resource
        kept = [v for v in verbs if (v, name) != drop]
        rules.append({"apiGroups": [group], "resources": [name], "verbs": kept})
    return rules


def service_account_kubeconfig(admin: str, tmp_path: Path, rules: list[dict[str, object]]) -> Iterator[str]:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=admin)
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    ns = "default"
    name = "mcp-codeexec-rbac-" + secrets.token_hex(4)
    core.create_namespaced_service_account(ns, {"metadata": {"name": name}})
    try:
        rbac.create_namespaced_role(ns, {"metadata": {"name": name}, "rules": rules})
        rbac.create_namespaced_role_binding(ns, {"metadata": {"name": name},
                                                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                                                 "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]})
        deadline = time.monotonic() + 30
        while not (core.read_namespaced_service_account(name, ns).secrets or []):  # the token controller's secret
            assert time.monotonic() < deadline, "no token secret for the service account"
            time.sleep(0.2)
        secret = core.read_namespaced_service_account(name, ns).secrets[0].name
        token = base64.b64decode(core.read_namespaced_secret(secret, ns).data["token"]).decode()
        kubeconfig = yaml.safe_load(Path(admin).read_text())
        kubeconfig["users"] = [{"name": name, "user": {"token": token}}]
        kubeconfig["contexts"][0]["context"]["user"] = name
        path = tmp_path / "sa.kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        path.chmod(0o600)
        yield str(path)
    finally:
        for call in (lambda: rbac.delete_namespaced_role_binding(name, ns), lambda: rbac.delete_namespaced_role(name, ns),
                     lambda: core.delete_namespaced_service_account(name, ns)):
            try:
                call()
            except client.exceptions.ApiException as exc:
                assert exc.status == 404


@pytest.fixture
def exact(kubeconfig: str, tmp_path: Path) -> Iterator[str]:
    yield from service_account_kubeconfig(kubeconfig, tmp_path, role_rules())


@pytest.fixture
def without_patch(kubeconfig: str, tmp_path: Path) -> Iterator[str]:
    yield from service_account_kubeconfig(kubeconfig, tmp_path, role_rules(drop=("patch", "pods")))


async def test_the_role_doctor_asks_for_is_enough_to_serve(tmp_path: Path, exact: str) -> None:
    settings = backend_settings("kubernetes", tmp_path, kubeconfig=exact)
    checks = {c.name: c for c in await anyio.to_thread.run_sync(lambda: run_checks(lambda: settings, timeout=5.0, start=True))}
    assert checks["RBAC"].status == "OK", checks["RBAC"]
    assert checks["namespace"].status == "WARN"  # a namespaced Role may not read the namespace: fine
    assert checks["network self-check"].status == "OK" and checks["sandbox"].status == "OK", checks

    from kubernetes import client, config

    api = client.CoordinationV1Api(config.new_client_from_config(config_file=exact))
    election = LeaseElection(api, "default", "mcp-codeexec-leader-rbac-" + secrets.token_hex(4), identity="me", duration=3)
    assert await anyio.to_thread.run_sync(election.step) and await anyio.to_thread.run_sync(election.step)
    # Deleting the Lease is not among the server's verbs: the admin cleans up.
    admin = engine_of(backend_settings("kubernetes", tmp_path))
    client.CoordinationV1Api(admin.api_client).delete_namespaced_lease(election.name, "default")
    await no_leftovers(admin)


async def test_a_missing_verb_fails_doctor_naming_it(tmp_path: Path, without_patch: str) -> None:
    settings = backend_settings("kubernetes", tmp_path, kubeconfig=without_patch)
    rbac = {c.name: c for c in await anyio.to_thread.run_sync(lambda: run_checks(lambda: settings, timeout=5.0))}["RBAC"]
    assert rbac.status == "FAIL" and "patch pods" in rbac.message and "create pods" not in rbac.message, rbac
