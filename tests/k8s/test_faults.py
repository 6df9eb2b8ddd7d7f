"""Faults on the real cluster, through the server's own lifecycle (``Sandbox`` on the kubernetes
backend): the API server restarted mid-call, the pod deleted mid-call, an expired sandbox, a node
with no room, two servers claiming one pool pod. After each: nothing ran twice, no file was lost
that the engine promises to keep, and no pod, NetworkPolicy or claim is left behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import pytest

from mcp_codeexec import Sandbox
from mcp_codeexec.config import Settings
from mcp_codeexec.engines import build_engine
from mcp_codeexec.engines.kubernetes import L_INSTANCE, MANAGED_BY, MANAGER, KubernetesEngine
from mcp_codeexec.errors import ContainerExpired, Unavailable
from tests.support.backends import backend_settings

pytestmark = pytest.mark.anyio

CLUSTER_SH = Path(__file__).with_name("cluster.sh")


@pytest.fixture
def k8s(kubeconfig: str, tmp_path: Path) -> Settings:
    return backend_settings("kubernetes", tmp_path)


def engine_of(settings: Settings) -> KubernetesEngine:
    engine = build_engine(settings)
    assert isinstance(engine, KubernetesEngine)
    return engine


def leftovers(engine: KubernetesEngine) -> list[str]:
    s = engine.settings
    selector = f"{MANAGED_BY}={MANAGER},{L_INSTANCE}={s.instance}"
    names = [p.metadata.name for p in engine.core.list_namespaced_pod(s.namespace, label_selector=selector).items]
    names += [p.metadata.name for p in engine.net.list_namespaced_network_policy(s.namespace, label_selector=selector).items]
    names += [c.metadata.name for c in engine.core.list_namespaced_persistent_volume_claim(s.namespace, label_selector=selector).items]
    return names


async def no_leftovers(engine: KubernetesEngine) -> None:
    """Deleted pods linger while they terminate: wait for them to go."""
    with anyio.fail_after(60):
        while left := await anyio.to_thread.run_sync(leftovers, engine):
            del left
            await anyio.sleep(0.2)


async def test_an_api_server_restart_mid_call_is_resumed_its_reply_replayed_and_nothing_runs_twice(k8s: Settings) -> None:
    engine = engine_of(k8s)
    async with Sandbox(k8s) as sb:
        await sb.bash("echo before > /workspace/kept.txt")
        await sb.code("kept = 41")
        results: dict[str, object] = {}

        async def slow_call() -> None:
            results["bash"] = await sb.bash("echo ran >> /workspace/count.txt; sleep 8; echo finished")

        async def call_during_the_outage() -> None:
            # Sent while the stream is broken: the replay finds the agent never got it; sent again, once.
            results["create"] = await sb.create("/workspace/during.txt", "written once\n")

        async def restart() -> None:
            await anyio.to_thread.run_sync(lambda: subprocess.run([str(CLUSTER_SH), "restart-apiserver", "1"], check=True,
                                                                   capture_output=True, timeout=120))

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_call)
            await anyio.sleep(1.5)  # the command is running in the pod
            tg.start_soon(restart)
            await anyio.sleep(0.7)  # the API server is down
            tg.start_soon(call_during_the_outage)
        first = results["bash"]
        # The attach stream broke under the call and was opened again once the API server was
        # back; the reply came by replay (or live), and the command ran exactly once.
        assert getattr(first, "error_code", None) is None, first
        assert first.stdout == "finished\n"
        assert getattr(results["create"], "error_code", None) is None, results["create"]
        after = await sb.bash("cat /workspace/count.txt /workspace/kept.txt /workspace/during.txt")
        assert after.stdout == "ran\nbefore\nwritten once\n"
        assert (await sb.code("print(kept + 1)")).stdout == "42\n"  # the interpreter lived through it
    await no_leftovers(engine)


async def test_a_pod_deleted_mid_call_fails_the_call_promptly_and_leaves_nothing(k8s: Settings) -> None:
    engine = engine_of(k8s)
    async with Sandbox(k8s) as sb:
        await sb.bash("true")
        cid = sb.container_id
        assert cid is not None
        results = []

        async def long_call() -> None:
            results.append(await sb.bash("sleep 60"))

        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(long_call)
            await anyio.sleep(1.0)
            await anyio.to_thread.run_sync(engine.remove, cid)
        assert anyio.current_time() - started < 30
        assert results[0].error_code == "unavailable"
        # Without a workspace claim the files died with the pod: the id is gone for good.
        gone = await sb.bash("echo again")
        assert gone.error_code == "unavailable"  # the hosted code for container_expired
        with pytest.raises(ContainerExpired):
            await anyio.to_thread.run_sync(engine.find, cid)
    await no_leftovers(engine)


async def test_an_expired_sandbox_is_refused_and_reaped(k8s: Settings, tmp_path: Path) -> None:
    short = k8s.model_copy(update={"container_ttl_seconds": 4.0})
    engine = engine_of(short)
    async with Sandbox(short, keep=True) as sb:
        assert (await sb.bash("echo hi")).stdout == "hi\n"
        cid = sb.container_id
        await anyio.sleep(4.5)
        late = await sb.bash("echo late")
        assert late.error_code == "unavailable"  # the hosted code for container_expired
        with pytest.raises(ContainerExpired, match="expired"):
            await anyio.to_thread.run_sync(engine.find, cid)
    assert cid in await anyio.to_thread.run_sync(engine.reap)
    await no_leftovers(engine)


async def test_a_node_without_room_answers_too_many_requests_naming_the_cause(k8s: Settings) -> None:
    huge = k8s.model_copy(update={"memory_bytes": 64 * 1024**4})  # 64 TiB: no node has it
    engine = engine_of(huge)
    with pytest.raises(Exception) as caught:
        await anyio.to_thread.run_sync(lambda: engine.create("tester"))
    assert getattr(caught.value, "error_code", None) == "too_many_requests", caught.value
    assert "Insufficient memory" in str(caught.value.message)
    await no_leftovers(engine)


async def test_two_servers_claiming_one_pool_pod_never_both_get_it(k8s: Settings) -> None:
    first, second = engine_of(k8s), engine_of(k8s)
    record, _ = await anyio.to_thread.run_sync(lambda: first.create("", pool=True))
    try:
        outcomes = []

        def claim(engine: KubernetesEngine, owner: str) -> None:
            try:
                engine.claim(record, owner)
                outcomes.append(owner)
            except Unavailable:
                outcomes.append("refused")

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, claim, first, "alice")
            tg.start_soon(anyio.to_thread.run_sync, claim, second, "bob")
        assert sorted(outcomes)[-1] == "refused" and len([o for o in outcomes if o != "refused"]) == 1
        found, _ = await anyio.to_thread.run_sync(first.find, record.id)
        assert found.owner in ("alice", "bob") and found.owner in outcomes and not found.pool
    finally:
        await anyio.to_thread.run_sync(first.remove, record.id)
    await no_leftovers(first)
