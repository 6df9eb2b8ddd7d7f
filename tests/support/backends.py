"""One test, every sandbox backend: the ``backend_name`` fixture parametrises a test over Docker and
Kubernetes (the Kubernetes case is marked ``kubernetes``, so ``-m kubernetes`` runs that tier alone).

The Kubernetes case needs MCP_CODEEXEC_KUBECONFIG (``tests/k8s/cluster.sh up`` prints it); without
it it skips, except under CI=true with MCP_CODEEXEC_K8S=1, where a missing cluster fails.
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


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def any_settings(backend_name: str, tmp_path: Path) -> Iterator[Settings]:
    s = backend_settings(backend_name, tmp_path)
    yield s
    remove_backend_installation(s)
