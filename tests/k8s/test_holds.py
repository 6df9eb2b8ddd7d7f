"""Servers on two machines never both use one sandbox: the hold on the pod (engines/k8s_holds.py).

Two engines stand for two machines: each has its own lock directory (a machine's flocks are
invisible to the other) and its own machine id; they share the cluster, the namespace and the
instance, as replicas of one Deployment do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_codeexec.engines.k8s_holds import A_HELD_BY, PodHolds
from mcp_codeexec.engines.kubernetes import KubernetesEngine


@pytest.fixture
def machines(engine: KubernetesEngine, kubeconfig: str, tmp_path: Path) -> Iterator[tuple[KubernetesEngine, KubernetesEngine]]:
    other = KubernetesEngine(engine.settings, kubeconfig=kubeconfig)
    engine.leases = PodHolds(tmp_path / "a", engine, machine="machine-a", ttl=2.0)
    other.leases = PodHolds(tmp_path / "b", other, machine="machine-b", ttl=2.0)
    yield engine, other
    for eng in (engine, other):
        eng.leases.release_all()
    other.close()


def test_a_sandbox_held_on_one_machine_is_neither_resumed_nor_taken_on_another(
        machines: tuple[KubernetesEngine, KubernetesEngine]) -> None:
    a, b = machines
    record, _ = a.create("alice")
    try:
        assert a.leases.acquire(record.id)
        pod = a._read_pod(record.id)
        assert pod is not None and pod["metadata"]["annotations"][A_HELD_BY] == "machine-a"
        assert not b.leases.acquire(record.id)
        assert record.id not in b.resumable("alice")

        a.leases.release(record.id)  # let go: the other machine may resume it now
        assert record.id in b.resumable("alice")
        assert b.leases.acquire(record.id)
        assert not a.leases.acquire(record.id)

        b.leases.stop()  # machine b dies holding it: no more renewals, no release
        time.sleep(2.5)
        assert record.id in a.resumable("alice")
        assert a.leases.acquire(record.id)
    finally:
        a.remove(record.id)
        a.wait_gone(record.id)


def test_a_hold_is_renewed_while_held_and_two_machines_racing_get_one_winner(
        machines: tuple[KubernetesEngine, KubernetesEngine]) -> None:
    a, b = machines
    record, _ = a.create("alice")
    try:
        wins: list[str] = []
        barrier = threading.Barrier(2)

        def take(engine: KubernetesEngine, name: str) -> None:
            barrier.wait()
            if engine.leases.acquire(record.id):
                wins.append(name)

        threads = [threading.Thread(target=take, args=(e, n)) for e, n in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(wins) == 1, wins
        winner, loser = (a, b) if wins == ["a"] else (b, a)
        time.sleep(3.0)  # past the 2 s hold: only renewals keep it
        assert not loser.leases.acquire(record.id)
        assert record.id not in loser.resumable("alice")
        winner.leases.release(record.id)
    finally:
        a.remove(record.id)
        a.wait_gone(record.id)
