"""The Lease election against a fake coordination API that keeps one Lease with resourceVersion
preconditions, as the API server does (a replace with a stale resourceVersion is 409)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

pytest.importorskip("kubernetes")

from kubernetes.client.exceptions import ApiException

from mcp_codeexec.engines.k8s_lease import LeaseElection


class _Serializer:
    @staticmethod
    def sanitize_for_serialization(obj: Any) -> Any:
        return copy.deepcopy(obj)


class FakeCoordination:
    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.api_client = _Serializer()
        self.down = False
        self.writes = 0

    def _check(self) -> None:
        if self.down:
            raise ApiException(status=503, reason="Service Unavailable")

    def read_namespaced_lease(self, name: str, namespace: str) -> dict[str, Any]:
        self._check()
        if self.lease is None:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.lease)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.writes += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)

    def create_namespaced_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        if self.lease is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        return self._store(body)

    def replace_namespaced_lease(self, name: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        return self._store(body)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def election(api: FakeCoordination, clock: Clock, who: str) -> LeaseElection:
    return LeaseElection(api, "ns", "mcp-codeexec-leader-x", identity=who, duration=15.0, clock=clock)


def test_the_first_server_leads_and_the_second_follows() -> None:
    api, clock = FakeCoordination(), Clock()
    a, b = election(api, clock, "a"), election(api, clock, "b")
    assert a.step() is True and b.step() is False
    assert a.is_leader() and not b.is_leader()
    assert api.lease is not None and api.lease["spec"]["holderIdentity"] == "a"


def test_a_follower_takes_over_only_after_the_lease_has_not_changed_for_its_duration() -> None:
    api, clock = FakeCoordination(), Clock()
    a, b = election(api, clock, "a"), election(api, clock, "b")
    a.step()
    b.step()
    clock.now += 10  # a stopped renewing (killed): b has seen no change for 10 s
    assert b.step() is False
    clock.now += 6
    assert not a.is_leader()  # a's own validity (2/3 of the duration) ran out before b could take over
    assert b.step() is True
    assert api.lease is not None and api.lease["spec"]["holderIdentity"] == "b"
    assert api.lease["spec"]["leaseTransitions"] == 1
    assert a.step() is False  # a comes back: b holds it now


def test_a_renewing_leader_keeps_the_lease_whatever_the_followers_clock() -> None:
    api, clock = FakeCoordination(), Clock()
    a, b = election(api, clock, "a"), election(api, clock, "b")
    a.step()
    for _ in range(10):
        clock.now += 5
        assert a.step() is True
        assert b.step() is False
    assert a.is_leader()


def test_a_stopped_leader_releases_the_lease_and_a_follower_takes_it_at_once() -> None:
    api, clock = FakeCoordination(), Clock()
    a, b = election(api, clock, "a"), election(api, clock, "b")
    a.step()
    b.step()
    a.stop()
    assert not a.is_leader()
    assert api.lease is not None and api.lease["spec"]["holderIdentity"] == ""
    assert b.step() is True


def test_two_followers_taking_an_expired_lease_at_once_get_one_leader() -> None:
    api, clock = FakeCoordination(), Clock()
    a, b, c = election(api, clock, "a"), election(api, clock, "b"), election(api, clock, "c")
    a.step()
    b.step()
    c.step()
    clock.now += 20
    # b and c both read the expired lease; c writes first, b's write carries a stale resourceVersion.
    real_read = api.read_namespaced_lease
    stale = real_read("mcp-codeexec-leader-x", "ns")
    api.read_namespaced_lease = lambda name, namespace: copy.deepcopy(stale)  # type: ignore[method-assign]
    assert c.step() is True
    assert b.step() is False  # 409
    api.read_namespaced_lease = real_read  # type: ignore[method-assign]
    assert b.step() is False and c.is_leader()


def test_a_leader_that_cannot_reach_the_api_stops_leading_before_anyone_can_take_over() -> None:
    api, clock = FakeCoordination(), Clock()
    a = election(api, clock, "a")
    a.step()
    api.down = True
    clock.now += 5
    assert a.step() is True  # still within its validity
    clock.now += 6
    assert a.step() is False  # 11 s > 10 s: no longer leads; a follower would wait 15 s
