"""Per-principal call rate limit for HTTP deployments: a token bucket per principal.

A shared HTTP server serves several token holders; one of them looping on tool calls must not
starve the others of the engine. Each principal may make ``per_minute`` calls a minute on average
and up to ``burst`` back to back; a call past that is answered ``too_many_requests`` (the hosted
tool's own code for it) with the wait in the message, and runs nothing. stdio and in-process
callers have the machine to themselves and are not limited.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class CallRateLimiter:
    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive (disable the limiter instead)")
        self.rate = per_minute / 60.0  # tokens a second
        self.burst = max(1, burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}  # principals come from configured tokens: a bounded set
        self._lock = threading.Lock()

    def admit(self, principal: str) -> float:
        """0.0 when the call may run (a token is taken); otherwise the seconds until one is due."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(principal)
            if bucket is None:
                bucket = self._buckets[principal] = _Bucket(float(self.burst), now)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate
