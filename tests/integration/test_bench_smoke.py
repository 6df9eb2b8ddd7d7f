"""`python -m bench --smoke` runs end to end against the real engine and reports every key.

No timing thresholds here: the targets live in the bench report (bench/README.md), not in pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GVISOR = os.environ.get("MCP_CODEEXEC_RUNTIME") == "runsc"

KEYS = [
    "warm_bash_p50_ms", "warm_bash_p99_ms", "baseline_docker_exec_p50_ms", "warm_speedup",
    "editor_roundtrip_p50_ms", "first_call_pooled_p50_ms", "first_call_cold_p50_ms",
    "concurrent_sessions", "concurrent_ok", "concurrent_p99_ms", "server_rss_mb", "per_container_overhead_mb",
    "progress_overhead_ms", "progress_notifications",
    "warm_repl_p50_ms", "warm_repl_p99_ms", "warm_repl_bash_p50_ms", "repl_state_cell_p50_ms",
    # what users feel: the floors and spaced calls, same run
    "floor_fork_exec_p50_ms", "floor_agent_ping_p50_ms", "floor_agent_ping_spaced_p50_ms", "floor_docker_exec_p50_ms",
    "stdio_warm_p50_ms", "stdio_warm_spaced_p50_ms", "http_warm_p50_ms", "http_warm_spaced_p50_ms",
    "stdio_warm_server_cpu_ms", "http_warm_server_cpu_ms", "http_warm_spaced_server_cpu_ms", "stdio_warm_client_cpu_ms",
    # programmatic tool calling (bench/ptc.py): from a real cell, the registry, a direct client; context
    "ptc_cell_p50_ms", "ptc_cell_p99_ms", "ptc_registry_p50_ms", "ptc_direct_p50_ms", "ptc_gather100_in_cell_ms",
    "ptc_model_side_requests", "ptc_model_side_context_bytes", "ptc_one_cell_requests", "ptc_one_cell_context_bytes",
]
HEAVY_KEYS = [
    "burst4_first_p99_ms", "burst4_again_first_p99_ms", "saturation1_calls_per_s", "saturation2_p99_ms",
    "density_memory_per_sandbox_mib", "density_disk_per_workspace_mib", "density_loaded_vs_alone",
]


def run_bench(*args: str, module: str = "bench") -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", module, "--smoke", "--json", *args], cwd=ROOT, capture_output=True, text=True, timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-20000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=io.mcp-codeexec.install={results['installation']}"],
        capture_output=True, text=True, timeout=30, check=False,
    ).stdout.split()
    assert left == []
    return results


def concurrency_failed(results: dict) -> bool:
    return results.get("concurrent_p99_ms") is None or results.get("concurrent_ok") != results.get("concurrent_sessions")


def concurrency_diagnostics(results: dict) -> dict:
    """Why sessions failed: their errors and what the server logged meanwhile."""
    return {k: results.get(k) for k in ("concurrent_ok", "concurrent_sessions", "concurrent_errors", "concurrent_server_log")}


@pytest.mark.filterwarnings("always::UserWarning")  # the rerun notice below is a report, not an error
def test_the_bench_smoke_run_reports_every_key_and_leaves_no_container(docker_engine):
    results = run_bench()
    if concurrency_failed(results) and GVISOR:
        # Seen twice in CI under Debian's 2022 runsc (sessions of the concurrency run failing right
        # after many other tests) and never in dozens of reruns, nor under runc. A second failure
        # in a row fails the test, with both runs' diagnostics.
        first = concurrency_diagnostics(results)
        again = run_bench("--only", "concurrency")
        assert not concurrency_failed(again), (first, concurrency_diagnostics(again))
        # Passed on the rerun: still say so in the run's warnings summary, with the first run's why.
        warnings.warn(f"gVisor concurrency run failed once, passed on rerun: {first}", stacklevel=1)
        results.update({k: again[k] for k in again if k.startswith("concurrent_")})
    assert not concurrency_failed(results), concurrency_diagnostics(results)
    missing = [k for k in KEYS if results.get(k) is None]
    assert not missing, missing
    assert results["concurrent_containers"] == results["concurrent_sessions"]
    if "progress_ok" in results:
        assert results["progress_ok"] is True


@pytest.mark.filterwarnings("always::UserWarning")  # the rerun notice below is a report, not an error
def test_the_opt_in_burst_saturation_and_density_scenarios_run_in_smoke_form(docker_engine):
    try:
        results = run_bench("--only", "burst,saturation,density")
    except AssertionError as first:
        if not GVISOR:
            raise
        # Under Debian's 2022 runsc the saturation scenario's HTTP calls once got no answer for
        # 120 s (issue 11's stalled session; not seen in ~30 reruns). A failed run now carries the
        # server's thread stacks (bench/harness.dump_stacks): report them, and fail only if the
        # rerun fails too.
        results = run_bench("--only", "burst,saturation,density")
        warnings.warn(f"gVisor heavy bench scenarios failed once, passed on rerun: {str(first)[-6000:]}", stacklevel=1)
    missing = [k for k in HEAVY_KEYS if results.get(k) is None]
    assert not missing, missing
    assert results["burst4_errors"] == results["burst4_again_errors"] == results["density_errors"] == 0
    assert results["saturation_errors"] == []


def test_the_direct_path_ab_runs_in_smoke_form_and_leaves_no_container(docker_engine):
    """bench/direct_ab.py: the HTTP server with direct calls on and off, interleaved."""
    results = run_bench(module="bench.direct_ab")
    for side in ("direct", "sdk"):
        for key in ("back_to_back_server_cpu_ms", "spaced_server_cpu_ms", "back_to_back_p50_ms", "spaced_p50_ms"):
            assert results[f"{side}_{key}"] is not None, (side, key)
