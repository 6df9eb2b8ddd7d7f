"""``/workspace`` on a PersistentVolumeClaim (``k8s_storage_class``), through the server's own
lifecycle (``Sandbox`` on the kubernetes backend): the files outlive the pod (an eviction mid-call, an
idle stop), expiry removes pod, policy and claim (and so the volume), and the claim's size is a hard
limit. On the local cluster the class is the tests' own loop-backed provisioner (``provisioner.py``)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from mcp_codeexec import Sandbox
from mcp_codeexec.config import Settings
from mcp_codeexec.engines.kubernetes import KubernetesEngine, object_name
from tests.k8s.conftest import WorkspaceClass
from tests.k8s.provisioner import parse_quantity
from tests.k8s.test_faults import engine_of, no_leftovers
from tests.support.backends import backend_settings

pytestmark = pytest.mark.anyio

MiB = 1024**2


@pytest.fixture
def pvc(kubeconfig: str, workspace_class: WorkspaceClass, tmp_path: Path) -> Settings:
    return backend_settings("kubernetes", tmp_path, k8s_storage_class=workspace_class.name)


def pod_uid(engine: KubernetesEngine, cid: str) -> str | None:
    pod = engine._read_pod(cid)
    return None if pod is None else pod["metadata"]["uid"]


async def until(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(timeout):
        while not await anyio.to_thread.run_sync(predicate):
            await anyio.sleep(0.2)


async def no_volumes_left(engine: KubernetesEngine, workspace_class: WorkspaceClass, cid: str) -> None:
    """No pod, policy or claim of the test's instance, and (with the test provisioner) no PV or
    mounted filesystem left for the sandbox's claim."""
    await no_leftovers(engine)
    prov = workspace_class.provisioner
    if prov is not None:
        claim = f"{engine.settings.namespace}/{object_name(cid)}"
        await until(lambda: claim not in prov.volumes().values(), 30)
        assert claim not in [c for _, c in prov.made.values()]  # its filesystem unmounted and removed


def evict(engine: KubernetesEngine, cid: str) -> None:
    """The Eviction API (what a drain or the descheduler uses): the pod is deleted, its claim stays."""
    s = engine.settings
    engine.core.create_namespaced_pod_eviction(object_name(cid), s.namespace, {
        "apiVersion": "policy/v1beta1", "kind": "Eviction",
        "metadata": {"name": object_name(cid), "namespace": s.namespace}})


async def test_an_evicted_pod_is_rebuilt_around_its_claim_and_the_same_container_carries_on_with_its_files(
        pvc: Settings, workspace_class: WorkspaceClass) -> None:
    engine = engine_of(pvc)
    async with Sandbox(pvc) as sb:
        assert (await sb.bash("echo kept > /workspace/kept.txt")).stdout == ""
        cid = sb.container_id
        assert cid is not None
        first = await anyio.to_thread.run_sync(pod_uid, engine, cid)
        claim = await anyio.to_thread.run_sync(engine._read_pvc, cid)
        assert claim is not None and claim["status"]["phase"] == "Bound"
        pod = await anyio.to_thread.run_sync(engine._read_pod, cid)
        assert pod["spec"]["volumes"][0] == {"name": "workspace", "persistentVolumeClaim": {"claimName": object_name(cid)}}
        results = []

        async def long_call() -> None:
            results.append(await sb.bash("echo ran >> /workspace/count.txt; sleep 60"))

        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(long_call)
            await anyio.sleep(1.0)  # the command is running in the pod
            await anyio.to_thread.run_sync(evict, engine, cid)
        assert anyio.current_time() - started < 30
        assert results[0].error_code == "unavailable"  # the stream ended under the call: said, not lost
        after = await sb.bash("cat /workspace/kept.txt /workspace/count.txt")
        assert getattr(after, "error_code", None) is None and after.stdout == "kept\nran\n"  # nothing lost, nothing ran twice
        assert sb.container_id == cid
        rebuilt = await anyio.to_thread.run_sync(engine._read_pod, cid)
        assert rebuilt is not None and rebuilt["metadata"]["uid"] != first  # a new pod around the same claim
        # ... with only the lifetime that is left as its backstop deadline
        assert rebuilt["spec"]["activeDeadlineSeconds"] < pod["spec"]["activeDeadlineSeconds"]
    await no_volumes_left(engine, workspace_class, cid)


