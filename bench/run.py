"""``python -m bench``: run every measurement against the real Docker engine, print a table (or one
JSON object with ``--json``), write bench/results/latest.json.

Everything runs under a dedicated, temporary data directory; every container it creates carries
that directory's installation label and is removed at the end, even on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio

from mcp_codeexec.config import load_settings
from mcp_codeexec.engines.docker import SandboxManager, connect
from mcp_codeexec.errors import Unavailable

from . import ptc, scenarios, user

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "latest.json"
README = HERE / "README.md"
README_START = "<!-- bench:results:start -->"
README_END = "<!-- bench:results:end -->"

# (key, label, unit, target as (op, value) or None)
TABLE: list[tuple[str, str, str, tuple[str, float] | None]] = [
    ("warm_bash_p50_ms", "warm bash `true`, p50", "ms", ("<=", 5)),
    ("warm_bash_p99_ms", "warm bash `true`, p99", "ms", None),
    ("baseline_docker_exec_p50_ms", "baseline: `docker exec` (exec_run), p50", "ms", None),
    ("warm_speedup", "warm speedup (baseline p50 / ours p50)", "x", (">=", 10)),
    ("editor_roundtrip_p50_ms", "editor create+view+str_replace, p50", "ms", None),
    ("warm_repl_p50_ms", "warm REPL cell `pass`, p50", "ms", None),
    ("warm_repl_p99_ms", "warm REPL cell `pass`, p99", "ms", None),
    ("warm_repl_bash_p50_ms", "bash `true` interleaved with those cells, p50", "ms", None),
    ("warm_repl_bash_p99_ms", "bash `true` interleaved with those cells, p99", "ms", None),
    ("repl_state_cell_p50_ms", "state-carrying REPL cell `x += 1`, p50", "ms", None),
    ("repl_first_cell_ms", "first REPL cell (starts the interpreter)", "ms", None),
    ("first_call_pooled_p50_ms", "first call of a new session, warm pool, p50", "ms", ("<=", 50)),
    ("first_call_cold_p50_ms", "first call of a new session, no pool, p50", "ms", None),
    ("first_call_speedup", "first call speedup (cold / pooled)", "x", (">=", 3)),
    ("first_call_immediate_p50_ms", "first call right after server start, pool filling, p50", "ms", None),
    ("concurrent_ok", "concurrent HTTP sessions OK (each its own container)", "", None),
    ("concurrent_p99_ms", "16 sessions' short calls at once, p99", "ms", None),
    ("concurrent_first_call_max_ms", "concurrent first calls (container start), max", "ms", None),
    ("server_rss_mb", "server RSS after the concurrency run", "MB", ("<=", 150)),
    ("per_container_overhead_mb", "idle sandbox memory (cgroup)", "MB", None),
    ("progress_overhead_ms", "progress callback overhead, short call p50", "ms", None),
    ("progress_notifications", "progress notifications in a long call", "", None),
    # what users feel (bench/user.py): floors and MCP warm calls in one run, back-to-back and spaced
    ("floor_fork_exec_p50_ms", "floor: host fork+exec `bash -c true`, p50", "ms", None),
    ("floor_fork_exec_spaced_p50_ms", "floor: host fork+exec, spaced, p50", "ms", None),
    ("floor_agent_ping_p50_ms", "floor: agent no-op round trip (attach stream), p50", "ms", None),
    ("floor_agent_ping_spaced_p50_ms", "floor: agent no-op round trip, spaced, p50", "ms", None),
    ("floor_docker_exec_p50_ms", "floor: `docker exec bash -c true`, p50", "ms", None),
    ("floor_docker_exec_spaced_p50_ms", "floor: `docker exec`, spaced, p50", "ms", None),
    ("stdio_warm_p50_ms", "MCP stdio warm `true`, back-to-back, p50", "ms", ("<=", 1.5)),
    ("stdio_warm_p99_ms", "MCP stdio warm `true`, back-to-back, p99", "ms", None),
    ("stdio_warm_spaced_p50_ms", "MCP stdio warm `true`, spaced, p50", "ms", ("<=", 2.0)),
    ("stdio_warm_spaced_p99_ms", "MCP stdio warm `true`, spaced, p99", "ms", None),
    ("http_warm_p50_ms", "MCP HTTP warm `true`, back-to-back, p50", "ms", None),
    ("http_warm_p99_ms", "MCP HTTP warm `true`, back-to-back, p99", "ms", None),
    ("http_warm_spaced_p50_ms", "MCP HTTP warm `true`, spaced, p50", "ms", None),
    ("http_warm_spaced_p99_ms", "MCP HTTP warm `true`, spaced, p99", "ms", None),
    ("stdio_warm_server_cpu_ms", "server CPU per warm call, stdio, back-to-back", "ms", None),
    ("stdio_warm_spaced_server_cpu_ms", "server CPU per warm call, stdio, spaced", "ms", None),
    ("http_warm_server_cpu_ms", "server CPU per warm call, HTTP, back-to-back", "ms", ("<=", 1.0)),
    ("http_warm_spaced_server_cpu_ms", "server CPU per warm call, HTTP, spaced", "ms", None),
    ("stdio_warm_client_cpu_ms", "MCP Python client CPU per warm call, stdio, back-to-back", "ms", None),
    ("http_warm_client_cpu_ms", "MCP Python client CPU per warm call, HTTP, back-to-back", "ms", None),
    ("burst16_first_p50_ms", "burst: 16 new sessions at once, first result p50", "ms", None),
    ("burst16_first_p99_ms", "burst: 16 new sessions at once, first result p99", "ms", None),
    ("burst64_first_p50_ms", "burst: 64 new sessions at once (fresh server), first result p50", "ms", None),
    ("burst64_first_p99_ms", "burst: 64 new sessions at once (fresh server), first result p99", "ms", ("<=", 1000)),
    ("burst64_pool_refill_s", "pool grown to 64 after that burst, in", "s", None),
    ("burst64_again_first_p50_ms", "burst: 64 more at once (pool grown), first result p50", "ms", None),
    ("burst64_again_first_p99_ms", "burst: 64 more at once (pool grown), first result p99", "ms", ("<=", 1000)),
    ("saturation1_calls_per_s", "saturation: 1 session, calls/s", "/s", None),
    ("saturation1_p99_ms", "saturation: 1 session, p99", "ms", None),
    ("saturation4_calls_per_s", "saturation: 4 sessions, calls/s", "/s", None),
    ("saturation4_p99_ms", "saturation: 4 sessions, p99", "ms", None),
    ("saturation16_calls_per_s", "saturation: 16 sessions, calls/s", "/s", None),
    ("saturation16_p99_ms", "saturation: 16 sessions, p99", "ms", None),
    ("saturation64_calls_per_s", "saturation: 64 sessions, calls/s", "/s", None),
    ("saturation64_p99_ms", "saturation: 64 sessions, p99", "ms", None),
    # programmatic tool calling (bench/ptc.py): the same upstream echo three ways; 100 calls two ways
    ("ptc_cell_p50_ms", "PTC: `await x__echo` timed inside a sandbox's cell, p50", "ms", None),
    ("ptc_cell_p99_ms", "PTC: `await x__echo` timed inside a sandbox's cell, p99", "ms", None),
    ("ptc_registry_p50_ms", "PTC: the same through the host registry alone, p50", "ms", None),
    ("ptc_direct_p50_ms", "PTC: the same tool, direct MCP client, p50", "ms", None),
    ("ptc_direct_p99_ms", "PTC: the same tool, direct MCP client, p99", "ms", None),
    ("ptc_gather100_in_cell_ms", "PTC: 100 calls with asyncio.gather in one cell", "ms", None),
    ("ptc_model_side_requests", "PTC: 100 model-side calls, Messages API round trips", "", None),
    ("ptc_model_side_context_bytes", "PTC: 100 model-side calls, bytes into the model's context", "B", None),
    ("ptc_one_cell_requests", "PTC: one cell with gather, Messages API round trips", "", None),
    ("ptc_one_cell_context_bytes", "PTC: one cell with gather, bytes into the model's context", "B", None),
    ("ptc_context_ratio", "PTC: context bytes, model-side / one cell", "x", None),
    ("density_memory_per_sandbox_mib", "density: host memory per idle sandbox (cgroup + shim PSS)", "MiB", ("<=", 12)),
    ("density_cgroup_mib_p50", "density: of which cgroup memory.current", "MiB", None),
    ("density_disk_per_workspace_mib", "density: disk per empty workspace (allocated)", "MiB", ("<=", 8)),
    ("density_alone_p50_ms", "density: one session's warm p50, alone", "ms", None),
    ("density_loaded_p50_ms", "density: the same, while N sandboxes idle", "ms", None),
    ("density_loaded_vs_alone", "density: loaded / alone (back-to-back p50)", "x", ("<=", 1.1)),
    ("density_loaded_vs_alone_spaced", "density: loaded / alone (spaced p50)", "x", ("<=", 1.1)),
]


def machine() -> dict[str, Any]:
    def run(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            mem = f"{int(fh.readline().split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "docker": run("docker", "version", "--format", "{{.Server.Version}}"),
        "docker_runtime": os.environ.get("MCP_CODEEXEC_RUNTIME") or "runc",
        "python": platform.python_version(),
        "commit": run("git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"),
        "dirty": bool(run("git", "-C", str(HERE.parent), "status", "--porcelain", "--untracked-files=no")),
    }


def targets_met(results: dict[str, Any]) -> dict[str, bool]:
    met = {}
    for key, _, _, target in TABLE:
        if target is None or results.get(key) is None:
            continue
        op, value = target
        met[key] = results[key] <= value if op == "<=" else results[key] >= value
    if "concurrent_ok" in results:
        met["concurrent_ok"] = results["concurrent_ok"] == results["concurrent_sessions"]
    return met


def table(results: dict[str, Any]) -> str:
    met = results.get("targets_met", {})
    rows = ["| metric | value | target |", "|---|---:|---|"]
    for key, label, unit, target in TABLE:
        value = results.get(key)
        if value is None:
            continue
        if key == "concurrent_ok":
            shown = f"{value}/{results['concurrent_sessions']}"
            goal = f"{results['concurrent_sessions']}/{results['concurrent_sessions']}"
        else:
            shown = f"{_num(value)} {unit}".strip() if isinstance(value, (int, float)) else str(value)
            goal = f"{target[0].replace('<=', '≤').replace('>=', '≥')} {target[1]:g} {unit}".strip() if target else ""
        if key in met:
            goal += " ✅" if met[key] else " ❌"
        rows.append(f"| {label} | {shown} | {goal} |")
    return "\n".join(rows)


def _num(value: float) -> str:
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def header(results: dict[str, Any]) -> str:
    m = results["machine"]
    return (
        f"{results['date']} · commit {m['commit']}{' (dirty)' if m['dirty'] else ''} · {m['nproc']} CPUs ({m['cpu']}), "
        f"{m['memory']} RAM · Linux {m['kernel']} · Docker {m['docker']} ({m['docker_runtime']}) · "
        f"Python {m['python']} · image {results.get('image', '?')}"
    )


def update_readme(results: dict[str, Any]) -> None:
    text = README.read_text()
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    block = f"\n{header(results)}\n\n{table(results)}\n"
    README.write_text(text[:start] + block + text[end:])


def remove_everything(settings: Any) -> list[str]:
    """Remove every container of the bench's installation. A server that was just closed may still
    be removing its own pool container (Docker answers 409 "removal already in progress"): retry."""
    removed: list[str] = []
    for attempt in range(10):
        try:
            removed += SandboxManager(settings, connect()).remove_installation()
            return removed
        except Unavailable:
            if attempt == 9:
                raise
            time.sleep(0.5)
    return removed


async def run_all(plan: scenarios.Plan, settings: Any, logs: Path, only: set[str] | None, progress: Any) -> dict[str, Any]:
    results: dict[str, Any] = {}
    steps = [
        ("warm", lambda: scenarios.warm_session(settings, plan, logs)),
        ("baseline", lambda: anyio.to_thread.run_sync(scenarios.baseline_docker_exec, settings, plan)),
        ("first_call", lambda: scenarios.first_calls(settings, plan, logs)),
        ("concurrency", lambda: scenarios.concurrency(settings, plan, logs)),
        ("floors", lambda: user.floors(settings, plan)),
        ("mcp_warm", lambda: user.mcp_warm(settings, plan, logs)),
        ("ptc", lambda: ptc.scenario(settings, plan)),
        # heavy: only when asked for (--burst, --saturation, --density)
        ("burst", lambda: user.bursts(settings, plan, logs)),
        ("saturation", lambda: user.saturation(settings, plan, logs)),
        ("density", lambda: user.density(settings, plan, logs)),
    ]
    heavy = {"burst", "saturation", "density"}
    for name, step in steps:
        if (only and name not in only) or (name in heavy and name not in plan.heavy and not (only and name in only)):
            continue
        progress(f"{name} ...")
        started = time.perf_counter()
        results.update(await step())
        progress(f"{name} done in {time.perf_counter() - started:.1f} s")
        await anyio.to_thread.run_sync(remove_everything, settings)
    if "warm_bash_p50_ms" in results and "baseline_docker_exec_p50_ms" in results:
        results["warm_speedup"] = round(results["baseline_docker_exec_p50_ms"] / results["warm_bash_p50_ms"], 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast run (CI): every key, few samples")
    parser.add_argument("--sessions", type=int, help="concurrent sessions (default 16)")
    parser.add_argument("--only", help="comma-separated subset: warm,baseline,first_call,concurrency,floors,mcp_warm,ptc,"
                        "burst,saturation,density")
    parser.add_argument("--pause-ms", type=float, default=100.0, help="think time before each spaced call (default 100)")
    parser.add_argument("--burst", action="store_true", help="also: N new sessions at once (N = 16, 64; --burst-sizes)")
    parser.add_argument("--burst-sizes", help="comma-separated burst sizes (default 16,64)")
    parser.add_argument("--saturation", action="store_true", help="also: calls/s and p99 at N = 1, 4, 16, 64 sessions")
    parser.add_argument("--density", action="store_true", help="also: memory/disk per idle sandbox, latency beside --idle of them")
    parser.add_argument("--idle", type=int, help="idle sandboxes held by --density (default 256)")
    parser.add_argument("--output", type=Path, help=f"where to write the JSON (default {RESULTS.relative_to(HERE.parent)}; "
                        "--smoke writes nothing unless given)")
    parser.add_argument("--update-readme", action="store_true", help="write the table into bench/README.md")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (path printed)")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only print (and with --update-readme, write) "
                        "the table of an earlier run's results")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
        if args.update_readme:
            update_readme(results)
        print(header(results) + "\n\n" + table(results))
        return 0

    plan = scenarios.SMOKE if args.smoke else scenarios.Plan()
    if args.sessions:
        plan = scenarios.Plan(**{**plan.__dict__, "concurrent_sessions": args.sessions})
    only = set(args.only.split(",")) if args.only else None
    update: dict[str, Any] = {"pause_s": args.pause_ms / 1000,
                              "heavy": frozenset(n for n in ("burst", "saturation", "density") if getattr(args, n))}
    if args.burst_sizes:
        update["burst_sizes"] = tuple(int(n) for n in args.burst_sizes.split(","))
    if args.idle:
        update["idle_sandboxes"] = args.idle
    plan = scenarios.Plan(**{**plan.__dict__, **update})

    def say(message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="mcp-codeexec-bench-"))
    logs = work / "logs"
    logs.mkdir()
    settings = load_settings(
        data_dir=str(work / "data"),
        pool_size=1,
        reap_interval_seconds=3600.0,
        config_file=None,
        image=os.environ.get("MCP_CODEEXEC_IMAGE") or None,
        runtime=os.environ.get("MCP_CODEEXEC_RUNTIME") or None,
    )
    results: dict[str, Any] = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "smoke": args.smoke}
    failed = False
    try:
        manager = SandboxManager(settings, connect())
        results["image"] = manager.resolve_image()
        results["installation"] = manager.install  # the label on every container this run creates
        results["machine"] = machine()
        results.update(anyio.run(run_all, plan, settings, logs, only, say))
    except BaseException as exc:
        failed = True
        say(f"FAILED: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
        for log in sorted(logs.glob("*.log")):
            text = log.read_text(errors="replace")
            # harness.note_unfinished and dump_stacks: a stalled server's requests and threads
            dump = min((i for i in (text.find("--- requests unfinished"), text.find("--- py-spy dump")) if i >= 0), default=-1)
            say(f"{log.name}:\n{text[-2000:] if dump < 0 else text[max(0, dump - 2000):dump + 20000]}")
        if not isinstance(exc, Exception):
            raise
    finally:
        try:
            removed = remove_everything(settings)
        except Unavailable as exc:
            # Keep the data dir: its path is what labels the containers left behind.
            say(f"could not remove the bench's sandboxes ({exc.message}); remove them with "
                f"`python -m mcp_codeexec containers prune --all --yes --data-dir {settings.data_dir}`")
            failed = True
        else:
            if removed:
                say(f"removed {len(removed)} leftover sandboxes")
            if args.keep_logs:
                say(f"logs kept in {logs}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    if failed:
        return 1

    results["targets_met"] = targets_met(results)
    output = args.output or (None if args.smoke or only else RESULTS)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")
    if args.update_readme:
        update_readme(results)
    if args.json:
        print(json.dumps(results))
    else:
        print(header(results))
        print()
        print(table(results))
    return 0
