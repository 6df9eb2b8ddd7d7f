"""`python -m bench --smoke` runs end to end against the real engine and reports every key.

No timing thresholds here: the targets live in the bench report (bench/README.md), not in pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

KEYS = [
    "warm_bash_p50_ms", "warm_bash_p99_ms", "baseline_docker_exec_p50_ms", "warm_speedup",
    "editor_roundtrip_p50_ms", "first_call_pooled_p50_ms", "first_call_cold_p50_ms",
    "concurrent_sessions", "concurrent_ok", "concurrent_p99_ms", "server_rss_mb", "per_container_overhead_mb",
    "progress_overhead_ms", "progress_notifications",
]


def test_the_bench_smoke_run_reports_every_key_and_leaves_no_container(docker_engine):
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=280
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    missing = [k for k in KEYS if results.get(k) is None]
    assert not missing, missing
    assert results["concurrent_ok"] == results["concurrent_sessions"], results.get("concurrent_errors")
    assert results["concurrent_containers"] == results["concurrent_sessions"]
    assert results["progress_ok"] is True
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=io.mcp-codeexec.install={results['installation']}"],
        capture_output=True, text=True, timeout=30,
    ).stdout.split()
    assert left == []
