"""The measurements. Each takes the bench settings (a dedicated data dir) and returns a dict of
results; none leaves a container running (the caller also removes the whole installation)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from mcp_codeexec.config import Settings
from mcp_codeexec.engines.docker import SandboxManager, connect

from .harness import (
    POOL_READY,
    ServerLog,
    http_server,
    http_session,
    ms,
    p50,
    pct,
    rss_mb,
    stdio_server_pid,
    stdio_session,
)

BASH = "bash_code_execution"
EDITOR = "text_editor_code_execution"
CODE = "code_execution"


@dataclass(frozen=True)
class Plan:
    warm_calls: int = 300
    repl_calls: int = 300
    warmup_calls: int = 30
    baseline_calls: int = 100
    editor_cycles: int = 50
    progress_pairs: int = 100
    long_call_seconds: float = 5.0
    first_call_trials: int = 7
    concurrent_sessions: int = 16
    concurrent_calls: int = 25
    # what users feel (bench/user.py)
    spaced_calls: int = 100
    pause_s: float = 0.1
    floor_calls: int = 200
    burst_sizes: tuple[int, ...] = (16, 64)
    saturation_levels: tuple[int, ...] = (1, 4, 16, 64)
    saturation_seconds: float = 5.0
    idle_sandboxes: int = 256
    heavy: frozenset[str] = frozenset()  # opt-in scenarios: burst, saturation, density
    ptc_calls: int = 300  # programmatic tool calling (bench/ptc.py)


SMOKE = Plan(
    warm_calls=20, repl_calls=20, warmup_calls=3, baseline_calls=5, editor_cycles=3, progress_pairs=5, long_call_seconds=2.5,
    first_call_trials=1, concurrent_sessions=2, concurrent_calls=3,
    spaced_calls=5, floor_calls=10, burst_sizes=(4,), saturation_levels=(1, 2), saturation_seconds=1.0, idle_sandboxes=4,
    ptc_calls=10,
)


def _leaf_errors(exc: BaseException) -> str:
    """What actually went wrong: the leaves of (nested) exception groups, not the group's summary."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_leaf_errors(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


class BenchError(Exception):
    """A call that should have succeeded did not."""


def _check_bash(result: Any, what: str) -> Any:
    sc = result.structured_content or {}
    if result.is_error or sc.get("type") != "bash_code_execution_result" or sc.get("return_code") != 0:
        said = " ".join(getattr(c, "text", "") for c in result.content)
        raise BenchError(f"{what}: unexpected result {sc}: {said}")
    return result


