"""What users feel: spaced calls beside back-to-back ones (stdio and HTTP) with the floor layers
measured in the same run, bursts of new sessions, saturation, and density (idle sandboxes).

A model thinks between tool calls, so a warm call usually arrives after a pause: every hop wakes
from idle. ``pause`` (100 ms by default) is that think time; back-to-back calls are the other end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from mcp_codeexec.backends.base import CallContext
from mcp_codeexec.backends.sandbox import SandboxBackend
from mcp_codeexec.config import Settings
from mcp_codeexec.files import FileStore

from .harness import (
    POOL_READY, ServerLog, http_server, http_session, ms, p50, pct, rss_mb, stdio_server_pid, stdio_session,
)
from .scenarios import Plan, _bash, _leaf_errors, _manager

MiB = 2**20


def _stats(prefix: str, samples: list[float]) -> dict[str, Any]:
    return {f"{prefix}_p50_ms": ms(p50(samples)), f"{prefix}_p99_ms": ms(pct(samples, 99)), f"{prefix}_n": len(samples)}


async def _timed(call: Callable[[], Awaitable[Any]], n: int, pause: float) -> list[float]:
    samples = []
    for _ in range(n):
        if pause:
            await anyio.sleep(pause)
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


def cpu_seconds(pid: int) -> float | None:
    """CPU time a process has used, all its threads: the scheduler's nanosecond counters
    (``/proc/PID/task/*/schedstat``); None when the process is gone."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
    return total / 1e9


async def _metered(prefix: str, call: Callable[[], Awaitable[Any]], n: int, pause: float,
                   server_pid: int | None) -> dict[str, Any]:
    """Samples of ``call``; with ``server_pid``, also the server's and this client's CPU per call
    over them (the client's includes its wake-up from each pause)."""
    server0 = cpu_seconds(server_pid) if server_pid else None
    client0 = cpu_seconds(os.getpid())
    out = _stats(prefix, await _timed(call, n, pause))
    server1 = cpu_seconds(server_pid) if server_pid else None
    client1 = cpu_seconds(os.getpid())
    if server0 is not None and server1 is not None and n:
        out[f"{prefix}_server_cpu_ms"] = ms((server1 - server0) / n)
        if client0 is not None and client1 is not None:
            out[f"{prefix}_client_cpu_ms"] = ms((client1 - client0) / n)
    return out


async def _both(prefix: str, call: Callable[[], Awaitable[Any]], plan: Plan, server_pid: int | None = None) -> dict[str, Any]:
    """Back-to-back and spaced samples of one call, after a warm-up."""
    await _timed(call, plan.warmup_calls, 0)
    out = await _metered(prefix, call, plan.warm_calls, 0, server_pid)
    out.update(await _metered(f"{prefix}_spaced", call, plan.spaced_calls, plan.pause_s, server_pid))
    return out


# --- floors: what no server can beat on this machine ---------------------------------------------


async def floors(settings: Settings, plan: Plan) -> dict[str, Any]:
    """Host fork+exec of ``bash -c true``; the agent's no-op round trip (``ping`` over the Docker
    attach stream, from this process, no MCP); ``docker exec`` of ``bash -c true`` (exec_run) in a
    sandbox like ours. Each back-to-back and spaced."""
    out: dict[str, Any] = {"pause_ms": plan.pause_s * 1000}

    async def fork_exec() -> None:
        await anyio.to_thread.run_sync(lambda: subprocess.run(["bash", "-c", "true"], check=True))

    # The fork+exec is timed in the worker thread itself: the thread hop is not part of the floor.
    def fork_exec_samples(n: int, pause: float) -> list[float]:
        samples = []
        for _ in range(n):
            time.sleep(pause)
            start = time.perf_counter()
            subprocess.run(["bash", "-c", "true"], check=True)
            samples.append(time.perf_counter() - start)
        return samples

    await fork_exec()
    out.update(_stats("floor_fork_exec", await anyio.to_thread.run_sync(fork_exec_samples, plan.floor_calls, 0)))
    out.update(_stats("floor_fork_exec_spaced", await anyio.to_thread.run_sync(fork_exec_samples, plan.spaced_calls, plan.pause_s)))

    s = settings.model_copy(update={"pool_size": 0})
    async with SandboxBackend(s, FileStore(s.files_dir, 30)) as backend:
        sandbox = await backend.sandbox_for(CallContext(principal="local", session_key="bench-floor"), None)
        out.update(await _both("floor_agent_ping", lambda: sandbox.conn.request({"op": "ping"}, timeout=30), plan))
        container = backend._manager.client.containers.get(sandbox.record.ref)  # type: ignore[union-attr]

        def exec_samples(n: int, pause: float) -> list[float]:
            samples = []
            for _ in range(n):
                time.sleep(pause)
                start = time.perf_counter()
                code, _ = container.exec_run(["bash", "-c", "true"])
                samples.append(time.perf_counter() - start)
                assert code == 0
            return samples

        await anyio.to_thread.run_sync(exec_samples, 3, 0)
        out.update(_stats("floor_docker_exec", await anyio.to_thread.run_sync(exec_samples, plan.baseline_calls, 0)))
        out.update(_stats("floor_docker_exec_spaced", await anyio.to_thread.run_sync(exec_samples, plan.spaced_calls, plan.pause_s)))
    return out


# --- spaced vs back-to-back through MCP ------------------------------------------------------------


async def mcp_warm(settings: Settings, plan: Plan, logs: Path) -> dict[str, Any]:
    """Warm ``true`` through a real MCP client, stdio and HTTP, back-to-back and spaced."""
    out: dict[str, Any] = {}
    async with stdio_session(settings, logs / "user-stdio.log") as (client, _):
        await _bash(client, "true")
        out.update(await _both("stdio_warm", lambda: _bash(client, "true"), plan, stdio_server_pid()))
    with http_server(settings, logs / "user-http.log", trace_requests=False) as (base_url, proc):
        async with http_session(base_url) as client:
            await _bash(client, "true")
            out.update(await _both("http_warm", lambda: _bash(client, "true"), plan, proc.pid))
    return out


# --- bursts: N new sessions at once ------------------------------------------------------------------


async def _sessions_at_once(base_url: str, n: int, hold: anyio.Event | None = None) -> tuple[list[float], list[str]]:
    """N MCP sessions connect and make their first call at once: the first result's latency, from
    the initialized session (the container is what it waits for)."""
    firsts: list[float] = []
    errors: list[str] = []
    go = anyio.Event()
    connected = 0

    async def one(i: int) -> None:
        nonlocal connected
        try:
            async with http_session(base_url) as client:
                # The client's own first-call work (tools/list, compiling the output schema's
                # validator: ~8 ms of this one process's CPU per session) is done before the burst:
                # real sessions are separate client processes, it is not the server's latency.
                await client.list_tools()
                connected += 1
                if connected == n:
                    go.set()
                await go.wait()
                elapsed, _ = await _bash(client, "true")
                firsts.append(elapsed)
                if hold is not None:
                    await hold.wait()
        except Exception as exc:  # one session's failure: counted and reported, the others go on
            errors.append(f"session {i}: {_leaf_errors(exc)}"[:400])
            go.set()

    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
    return firsts, errors


async def bursts(settings: Settings, plan: Plan, logs: Path) -> dict[str, Any]:
    """For each N: a fresh HTTP server with default pool settings; N sessions at once (the first
    burst: the pool holds pool_size), then, once the pool has grown after it, N more at once."""
    out: dict[str, Any] = {}
    for n in plan.burst_sizes:
        log_path = logs / f"burst-{n}.log"
        with http_server(settings, log_path) as (base_url, _):
            log = ServerLog(log_path)
            await log.wait_for(POOL_READY, timeout=120)
            firsts, errors = await _sessions_at_once(base_url, n)
            out.update(_stats(f"burst{n}_first", firsts) if firsts else {})
            out[f"burst{n}_errors"] = len(errors)
            start = time.perf_counter()
            grown = re.compile(rf"pool: {n}/{n} warm containers ready")
            try:
                await log.wait_for(grown, timeout=180)
                out[f"burst{n}_pool_refill_s"] = round(time.perf_counter() - start, 2)
            except TimeoutError:
                out[f"burst{n}_pool_refill_s"] = None
            firsts, errors = await _sessions_at_once(base_url, n)
            out.update(_stats(f"burst{n}_again_first", firsts) if firsts else {})
            out[f"burst{n}_again_errors"] = len(errors)
            if errors:
                out[f"burst{n}_error_sample"] = errors[:3]
        await anyio.to_thread.run_sync(_remove_all, settings)
    return out


def _remove_all(settings: Settings) -> None:
    from .run import remove_everything

    remove_everything(settings)


# --- saturation: N sessions calling as fast as they can ----------------------------------------------


async def saturation(settings: Settings, plan: Plan, logs: Path) -> dict[str, Any]:
    """One HTTP server, max(levels) sessions set up first; then for each level N, N of them call
    ``true`` in a loop for ``saturation_seconds``: calls/s and p99."""
    out: dict[str, Any] = {}
    levels = plan.saturation_levels
    with http_server(settings, logs / "saturation.log") as (base_url, _):
        clients: list[Any] = []
        ready = anyio.Event()
        done = anyio.Event()
        level_go: list[tuple[int, anyio.Event]] = []
        results: dict[int, list[float]] = {}
        errors: list[str] = []

        async def session(i: int) -> None:
            try:
                async with http_session(base_url) as client:
                    await _bash(client, "true")
                    clients.append(client)
                    if len(clients) == max(levels):
                        ready.set()
                    await done.wait()
            except Exception as exc:  # counted and reported
                errors.append(f"session {i}: {_leaf_errors(exc)}"[:400])
                ready.set()

        async with anyio.create_task_group() as tg:
            for i in range(max(levels)):
                tg.start_soon(session, i)
            with anyio.fail_after(600):
                await ready.wait()
            # The sessions' arrival grew the pool: let it finish refilling first (steady state).
            n_max = max(levels)
            with contextlib.suppress(TimeoutError):
                await ServerLog(logs / "saturation.log").wait_for(re.compile(rf"pool: {n_max}/{n_max} warm containers ready"), timeout=240)
            if errors:
                done.set()
            else:
                for n in levels:
                    samples: list[float] = []
                    deadline = time.perf_counter() + plan.saturation_seconds

                    async def loop(client: Any) -> None:
                        while time.perf_counter() < deadline:
                            elapsed, _ = await _bash(client, "true")
                            samples.append(elapsed)

                    start = time.perf_counter()
                    async with anyio.create_task_group() as inner:
                        for client in clients[:n]:
                            inner.start_soon(loop, client)
                    wall = time.perf_counter() - start
                    results[n] = samples
                    out[f"saturation{n}_calls_per_s"] = round(len(samples) / wall, 1)
                    out[f"saturation{n}_p50_ms"] = ms(p50(samples))
                    out[f"saturation{n}_p99_ms"] = ms(pct(samples, 99))
                done.set()
    out["saturation_errors"] = errors[:3]
    return out


# --- density: many idle sandboxes ----------------------------------------------------------------------


def _cgroup_memory(docker_id: str) -> dict[str, int] | None:
    """The sandbox's cgroup memory: ``current`` (v2 memory.current; v1 memory.usage_in_bytes) and
    what it is made of: anon (processes), file (page cache), shmem (tmpfs: /tmp, the shell state),
    kernel (v1 kmem: page tables, slab, the sockets of the attach stream)."""
    v2 = [f"/sys/fs/cgroup/system.slice/docker-{docker_id}.scope", f"/sys/fs/cgroup/docker/{docker_id}"]
    for base in v2:
        if os.path.exists(f"{base}/memory.current"):
            stat = _kv(f"{base}/memory.stat")
            return {"current": int(Path(f"{base}/memory.current").read_text()), "anon": stat.get("anon", 0),
                    "file": stat.get("file", 0), "shmem": stat.get("shmem", 0),
                    "kernel": stat.get("kernel", stat.get("slab", 0) + stat.get("kernel_stack", 0) + stat.get("pagetables", 0))}
    base = f"/sys/fs/cgroup/memory/docker/{docker_id}"
    if os.path.exists(f"{base}/memory.usage_in_bytes"):
        stat = _kv(f"{base}/memory.stat")
        kmem = Path(f"{base}/memory.kmem.usage_in_bytes")
        return {"current": int(Path(f"{base}/memory.usage_in_bytes").read_text()), "anon": stat.get("rss", 0),
                "file": stat.get("cache", 0) - stat.get("shmem", 0), "shmem": stat.get("shmem", 0),
                "kernel": int(kmem.read_text()) if kmem.exists() else 0}
    return None


def _kv(path: str) -> dict[str, int]:
    out = {}
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def _shims() -> dict[str, int]:
    """containerd shims by the container id on their command line: PSS in bytes (their shared
    code counted once across all of them, as the host pays it)."""
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if not argv or b"containerd-shim" not in argv[0]:
                continue
            cid = argv[argv.index(b"-id") + 1].decode()
            pss = next(int(line.split()[1]) for line in Path(f"/proc/{entry}/smaps_rollup").read_text().splitlines()
                       if line.startswith("Pss:"))
            found[cid] = pss * 1024
        except (OSError, ValueError, StopIteration, IndexError):
            continue
    return found


def _image_bytes(settings: Settings, cid: str) -> int | None:
    link = settings.volumes_dir / f"{cid}.img"
    try:
        return link.resolve().stat().st_blocks * 512
    except OSError:
        return None


async def density(settings: Settings, plan: Plan, logs: Path) -> dict[str, Any]:
    """One stdio session's warm latency (back-to-back and spaced) alone, then while ``idle_sandboxes``
    other sandboxes (each attached to an in-process backend, as a server holding that many sessions
    is) stay idle; their host memory (cgroup memory.current + the shim's PSS) and disk (allocated
    blocks of the workspace image, after a first call)."""
    out: dict[str, Any] = {"density_idle_sandboxes": plan.idle_sandboxes}
    probe = max(50, plan.warm_calls // 2)
    lean = Plan(**{**plan.__dict__, "warm_calls": probe, "spaced_calls": max(20, plan.spaced_calls // 2)})
    async with stdio_session(settings.model_copy(update={"pool_size": 0}), logs / "density.log") as (client, _):
        await _bash(client, "true")
        out.update({k.replace("probe", "density_alone"): v for k, v in (await _both("probe", lambda: _bash(client, "true"), lean)).items()})

        s = settings.model_copy(update={"pool_size": 0})
        async with SandboxBackend(s, FileStore(s.files_dir, 30)) as backend:
            from mcp_codeexec.schemas import BashInput

            limiter = anyio.CapacityLimiter(8)
            made: list[Any] = []
            errors: list[str] = []
            start = time.perf_counter()

            async def make(i: int) -> None:
                async with limiter:
                    ctx = CallContext(principal="local", session_key=f"idle-{i}")
                    try:
                        await backend.bash(BashInput(command="true"), ctx)
                        made.append(await backend.sandbox_for(ctx, None))
                    except Exception as exc:  # counted and reported
                        errors.append(f"{i}: {_leaf_errors(exc)}"[:300])

            async with anyio.create_task_group() as tg:
                for i in range(plan.idle_sandboxes):
                    tg.start_soon(make, i)
            out["density_create_s"] = round(time.perf_counter() - start, 1)
            out["density_errors"] = len(errors)
            out["density_error_sample"] = errors[:3]
            await anyio.sleep(10.0)  # settle: the last calls' processes exit, the engine calms down

            def measure() -> dict[str, Any]:
                shims = _shims()
                cg, sh, disk = [], [], []
                parts: dict[str, list[int]] = {"anon": [], "file": [], "shmem": [], "kernel": []}
                for sandbox in made:
                    did = sandbox.record.ref
                    if (m := _cgroup_memory(did)) is not None:
                        cg.append(m["current"])
                        for part in parts:
                            parts[part].append(m[part])
                    if did in shims:
                        sh.append(shims[did])
                    if (d := _image_bytes(settings, sandbox.record.id)) is not None:
                        disk.append(d)
                return {
                    "density_cgroup_mib_p50": round(p50(cg) / MiB, 2) if cg else None,
                    **{f"density_cgroup_{k}_mib_p50": round(p50(v) / MiB, 2) for k, v in parts.items() if v},
                    "density_shim_pss_mib_p50": round(p50(sh) / MiB, 2) if sh else None,
                    "density_memory_per_sandbox_mib": round((p50(cg) + (p50(sh) if sh else 0)) / MiB, 2) if cg else None,
                    "density_disk_per_workspace_mib": round(p50(disk) / MiB, 2) if disk else None,
                    "density_disk_total_mib": round(sum(disk) / MiB, 1) if disk else None,
                }

            out.update(await anyio.to_thread.run_sync(measure))
            out.update({k.replace("probe", "density_loaded"): v for k, v in (await _both("probe", lambda: _bash(client, "true"), lean)).items()})
            out["density_bench_process_rss_mb"] = rss_mb(os.getpid())  # holds the idle sandboxes' connections

            # Remove them, then measure alone again: the machine's load drifts (it is shared), so
            # loaded is compared with the mean of the two unloaded figures around it.
            manager = backend._manager
            assert manager is not None

            async def remove(sandbox: Any) -> None:
                async with limiter:
                    await sandbox.conn.aclose()
                    await anyio.to_thread.run_sync(manager.remove, sandbox.record.id)

            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for sandbox in made:
                    tg.start_soon(remove, sandbox)
            out["density_remove_s"] = round(time.perf_counter() - start, 1)
        await anyio.sleep(5.0)
        out.update({k.replace("probe", "density_after"): v for k, v in (await _both("probe", lambda: _bash(client, "true"), lean)).items()})
    for suffix in ("", "_spaced"):
        alone = (out[f"density_alone{suffix}_p50_ms"] + out[f"density_after{suffix}_p50_ms"]) / 2
        out[f"density_loaded_vs_alone{suffix}"] = round(out[f"density_loaded{suffix}_p50_ms"] / alone, 3)
    return out
