"""Replicas bench: calls/s and latency with 1, 2 and 3 HTTP replicas sharing one PostgreSQL.

    python -m bench.replicas                 # 1/2/3 replicas + a SQLite single-server baseline
    python -m bench.replicas --seconds 5 --clients 4

Each replica is ``mcp-codeexec serve --transport http`` on its own 127.0.0.1 port, all on the same
Docker engine and one throwaway PostgreSQL cluster (tests/support/postgres.py, Debian's binaries).
Every client owns one container (made once) and sends session-less (2026-07-28) ``bash true``
calls with its container_id, round-robin over the replicas, for ``--seconds``. Also measured:
the database's share of a call (the one statement a paced call costs: the shared token bucket),
and a session (Mcp-Session-Id) request against a session-less one on the same replica.
Writes bench/results/replicas.json. Every container is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mcp_codeexec.config import load_settings
from tests.integration.test_replicas import Replica
from tests.support.http_probe import legacy_call, modern_call, open_legacy_session, tool_result
from tests.support.postgres import postgres_cluster
from tests.support.servers import new_token, remove_installation


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@contextlib.contextmanager
def fleet(n: int, data_dir: Path, database_url: str | None, token: str) -> Iterator[tuple[Any, list[Replica]]]:
    values: dict[str, Any] = {"data_dir": str(data_dir), "pool_size": 0, "call_timeout": 30.0, "reap_interval_seconds": 3600.0,
                              "http_calls_per_minute": 1e9, "http_call_burst": 10**9, "config_file": None}
    if database_url:
        values["database_url"] = database_url
    os.environ.setdefault("MCP_CODEEXEC_CONFIG", str(data_dir / "no-config.toml"))
    settings = load_settings(**values)
    reps = [Replica(settings, token) for _ in range(n)]
    try:
        for r in reps:
            r.wait_ready()
        yield settings, reps
    finally:
        for r in reps:
            r.stop()
        remove_installation(settings)


def call(http: httpx2.Client, url: str, token: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return tool_result(modern_call(http, url, token, "bash_code_execution", arguments))


def load(reps: list[Replica], token: str, clients: int, seconds: float) -> dict[str, float]:
    containers = []
    with httpx2.Client(timeout=60) as http:
        for i in range(clients):  # one container each (a session's own), made through replica i mod N
            url = reps[i % len(reps)].url
            sid = open_legacy_session(http, url, token)
            res = tool_result(legacy_call(http, url, token, sid, "bash_code_execution", {"command": "true"}))
            containers.append(res["_meta"]["container"]["id"])
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(i: int) -> None:
        nonlocal errors
        n = i
        with httpx2.Client(timeout=60) as http:
            while time.monotonic() < stop_at:
                url = reps[n % len(reps)].url
                n += 1
                t0 = time.perf_counter()
                try:
                    res = call(http, url, token, {"command": "true", "container_id": containers[i]})
                    ok = not res.get("isError")
                except (httpx2.HTTPError, AssertionError):
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        latencies.append(dt)
                    else:
                        errors += 1

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    return {"calls": len(latencies), "errors": errors, "calls_per_s": len(latencies) / elapsed,
            "p50_ms": pct(latencies, 50) * 1000, "p99_ms": pct(latencies, 99) * 1000,
            "distinct_containers": len(set(containers))}


def db_share(database_url: str, call_p50_ms: float) -> dict[str, float]:
    from mcp_codeexec.pg_store import PgCallRateLimiter

    limiter = PgCallRateLimiter(database_url, per_minute=1e9, burst=10**9)
    times = []
    for _ in range(300):
        t0 = time.perf_counter()
        limiter.admit("bench")
        times.append(time.perf_counter() - t0)
    p50 = statistics.median(times) * 1000
    return {"pacing_statement_p50_ms": p50, "db_share_of_call_p50": p50 / call_p50_ms}


def session_vs_stateless(url: str, token: str, n: int = 60) -> dict[str, float]:
    with httpx2.Client(timeout=60) as http:
        cid = call(http, url, token, {"command": "true"})["_meta"]["container"]["id"]
        sid = open_legacy_session(http, url, token)
        tool_result(legacy_call(http, url, token, sid, "bash_code_execution", {"command": "true", "container_id": cid}))
        stateless, session = [], []
        for i in range(n):
            t0 = time.perf_counter()
            call(http, url, token, {"command": "true", "container_id": cid})
            stateless.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            tool_result(legacy_call(http, url, token, sid, "bash_code_execution", {"command": "true", "container_id": cid}, id=i + 3))
            session.append(time.perf_counter() - t0)
    return {"stateless_p50_ms": statistics.median(stateless) * 1000, "session_p50_ms": statistics.median(session) * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--replicas", default="1,2,3")
    args = parser.parse_args(argv)
    token = new_token()
    out: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                           "load_avg": os.getloadavg(), "python": platform.python_version(),
                           "clients": args.clients, "seconds": args.seconds, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="mcp-codeexec-bench-replicas-") as tmp, postgres_cluster() as pg:
        import psycopg

        base = Path(tmp)
        print("sqlite, 1 server ...", file=sys.stderr)
        with fleet(1, base / "sqlite", None, token) as (_, reps):
            out["runs"]["sqlite_1"] = load(reps, token, args.clients, args.seconds)
        for n in map(int, args.replicas.split(",")):
            name = f"b_{n}_{secrets.token_hex(3)}"
            with psycopg.connect(pg, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            url = pg.rsplit("/", 1)[0] + "/" + name
            print(f"postgres, {n} replica(s) ...", file=sys.stderr)
            with fleet(n, base / f"pg{n}", url, token) as (_, reps):
                out["runs"][f"postgres_{n}"] = load(reps, token, args.clients, args.seconds)
                if n == max(map(int, args.replicas.split(","))):
                    out["db"] = db_share(url, out["runs"][f"postgres_{n}"]["p50_ms"])
                    out["session_vs_stateless"] = session_vs_stateless(reps[0].url, token)
    out["load_avg_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "replicas.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
