"""The per-principal call pacing of HTTP deployments (mcp_codeexec.rate_limit)."""

from __future__ import annotations

import pytest

from mcp_codeexec.rate_limit import CallRateLimiter
from tests.support.clock import FakeClock


def test_a_burst_is_admitted_then_the_next_call_is_told_how_long_to_wait() -> None:
    clock = FakeClock()
    limiter = CallRateLimiter(per_minute=60, burst=3, clock=clock)
    assert [limiter.admit("alice") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.admit("alice") == pytest.approx(1.0)  # one token a second
    clock.now += 0.5
    assert limiter.admit("alice") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.admit("alice") == 0.0


def test_refused_calls_take_nothing_and_tokens_refill_only_up_to_the_burst() -> None:
    clock = FakeClock()
    limiter = CallRateLimiter(per_minute=120, burst=2, clock=clock)
    limiter.admit("a"), limiter.admit("a")
    for _ in range(100):  # a client hammering while limited does not push its wait further out
        assert limiter.admit("a") == pytest.approx(0.5)
    clock.now += 3600
    assert [limiter.admit("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]


def test_principals_have_separate_buckets() -> None:
    limiter = CallRateLimiter(per_minute=1, burst=1, clock=FakeClock())
    assert limiter.admit("alice") == 0.0
    assert limiter.admit("alice") > 0
    assert limiter.admit("bob") == 0.0


def test_a_rate_of_zero_is_a_configuration_error_not_a_silent_block() -> None:
    with pytest.raises(ValueError):
        CallRateLimiter(per_minute=0, burst=1)
