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
from mcp_codeexec.errors import Unavailable
from mcp_codeexec.sandboxes import SandboxManager, connect

from . import scenarios

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
    ]
    for name, step in steps:
        if only and name not in only:
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
    parser.add_argument("--only", help="comma-separated subset: warm,baseline,first_call,concurrency")
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
            say(f"{log.name}:\n{log.read_text(errors='replace')[-2000:]}")
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
