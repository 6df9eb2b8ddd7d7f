"""Two servers of one installation on the real cluster: a coordination.k8s.io Lease makes exactly one
of them fill the warm pool and reap; the other takes over when the first stops renewing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_codeexec.backends.sandbox import SandboxBackend
from mcp_codeexec.config import Settings
from mcp_codeexec.database import open_file_store
from mcp_codeexec.engines.base import installation_label
from mcp_codeexec.engines.k8s_lease import LEASE_PREFIX, LeaseElection
from mcp_codeexec.engines.kubernetes import L_INSTANCE, L_POOL, MANAGED_BY, MANAGER
from tests.support.backends import backend_settings

from .test_faults import engine_of, no_leftovers

pytestmark = pytest.mark.anyio

LEASE_SECONDS = 3.0


def counting(engine: Any) -> list[int]:
    """Wrap ``engine.reap`` so the test sees which server reaps."""
    calls: list[int] = []
    real: Callable[[], list[str]] = engine.reap

    def reap() -> list[str]:
        calls.append(1)
        return real()

    engine.reap = reap
    return calls


def pool_pods(engine: Any) -> list[str]:
    s = engine.settings
    selector = f"{MANAGED_BY}={MANAGER},{L_INSTANCE}={s.instance},{L_POOL}=1"
    return [p.metadata.name for p in engine.core.list_namespaced_pod(s.namespace, label_selector=selector).items
            if not p.metadata.deletion_timestamp]


def election(settings: Settings, engine: Any, who: str) -> LeaseElection:
    from kubernetes import client

    api = client.CoordinationV1Api(engine.api_client)
    return LeaseElection(api, settings.k8s_namespace, LEASE_PREFIX + installation_label(settings.data_dir),
                         identity=who, duration=LEASE_SECONDS)


async def wait_for(what: Callable[[], bool], seconds: float, why: str) -> None:
    try:
        with anyio.fail_after(seconds):
            while not await anyio.to_thread.run_sync(what):
                await anyio.sleep(0.3)
    except TimeoutError:
        raise AssertionError(f"not within {seconds:g} s: {why}") from None


async def test_one_server_fills_the_pool_and_reaps_and_the_other_takes_over_when_it_stops(tmp_path: Path, kubeconfig: str) -> None:
    settings = backend_settings("kubernetes", tmp_path, pool_size=1, reap_interval_seconds=1.0, k8s_lease_seconds=LEASE_SECONDS)
    eng_a, eng_b, probe = engine_of(settings), engine_of(settings), engine_of(settings)
    reaps_a, reaps_b = counting(eng_a), counting(eng_b)
    lease_a, lease_b = election(settings, eng_a, "server-a").start(), election(settings, eng_b, "server-b").start()
    store = open_file_store(settings)
    try:
        assert lease_a.is_leader() and not lease_b.is_leader()
        async with SandboxBackend(settings, store, engine=eng_a) as a:
            a.is_leader = lease_a.is_leader
            b = SandboxBackend(settings, store, engine=eng_b)
            b.is_leader = lease_b.is_leader
            async with b:
                await wait_for(lambda: len(pool_pods(probe)) == 1, 90, "the leader fills its pool")
                await anyio.sleep(3)  # several reap intervals and follower rechecks
                assert len(pool_pods(probe)) == 1, "only the leader keeps a pool"
                assert reaps_a and not reaps_b, (len(reaps_a), len(reaps_b))

                # The leader dies without letting go: its renewals stop; the Lease expires.
                lease_a._stop.set()
                assert lease_a._thread is not None
                lease_a._thread.join(timeout=10)
                lease_a._leader = False  # what a dead process would say
                stopped = anyio.current_time()
                await wait_for(lease_b.is_leader, 4 * LEASE_SECONDS, "the follower takes the expired lease")
                took = anyio.current_time() - stopped
                assert took >= LEASE_SECONDS * 0.5, took
                await wait_for(lambda: len(b._pool) == 1, 90, "the new leader fills its own pool")
                before = len(reaps_b)
                await anyio.sleep(2.5)
                assert len(reaps_b) > before
    finally:
        lease_b.stop()
        lease_a.stop()
        store.close()
        await anyio.to_thread.run_sync(eng_a.remove_installation)  # the Lease too
        await no_leftovers(probe)
