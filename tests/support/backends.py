"""One test, every sandbox backend: the ``backend_name`` fixture parametrises a test over Docker and
Kubernetes (the Kubernetes case is marked ``kubernetes``, so ``-m kubernetes`` runs that tier alone).
It is module-scoped, so a suite that shares one sandbox per module (tests/adversarial) shares one
per backend: every Docker case of the module runs, then every Kubernetes case.

The Kubernetes case needs MCP_CODEEXEC_KUBECONFIG (``tests/k8s/cluster.sh up`` prints it); without
it it skips, except under CI=true with MCP_CODEEXEC_K8S=1, where a missing cluster fails.

``@docker_only("feature")`` marks a test of a parametrised suite whose Kubernetes case does not apply:
it needs that Docker engine feature (loop-device quotas, host cgroups by container id, checkpoints...).
``@outside_kubernetes_subset("why")`` marks one left out of the Kubernetes run to keep CI short (the
behaviour is the agent's or the server's, the same on pods; ``why`` says what shows it there). Either
way the Kubernetes case is reported as skipped with the reason. This module is a pytest plugin (tests/conftest.py).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_codeexec.config import Settings
from tests.conftest import IN_CI, docker_available

BACKENDS = ["docker", pytest.param("kubernetes", marks=pytest.mark.kubernetes)]
K8S_REQUIRED = IN_CI and os.environ.get("MCP_CODEEXEC_K8S") == "1"


def kubeconfig_or_skip() -> str:
    path = os.environ.get("MCP_CODEEXEC_KUBECONFIG")
    why = None
    if not path:
        why = "no cluster: set MCP_CODEEXEC_KUBECONFIG (tests/k8s/cluster.sh up prints it)"
    elif not Path(path).is_file():
        why = f"MCP_CODEEXEC_KUBECONFIG={path} is not a file"
    elif importlib.util.find_spec("kubernetes") is None:
        why = "the kubernetes client is not installed (pip install -e '.[kubernetes]')"
    if why is not None:
        if K8S_REQUIRED:
            pytest.fail(f"CI=true and MCP_CODEEXEC_K8S=1 but {why}")
        pytest.skip(why)
    assert path is not None
    return path


def backend_settings(backend: str, tmp_path: Path, **overrides: object) -> Settings:
    """The integration tests' settings for ``backend`` (the pods use the locally built image)."""
    from tests.integration.conftest import make_settings

    if backend == "kubernetes":
        overrides = {
            "backend": "kubernetes",
            "kubeconfig": kubeconfig_or_skip(),
            "k8s_namespace": os.environ.get("MCP_CODEEXEC_K8S_NAMESPACE", "default"),
            "k8s_image_pull_policy": "Never",  # the node's engine has the image; nothing is pulled
            "k8s_runtime_class": os.environ.get("MCP_CODEEXEC_K8S_RUNTIME_CLASS") or None,
            **overrides,
        }
    else:
        why = docker_available()
        if why is not None:
            if IN_CI:
                pytest.fail(f"CI=true but no Docker engine: {why}")
            pytest.skip(f"no Docker engine: {why}")
    return make_settings(tmp_path, **overrides)


def remove_backend_installation(settings: Settings) -> None:
    """Every sandbox (container or pod, workspace, policy, claim) the test's servers created."""
    from mcp_codeexec.engines import build_engine

    engine = build_engine(settings)
    engine.remove_installation()  # type: ignore[attr-defined]


def docker_only(reason: str) -> pytest.MarkDecorator:
    """The test's Kubernetes case is skipped: it needs the Docker engine feature ``reason`` names."""
    return pytest.mark.docker_only(f"docker only: {reason}")


def outside_kubernetes_subset(why: str) -> pytest.MarkDecorator:
    """The test's Kubernetes case is skipped to keep CI short: ``why`` says what shows it on pods."""
    return pytest.mark.docker_only(f"left out of the Kubernetes subset (CI time): {why}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "docker_only(reason): the Kubernetes case of this test is skipped with reason")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("docker_only")
        callspec = getattr(item, "callspec", None)
        if marker is not None and callspec is not None and callspec.params.get("backend_name") == "kubernetes":
            item.add_marker(pytest.mark.skip(reason=marker.args[0]))


def on_kubernetes(settings: Settings) -> bool:
    return settings.backend == "kubernetes"


@pytest.fixture(scope="module", params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def any_settings(backend_name: str, tmp_path: Path) -> Iterator[Settings]:
    s = backend_settings(backend_name, tmp_path)
    yield s
    remove_backend_installation(s)
