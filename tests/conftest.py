"""Shared fixtures. Docker-backed tests are marked ``integration``/``adversarial``; under CI=true a
missing Docker engine fails them instead of skipping."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# postgres_server / postgres_url: a throwaway PostgreSQL cluster (tests/support/postgres.py);
# backend_name / any_settings / @docker_only: one test over docker and kubernetes (tests/support/backends.py).
pytest_plugins = ["tests.support.postgres", "tests.support.backends"]


def docker_available() -> str | None:
    """None when a Docker engine answers, else why not."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    try:
        proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    return None if proc.returncode == 0 else proc.stderr.decode(errors="replace").strip()[:300]


@pytest.fixture(scope="session")
def docker_engine() -> None:
    why = docker_available()
    if why is not None:
        if IN_CI:
            pytest.fail(f"CI=true but no Docker engine: {why}")
        pytest.skip(f"no Docker engine: {why}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.fspath)
        if "/tests/integration/" in path:
            item.add_marker(pytest.mark.integration)
        if "/tests/adversarial/" in path:
            item.add_marker(pytest.mark.adversarial)
        if "/tests/live/" in path:
            item.add_marker(pytest.mark.live)
        if "/tests/k8s/" in path:
            item.add_marker(pytest.mark.kubernetes)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """The server runs on asyncio; tests do too (trio is not a dependency)."""
    return "asyncio"
