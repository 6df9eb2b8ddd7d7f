"""`mcp-codeexec containers --backend kubernetes` against the real cluster, as a user runs it
(subprocesses): ls shows the pod, stop deletes it and keeps its claim (listed as stopped), the next
call brings it back with its files, rm leaves no pod, policy, claim or volume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from mcp_codeexec import Sandbox
from mcp_codeexec.config import Settings
from tests.k8s.conftest import WorkspaceClass
from tests.k8s.test_faults import engine_of
from tests.k8s.test_pvc import no_volumes_left, pod_uid
from tests.support.backends import backend_settings
from tests.support.servers import server_env

pytestmark = pytest.mark.anyio


def containers(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = server_env(settings)
    for name in ("BACKEND", "KUBECONFIG", "K8S_STORAGE_CLASS", "K8S_NAMESPACE"):
        env.pop(f"MCP_CODEEXEC_{name}", None)  # given as flags instead, as a user would
    flags = ["--backend", "kubernetes", "--kubeconfig", str(settings.kubeconfig), "--namespace", settings.k8s_namespace,
             "--storage-class", str(settings.k8s_storage_class)]
    return subprocess.run([sys.executable, "-m", "mcp_codeexec", "containers", *args, *flags], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


async def test_containers_ls_stop_and_rm_address_the_sandbox_pods(kubeconfig: str, workspace_class: WorkspaceClass,
                                                                   tmp_path: Path) -> None:
    settings = backend_settings("kubernetes", tmp_path, k8s_storage_class=workspace_class.name)
    engine = engine_of(settings)
    async with Sandbox(settings, keep=True) as sb:
        await sb.bash("echo kept > /workspace/kept.txt")
        cid = sb.container_id
        assert cid is not None
    listed = await anyio.to_thread.run_sync(containers, settings, "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["id"] == cid and row["status"] == "running" and row["owner"] == "local" and row["quota"] == "pvc"

    stopped = await anyio.to_thread.run_sync(containers, settings, "stop", cid)
    assert stopped.returncode == 0 and stopped.stdout == f"stopped {cid}\n", stopped.stderr
    assert await anyio.to_thread.run_sync(pod_uid, engine, cid) is None  # the pod is gone, the claim kept
    (row,) = json.loads((await anyio.to_thread.run_sync(containers, settings, "ls", "--json")).stdout)
    assert row["id"] == cid and row["status"] == "stopped"
    async with Sandbox(settings, cid) as again:  # the next call rebuilds the pod around the claim
        assert (await again.bash("cat /workspace/kept.txt")).stdout == "kept\n"

    removed = await anyio.to_thread.run_sync(containers, settings, "rm", cid)
    assert removed.returncode == 0 and removed.stdout == f"removed {cid}\n", removed.stderr
    await no_volumes_left(engine, workspace_class, cid)
