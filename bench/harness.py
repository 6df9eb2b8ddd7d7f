"""Starting servers the way real clients do (stdio subprocess, HTTP subprocess), waiting for the
warm pool, and the few statistics the bench needs."""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from mcp_codeexec.config import Settings

POOL_READY = re.compile(r"pool: \d+/\d+ warm containers? ready")


# --- statistics -----------------------------------------------------------------------------------


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


def pct(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): with 200 samples, p99 is the 198th smallest."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# --- servers --------------------------------------------------------------------------------------


def server_env(settings: Settings, *, log_level: str = "WARNING") -> dict[str, str]:
    """The environment a client would give the server: ours, minus any MCP_CODEEXEC_* of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_CODEEXEC_")}
    env.update(
        MCP_CODEEXEC_DATA_DIR=str(settings.data_dir),
        MCP_CODEEXEC_POOL_SIZE=str(settings.pool_size),
        MCP_CODEEXEC_LOG_LEVEL=log_level,
        MCP_CODEEXEC_CONFIG=str(settings.data_dir / "no-config.toml"),
        MCP_CODEEXEC_REAP_INTERVAL_SECONDS=str(settings.reap_interval_seconds),
        MCP_CODEEXEC_DIRECT_CALLS=str(settings.direct_calls).lower(),  # MCP_CODEEXEC_DIRECT_CALLS=false: the A/B side
    )
    if settings.image:
        env["MCP_CODEEXEC_IMAGE"] = settings.image
    if settings.runtime:
        env["MCP_CODEEXEC_RUNTIME"] = settings.runtime
    return env


class ServerLog:
    """The server's stderr, in a file we can read while it runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def text(self) -> str:
        try:
            return self.path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def wait_for(self, pattern: re.Pattern[str], *, count: int = 1, timeout: float = 60.0) -> float:
        """Wait until ``pattern`` occurs ``count`` times; return the seconds waited."""
        start = time.perf_counter()
        with anyio.fail_after(timeout):
            while len(pattern.findall(self.text())) < count:
                await anyio.sleep(0.01)
        return time.perf_counter() - start

    def tail(self, chars: int = 3000) -> str:
        return self.text()[-chars:]


@asynccontextmanager
async def stdio_session(settings: Settings, log_path: Path, *, log_level: str = "WARNING") -> AsyncIterator[tuple[Client, ServerLog]]:
    """``mcp-codeexec serve`` over stdio, exactly as an MCP client launches it; yields once initialized."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_codeexec", "serve"], env=server_env(settings, log_level=log_level)
    )
    with open(log_path, "a") as errlog:
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=120) as client:
            yield client, ServerLog(log_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def http_server(settings: Settings, log_path: Path, *, trace_requests: bool = True) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``mcp-codeexec serve --transport http --no-auth`` on a free loopback port."""
    port = free_port()
    args = [sys.executable, "-m", "mcp_codeexec", "serve", "--transport", "http", "--port", str(port), "--no-auth"]
    # Every request's arrive/body/start/end (request_trace.py): a stalled scenario says where each
    # unfinished request stopped (issue 11). ~0.1 ms of server CPU a request (py-spy), so the
    # warm-call measurement, which reports the server's CPU per call, runs without it.
    trace = log_path.with_suffix(".trace.jsonl")
    env = server_env(settings, log_level="INFO")
    if trace_requests:
        env["MCP_CODEEXEC_TRACE_REQUESTS"] = str(trace)
    with open(log_path, "a") as errlog:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the HTTP server exited: {ServerLog(log_path).tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not listen within 60 s: {ServerLog(log_path).tail()}")
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}", proc
        except BaseException:
            # A scenario failed or timed out while the server still runs: its threads' stacks go
            # into the log (printed with the failure) before it is stopped, after the requests
            # still unfinished and where each stopped.
            note_unfinished(trace, log_path)
            dump_stacks(proc.pid, log_path)
            raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def note_unfinished(trace: Path, log_path: Path) -> None:
    """Append the traced requests whose response has not ended (GET streams, open by design, counted)."""
    from mcp_codeexec.request_trace import read_trace

    try:
        requests = read_trace(trace)
    except OSError as exc:
        lines = [f"no request trace: {exc}"]
    else:
        now = time.monotonic()
        open_ = [r for r in requests if r.stopped_at() is not None]
        streams = [r for r in open_ if r.events["arrive"].get("method") == "GET"]
        lines = [f"{len(requests)} requests traced; {len(streams)} GET streams open"]
        for r in open_:
            if r not in streams:
                a = r.events["arrive"]
                lines.append(f"#{r.n} {a.get('method')} {a.get('path')} sid={a.get('sid')} rpc={r.rpc} "
                             f"{now - a['t']:.1f} s ago: {r.stopped_at()}")
    with open(log_path, "a") as log:
        log.write(f"--- requests unfinished at {time.strftime('%H:%M:%S')} (request trace) ---\n" + "\n".join(lines) + "\n")


def dump_stacks(pid: int, log_path: Path) -> None:
    """Append ``py-spy dump`` of ``pid`` (every thread's stack, with locals) to ``log_path``;
    a note instead when py-spy is missing or cannot attach."""
    try:
        out = subprocess.run(["py-spy", "dump", "--locals", "--pid", str(pid)], capture_output=True, text=True, timeout=30, check=False)
        text = out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        text = f"py-spy dump failed: {exc}\n"
    with open(log_path, "a") as log:
        log.write(f"--- py-spy dump of the server (pid {pid}) at {time.strftime('%H:%M:%S')} ---\n{text}\n")


@asynccontextmanager
async def http_session(base_url: str) -> AsyncIterator[Client]:
    """One MCP session over streamable HTTP. ``legacy`` = the initialize handshake, so the session has
    its own Mcp-Session-Id and hence its own container (session-less 2026-07-28 requests share the
    principal's default container by design)."""
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(120)) as http:
        transport = streamable_http_client(base_url + "/mcp", http_client=http)
        async with Client(transport, read_timeout_seconds=120, mode="legacy") as client:
            yield client


def stdio_server_pid() -> int | None:
    """The pid of the (single) stdio server this process launched."""
    for pid, cmdline in _children():
        if "mcp_codeexec" in cmdline and "serve" in cmdline:
            return pid
    return None


def rss_mb(pid: int) -> float:
    try:
        import psutil
    except ImportError:  # psutil is a test extra; /proc is enough on Linux
        with open(f"/proc/{pid}/status") as fh:
            kb = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
        return round(kb / 1024, 1)
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


def _children() -> list[tuple[int, list[str]]]:
    try:
        import psutil
    except ImportError:
        found = []
        for entry in os.listdir("/proc"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if entry.isdigit() and int(open(f"/proc/{entry}/stat").read().rpartition(")")[2].split()[1]) == os.getpid():
                    found.append((int(entry), open(f"/proc/{entry}/cmdline").read().split("\0")))
        return found
    out = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            out.append((child.pid, child.cmdline()))
    return out