async def _bash(client: Any, command: str, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await client.call_tool(BASH, {"command": command}, **kwargs)
    elapsed = time.perf_counter() - start
    return elapsed, _check_bash(result, command)


async def _code(client: Any, code: str) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await client.call_tool(CODE, {"code": code})
    elapsed = time.perf_counter() - start
    sc = result.structured_content or {}
    if result.is_error or sc.get("type") != "code_execution_result" or sc.get("return_code") != 0:
        said = " ".join(getattr(c, "text", "") for c in result.content)
        raise BenchError(f"{code}: unexpected result {sc}: {said}")
    return elapsed, result


async def _repl(client: Any, plan: Plan) -> dict[str, Any]:
    """Warm REPL cells beside bash `true` in the same session and run (interleaved, so both see the
    same machine), and a state-carrying cell."""
    first, _ = await _code(client, "x = 0")  # starts the interpreter: not measured as a warm cell
    for _ in range(5):
        await _code(client, "pass")
    cells, bashes = [], []
    for _ in range(plan.repl_calls):
        cells.append((await _code(client, "pass"))[0])
        bashes.append((await _bash(client, "true"))[0])
    state = [(await _code(client, "x += 1"))[0] for _ in range(max(5, plan.repl_calls // 3))]
    _, last = await _code(client, "print(x)")
    if last.structured_content["stdout"] != f"{len(state)}\n":
        raise BenchError(f"the REPL lost its state: {last.structured_content}")
    return {
        "repl_first_cell_ms": ms(first),
        "warm_repl_p50_ms": ms(p50(cells)), "warm_repl_p99_ms": ms(pct(cells, 99)),
        "warm_repl_bash_p50_ms": ms(p50(bashes)), "warm_repl_bash_p99_ms": ms(pct(bashes, 99)),
        "repl_state_cell_p50_ms": ms(p50(state)),
    }


def _manager(settings: Settings) -> SandboxManager:
    manager = SandboxManager(settings, connect())
    manager.resolve_image()
    return manager


# --- warm calls, the editor, progress, idle memory: one stdio session ------------------------------


async def warm_session(settings: Settings, plan: Plan, logs: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with stdio_session(settings, logs / "warm.log", log_level="INFO") as (client, log):
        await log.wait_for(POOL_READY)  # the pool is full: its filling is not measured below
        _, first = await _bash(client, "true")
        cid = first.meta["container"]["id"]
        await log.wait_for(POOL_READY, count=2)  # the refill after the first call, likewise
        await anyio.sleep(1.0)
        out.update(await anyio.to_thread.run_sync(_idle_memory, settings, cid, "per_container_overhead_mb"))
        for _ in range(plan.warmup_calls):
            await _bash(client, "true")

        samples = [(await _bash(client, "true"))[0] for _ in range(plan.warm_calls)]
        out["warm_bash_calls"] = len(samples)
        out["warm_bash_p50_ms"] = ms(p50(samples))
        out["warm_bash_p90_ms"] = ms(pct(samples, 90))
        out["warm_bash_p99_ms"] = ms(pct(samples, 99))
        out["warm_bash_min_ms"] = ms(min(samples))

        out.update(await _editor_cycles(client, plan))
        out.update(await _repl(client, plan))
        out.update(await _progress(client, plan))

        pid = stdio_server_pid()
        out["stdio_server_rss_mb"] = rss_mb(pid) if pid else None
        await anyio.sleep(1.0)  # let the last call's processes and page cache settle
        out.update(await anyio.to_thread.run_sync(_idle_memory, settings, cid, "per_container_after_warm_run_mb"))
    return out


async def _editor_cycles(client: Any, plan: Plan) -> dict[str, Any]:
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(20))
    samples = []
    for i in range(plan.editor_cycles + 3):
        start = time.perf_counter()
        steps = [
            await client.call_tool(EDITOR, {"command": "create", "path": "bench/edit.txt", "file_text": text}),
            await client.call_tool(EDITOR, {"command": "view", "path": "bench/edit.txt"}),
            await client.call_tool(
                EDITOR, {"command": "str_replace", "path": "bench/edit.txt", "old_str": "line 7:", "new_str": f"line 7 ({i}):"}
            ),
        ]
        elapsed = time.perf_counter() - start
        if any(step.is_error for step in steps):
            raise BenchError(f"editor cycle failed: {[s.structured_content for s in steps]}")
        if i >= 3:  # the first cycles warm the editor's code paths
            samples.append(elapsed)
    return {"editor_roundtrip_p50_ms": ms(p50(samples)), "editor_roundtrip_p99_ms": ms(pct(samples, 99))}


async def _progress(client: Any, plan: Plan) -> dict[str, Any]:
    """Overhead for short calls (interleaved, with and without a progress callback), then one long
    call that must deliver notifications carrying the output so far."""
    notes: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append((progress, message))

    plain, tracked = [], []
    for _ in range(plan.progress_pairs):
        plain.append((await _bash(client, "true"))[0])
        tracked.append((await _bash(client, "true", progress_callback=on_progress))[0])
    short_notes = len(notes)

    notes.clear()
    ticks = max(2, int(plan.long_call_seconds))
    step = plan.long_call_seconds / ticks
    command = f"for i in $(seq {ticks}); do echo tick $i; sleep {step:.2f}; done"
    start = time.perf_counter()
    await _bash(client, command, progress_callback=on_progress)
    long_elapsed = time.perf_counter() - start
    with_output = [m for _, m in notes if m and "tick" in m]
    return {
        "progress_overhead_ms": ms(p50(tracked) - p50(plain)),
        "progress_short_call_p50_ms": ms(p50(tracked)),
        "progress_short_call_notifications": short_notes,
        "progress_long_call_s": round(long_elapsed, 2),
        "progress_notifications": len(notes),
        "progress_ok": bool(with_output) and short_notes == 0,
        "progress_last_message": (with_output[-1] if with_output else None),
    }


def _idle_memory(settings: Settings, cid: str, key: str) -> dict[str, Any]:
    """An idle sandbox's cgroup memory as `docker stats` shows it (usage minus inactive file cache),
    and its anonymous (non-cache) part."""
    manager = _manager(settings)
    _, container = manager.find(cid)
    stats = container.stats(stream=False)["memory_stats"]
    raw = stats.get("stats", {})
    inactive = raw.get("total_inactive_file", raw.get("inactive_file", 0))
    return {
        key: round((stats["usage"] - inactive) / 2**20, 2),
        key.replace("_mb", "_anon_mb"): round(raw.get("total_rss", raw.get("anon", 0)) / 2**20, 2),
    }


# --- the baseline: docker exec on a container like ours --------------------------------------------


def baseline_docker_exec(settings: Settings, plan: Plan) -> dict[str, Any]:
    """``container.exec_run(["bash", "-c", "true"])`` against a sandbox created with exactly our
    settings (same image, same hardening), as exec-per-call servers do. No MCP layer is added to it,
    which flatters the baseline."""
    manager = _manager(settings)
    record, container = manager.create("bench-baseline")
    try:
        for _ in range(3):
            container.exec_run(["bash", "-c", "true"])
        samples = []
        for _ in range(plan.baseline_calls):
            start = time.perf_counter()
            code, _ = container.exec_run(["bash", "-c", "true"])
            samples.append(time.perf_counter() - start)
            if code != 0:
                raise BenchError(f"docker exec returned {code}")
    finally:
        manager.remove(record.id)
    return {
        "baseline_docker_exec_calls": len(samples),
        "baseline_docker_exec_p50_ms": ms(p50(samples)),
        "baseline_docker_exec_p99_ms": ms(pct(samples, 99)),
    }


# --- the first call of a new session ----------------------------------------------------------------


async def first_calls(settings: Settings, plan: Plan, logs: Path) -> dict[str, Any]:
    """A new stdio session = a new server process. Timed: from the initialized MCP client to the first
    call's result. ``pooled``: pool_size=1 and the pool is full (a session arriving at a server that
    had a moment to warm up, or any new session of a long-running HTTP server). ``cold``: pool_size=0,
    after the same settling time. ``immediate``: pool_size=1, first call sent right after initialize
    (the pool is still being filled: the worst case for the pool over stdio)."""
    samples: dict[str, list[float]] = {"pooled": [], "cold": [], "immediate": []}
    settle: list[float] = []
    manager = await anyio.to_thread.run_sync(_manager, settings)
    for trial in range(plan.first_call_trials):
        for mode in ("pooled", "cold", "immediate"):
            s = settings.model_copy(update={"pool_size": 0 if mode == "cold" else 1})
            async with stdio_session(s, logs / f"first-{mode}-{trial}.log", log_level="INFO") as (client, log):
                if mode == "pooled":
                    settle.append(await log.wait_for(POOL_READY))
                elif mode == "cold":
                    await anyio.sleep(max(settle[-1], 0.5))
                elapsed, result = await _bash(client, "true")
                cid = result.meta["container"]["id"]
            samples[mode].append(elapsed)
            await anyio.to_thread.run_sync(manager.remove, cid)  # a stdio session's container outlives it
    out: dict[str, Any] = {f"first_call_{mode}_p50_ms": ms(p50(values)) for mode, values in samples.items()}
    out["first_call_trials"] = plan.first_call_trials
    out["first_call_pooled_max_ms"] = ms(max(samples["pooled"]))
    out["first_call_cold_max_ms"] = ms(max(samples["cold"]))
    out["pool_fill_after_start_p50_ms"] = ms(p50(settle))
    out["first_call_speedup"] = round(out["first_call_cold_p50_ms"] / out["first_call_pooled_p50_ms"], 1)
    return out


# --- concurrency: N sessions at once against one HTTP server ----------------------------------------


async def concurrency(settings: Settings, plan: Plan, logs: Path) -> dict[str, Any]:
    """One HTTP server (the multi-client shape: each MCP session has its own Mcp-Session-Id and so its
    own container). N sessions connect and make their first call at once (containers are created
    concurrently; timed separately), wait for each other, then all run a loop of short calls at once."""
    n = plan.concurrent_sessions
    first: list[float] = []
    loop: list[float] = []
    containers: set[str] = set()
    errors: list[str] = []
    ok = 0
    all_ready = anyio.Event()
    ready = 0

    async def session(i: int, base_url: str) -> None:
        nonlocal ok, ready
        failed = False
        try:
            async with http_session(base_url) as client:
                try:
                    elapsed, result = await _bash(client, "true")
                    first.append(elapsed)
                    containers.add(result.meta["container"]["id"])
                finally:
                    ready += 1
                    if ready == n:
                        all_ready.set()
                await all_ready.wait()
                for j in range(plan.concurrent_calls):
                    elapsed, result = await _bash(client, f"echo {i}-{j}")
                    if result.structured_content["stdout"] != f"{i}-{j}\n":
                        raise BenchError(f"session {i} got someone else's output: {result.structured_content}")
                    loop.append(elapsed)
        except Exception as exc:  # the top-level handler of one session: count it, report it
            failed = True
            errors.append(f"session {i}: {_leaf_errors(exc)}"[:600])
        if not failed:
            ok += 1

    with http_server(settings, logs / "http.log") as (base_url, proc):
        start = time.perf_counter()
        with anyio.fail_after(600):
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(session, i, base_url)
        wall = time.perf_counter() - start
        server_rss = rss_mb(proc.pid)
    return {
        "concurrent_sessions": n,
        "concurrent_ok": ok,
        "concurrent_containers": len(containers),
        "concurrent_calls_per_session": plan.concurrent_calls,
        "concurrent_p50_ms": ms(p50(loop)) if loop else None,
        "concurrent_p99_ms": ms(pct(loop, 99)) if loop else None,
        "concurrent_first_call_p50_ms": ms(p50(first)) if first else None,
        "concurrent_first_call_max_ms": ms(max(first)) if first else None,
        "concurrent_wall_s": round(wall, 2),
        "concurrent_errors": errors[:5],
        # What the server said while a session failed: the one place the cause shows.
        "concurrent_server_log": ServerLog(logs / "http.log").text()[-3000:] if errors else None,
        "server_rss_mb": server_rss,
    }
