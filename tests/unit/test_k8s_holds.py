"""The pod hold's rules, without a cluster (tests/k8s/test_holds.py runs them on one)."""

from __future__ import annotations

from mcp_codeexec.engines.k8s_holds import A_HELD_BY, A_HELD_UNTIL, A_LAST_USED, held_elsewhere, last_used, machine_id


def pod(**annotations: str) -> dict:
    return {"metadata": {"annotations": annotations}}


def test_only_another_machines_unexpired_hold_counts() -> None:
    assert not held_elsewhere(pod(), "me", now=100.0)
    assert not held_elsewhere(pod(**{A_HELD_BY: "me", A_HELD_UNTIL: "200"}), "me", now=100.0)
    assert held_elsewhere(pod(**{A_HELD_BY: "them", A_HELD_UNTIL: "200"}), "me", now=100.0)
    assert not held_elsewhere(pod(**{A_HELD_BY: "them", A_HELD_UNTIL: "50"}), "me", now=100.0)
    assert not held_elsewhere(pod(**{A_HELD_BY: "them", A_HELD_UNTIL: "soon"}), "me", now=100.0)
    assert not held_elsewhere({"metadata": {}}, "me", now=100.0)


def test_last_used_and_the_machine_id_are_read_safely() -> None:
    assert last_used(pod(**{A_LAST_USED: "123.5"})) == 123.5
    assert last_used(pod(**{A_LAST_USED: "x"})) is None and last_used(pod()) is None
    mid = machine_id()
    assert mid and len(mid) <= 63 + 1 + 32 and mid == machine_id()
