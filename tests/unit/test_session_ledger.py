"""Open MCP sessions per principal (mcp_codeexec.session_ledger), with a fake clock."""

from __future__ import annotations

from mcp_codeexec.session_ledger import SessionLedger
from tests.support.clock import FakeClock


def test_sessions_count_per_principal_up_to_the_cap() -> None:
    ledger = SessionLedger(per_principal=2, idle_timeout=100, clock=FakeClock())
    ledger.opened("alice", "s1")
    assert not ledger.at_cap("alice")
    ledger.opened("alice", "s2")
    ledger.opened("alice", "s2")  # every response of a session names it again: counted once
    assert ledger.at_cap("alice") and ledger.open_count("alice") == 2
    assert not ledger.at_cap("bob")


def test_a_delete_or_a_404_for_the_owner_frees_the_slot_and_another_principal_cannot() -> None:
    ledger = SessionLedger(per_principal=2, idle_timeout=100, clock=FakeClock())
    ledger.opened("alice", "s1")
    ledger.opened("alice", "s2")
    assert ledger.begin("bob", "s1") is False  # bob presenting alice's id (the SDK answers him 404)
    ledger.end("bob", "s1", gone=True)
    assert ledger.open_count("alice") == 2
    assert ledger.begin("alice", "s1")
    ledger.end("alice", "s1", gone=True)
    assert ledger.open_count("alice") == 1


def test_idle_sessions_expire_like_the_sdks_but_not_while_a_request_is_in_flight() -> None:
    clock = FakeClock()
    ledger = SessionLedger(per_principal=5, idle_timeout=100, clock=clock)
    ledger.opened("alice", "idle")
    ledger.opened("alice", "streaming")
    ledger.begin("alice", "streaming")  # e.g. a long GET event stream
    clock.now += 101
    assert ledger.open_count("alice") == 1
    ledger.end("alice", "streaming", gone=False)
    clock.now += 50
    assert ledger.open_count("alice") == 1
    clock.now += 51
    assert ledger.open_count("alice") == 0