async def test_an_idle_sandbox_loses_its_pod_keeps_its_claim_and_comes_back_with_its_files(
        pvc: Settings, workspace_class: WorkspaceClass) -> None:
    idle = pvc.model_copy(update={"idle_stop_seconds": 1.0, "reap_interval_seconds": 0.5})
    engine = engine_of(idle)
    async with Sandbox(idle) as sb:
        await sb.bash("echo kept > /workspace/kept.txt")
        cid = sb.container_id
        assert cid is not None
        first = await anyio.to_thread.run_sync(pod_uid, engine, cid)
        await until(lambda: pod_uid(engine, cid) is None, 30)  # the idle stop deleted the pod
        claim = await anyio.to_thread.run_sync(engine._read_pvc, cid)
        assert claim is not None and claim["status"]["phase"] == "Bound"  # ... and kept its claim
        assert [c for c, _ in await anyio.to_thread.run_sync(engine.detached)] == [cid]
        assert cid in await anyio.to_thread.run_sync(engine.resumable, "local")  # a new stdio session resumes it
        back = await sb.bash("cat /workspace/kept.txt")
        assert getattr(back, "error_code", None) is None and back.stdout == "kept\n"
        assert sb.container_id == cid
        assert (await anyio.to_thread.run_sync(pod_uid, engine, cid)) not in (None, first)
    await no_volumes_left(engine, workspace_class, cid)


async def test_expiry_removes_pod_policy_claim_and_volume_of_a_sandbox_stopped_idle(
        pvc: Settings, workspace_class: WorkspaceClass) -> None:
    short = pvc.model_copy(update={"container_ttl_seconds": 12.0, "idle_stop_seconds": 1.0, "reap_interval_seconds": 0.5})
    engine = engine_of(short)
    async with Sandbox(short, keep=True) as sb:
        assert (await sb.bash("echo hi > /workspace/f; cat /workspace/f")).stdout == "hi\n"
        cid = sb.container_id
        assert cid is not None
        await until(lambda: pod_uid(engine, cid) is None, 30)  # stopped idle: only the claim (and policy) remain
        assert await anyio.to_thread.run_sync(engine._read_pvc, cid) is not None
        # The lifecycle's own reaper removes it once it expires, though no pod is left.
        await no_volumes_left(engine, workspace_class, cid)
        late = await sb.bash("echo late")
        assert late.error_code == "unavailable"  # the hosted code for container_expired


async def test_the_claims_size_is_a_hard_limit_writes_past_it_fail_with_enospc(
        pvc: Settings, workspace_class: WorkspaceClass) -> None:
    small = pvc.model_copy(update={"disk_bytes": 64 * MiB})
    engine = engine_of(small)
    async with Sandbox(small) as sb:
        assert getattr(await sb.bash("true"), "error_code", None) is None
        cid = sb.container_id
        assert cid is not None
        claim = await anyio.to_thread.run_sync(engine._read_pvc, cid)
        assert claim["spec"]["resources"]["requests"]["storage"] == "64Mi"
        capacity = parse_quantity(claim["status"]["capacity"]["storage"])  # a real class may round up
        over = capacity // MiB + 32
        r = await sb.bash(f"head -c {over}M /dev/zero > /workspace/big; echo rc=$?; stat -c %s /workspace/big; "
                          "rm /workspace/big; head -c 8M /dev/zero > /workspace/fits && echo fits")
        assert "No space left on device" in r.stderr, r
        written = int(r.stdout.splitlines()[1])
        assert r.stdout.splitlines()[0] == "rc=1" and capacity // 2 < written < over * MiB
        assert r.stdout.splitlines()[2] == "fits"  # the space comes back once the file is gone
    await no_volumes_left(engine, workspace_class, cid)
