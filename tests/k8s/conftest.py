"""The kubernetes tier: real pods on a real cluster.

Runs only when MCP_CODEEXEC_KUBECONFIG names a kubeconfig (``tests/k8s/cluster.sh up`` prints one as
its last line); otherwise every test here skips at once. Under CI=true with MCP_CODEEXEC_K8S=1 a
missing cluster fails instead, so a CI job that promises a cluster cannot pass by skipping.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import pytest

from mcp_codeexec.agent_client import AgentConnection
from mcp_codeexec.engines.kubernetes import KubernetesEngine, PodSettings
from tests.k8s.provisioner import LoopProvisioner, loop_provisioner
from tests.support.backends import K8S_REQUIRED, kubeconfig_or_skip


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    return kubeconfig_or_skip()


@dataclass
class WorkspaceClass:
    name: str
    provisioner: LoopProvisioner | None
    """The tests' own loop-backed provisioner; None for a cluster's StorageClass."""


@pytest.fixture(scope="session")
def workspace_class(kubeconfig: str) -> Iterator[WorkspaceClass]:
    """A StorageClass for workspace claims: ``MCP_CODEEXEC_TEST_K8S_STORAGE_CLASS`` on a cluster that has
    one, else a class served by the tests' own provisioner (``provisioner.py``: loop-mounted ext4
    volumes of the claimed size; needs root)."""
    named = os.environ.get("MCP_CODEEXEC_TEST_K8S_STORAGE_CLASS")
    if named:
        yield WorkspaceClass(named, None)
        return
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        why = "the test provisioner needs root and mkfs.ext4 (or set MCP_CODEEXEC_TEST_K8S_STORAGE_CLASS)"
        if K8S_REQUIRED:
            pytest.fail(why)
        pytest.skip(why)
    from kubernetes import config

    api = config.new_client_from_config(config_file=kubeconfig)
    try:
        with loop_provisioner(api) as prov:
            yield WorkspaceClass(prov.class_name, prov)
        assert not prov.errors, prov.errors
    finally:
        api.close()


@pytest.fixture
def engine(kubeconfig: str) -> Iterator[KubernetesEngine]:
    settings = PodSettings(
        namespace=os.environ.get("MCP_CODEEXEC_K8S_NAMESPACE", "default"),
        image=os.environ.get("MCP_CODEEXEC_IMAGE", PodSettings.image),
        runtime_class=os.environ.get("MCP_CODEEXEC_K8S_RUNTIME_CLASS") or None,
        instance="test-" + secrets.token_hex(4),  # this test's pods only
    )
    eng = KubernetesEngine(settings, kubeconfig=kubeconfig)
    yield eng
    eng.close()


@dataclass
class Running:
    id: str
    conn: AgentConnection
    started: float
    """Seconds from the create call to the agent's hello reply."""


@asynccontextmanager
async def running_sandbox(engine: KubernetesEngine) -> AsyncIterator[Running]:
    """A sandbox pod with its agent answering over the attach stream; removed on exit."""
    t0 = anyio.current_time()
    rec, pod = await anyio.to_thread.run_sync(lambda: engine.create("tester"))
    try:
        stream, docker_mux = await engine.open_stream(rec, pod)
        assert docker_mux is False
        conn = AgentConnection(stream, docker_mux=False, name=rec.id)
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.run_reader)
            try:
                hello = await conn.request({"op": "hello"}, timeout=30)
                assert hello["type"] == "result", hello
                yield Running(rec.id, conn, anyio.current_time() - t0)
            finally:
                await conn.aclose()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(engine.remove, rec.id)
            await anyio.to_thread.run_sync(engine.wait_gone, rec.id)
