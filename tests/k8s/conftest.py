"""The kubernetes tier: real pods on a real cluster.

Runs only when MCP_CODEEXEC_KUBECONFIG names a kubeconfig (``tests/k8s/cluster.sh up`` prints one as
its last line); otherwise every test here skips at once. Under CI=true with MCP_CODEEXEC_K8S=1 a
missing cluster fails instead, so a CI job that promises a cluster cannot pass by skipping.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from mcp_codeexec.agent_client import AgentConnection
from mcp_codeexec.engines.kubernetes import KubernetesEngine, PodSettings
from tests.conftest import IN_CI

REQUIRED = IN_CI and os.environ.get("MCP_CODEEXEC_K8S") == "1"


def _why_not() -> str | None:
    path = os.environ.get("MCP_CODEEXEC_KUBECONFIG")
    if not path:
        return "no cluster: set MCP_CODEEXEC_KUBECONFIG (tests/k8s/cluster.sh up prints it)"
    if not Path(path).is_file():
        return f"MCP_CODEEXEC_KUBECONFIG={path} is not a file"
    if importlib.util.find_spec("kubernetes") is None:
        return "the kubernetes client is not installed (pip install -e '.[kubernetes]')"
    return None


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    why = _why_not()
    if why is not None:
        if REQUIRED:
            pytest.fail(f"CI=true and MCP_CODEEXEC_K8S=1 but {why}")
        pytest.skip(why)
    return os.environ["MCP_CODEEXEC_KUBECONFIG"]


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
    rec = await engine.create("tester")
    try:
        await engine.wait_running(rec.id, timeout=120)
        stream = await engine.open_stream(rec.id)
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
            await engine.delete(rec.id)
