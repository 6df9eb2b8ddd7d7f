"""HTTP session soak (issue 11, item 11): thousands of streamable-HTTP MCP sessions opened in bursts
against the real server on a loopback port, every request traced on both sides and joined.

    python -m bench.http_soak                       # 8 bursts alternating 256 / 512 sessions, 256 held idle
    python -m bench.http_soak --bursts 256,512 --hold 64 --bound 30 --auth --real-sessions 32

The server is ``mcp-codeexec serve --transport http`` on 127.0.0.1 and a free port, with
``MCP_CODEEXEC_TRACE_REQUESTS`` on (request_trace.py: arrive / body / start / end per request). The
client is the MCP SDK's, one httpx client per session as real clients are (each session its own
connections and its GET stream), through a transport that gives every request an X-Request-Id and
times it: sent, response headers, body end.

Each session of a burst opens (initialize, notifications/initialized, the GET stream); when the whole
burst is open, every session sends tools/list and then one tools/call at once. The newest ``--hold``
sessions then stay open and idle (longer than uvicorn's 5 s keep-alive: their next request finds
its connection closed); the older ones make a second call after idling and close (DELETE).

The tool call is ``bash_code_execution`` naming a well-formed container id that does not exist: the
whole tool path (MCP dispatch, the tool handler, input validation, the backend's lookup through the
thread pool and the Docker engine, the hosted error block) without creating a container, so
thousands of sessions fit a 2-CPU machine. ``--real-sessions N`` adds a last burst of N sessions whose
call runs ``true`` in a real sandbox each; with ``--real`` every session's calls do (the incident's
setting: 256 idle sessions each holding a sandbox).

At the end the client and server traces are joined by X-Request-Id: a request not finished within
``--bound`` seconds is reported with where it stopped (never arrived; arrived but the body never read;
read but no response start; response started but the body never ended; server ended, client never
read), and the server's threads are dumped (py-spy) into its log. One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_codeexec.errors import CodeExecError
from mcp_codeexec.request_trace import TracedRequest, read_trace, rpc_summary

from .harness import dump_stacks, free_port, ms, pct

BASH = "bash_code_execution"
TOKEN = "soak-" + "0" * 27


# --- the client side's trace -------------------------------------------------------------------------


@dataclass
class ClientRequest:
    rid: str
    session: int
    method: str
    rpc: list[list[Any]] | None
    sent: float
    headers: float | None = None
    status: int | None = None
    end: float | None = None  # the body read to its end
    closed: float | None = None  # the response closed (read to the end or not)
    error: str | None = None

    @property
    def what(self) -> str:
        if self.method != "POST":
            return self.method
        if not self.rpc:
            return "POST ?"
        return ",".join(str(m or "response") for _, m in self.rpc)

    @property
    def finished(self) -> float | None:
        return self.end if self.end is not None else self.closed

    def elapsed(self) -> float | None:
        return None if self.finished is None else self.finished - self.sent


class _TracedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, record: ClientRequest) -> None:
        self.inner = inner
        self.record = record

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            yield chunk
        self.record.end = time.monotonic()

    async def aclose(self) -> None:
        if self.record.closed is None:
            self.record.closed = time.monotonic()
        await self.inner.aclose()


class TracingTransport(httpx2.AsyncBaseTransport):
    """Every request gets an X-Request-Id (the server's trace logs it) and its times recorded."""

    ids = itertools.count(1)

    def __init__(self, session: int, records: list[ClientRequest]) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.session = session
        self.records = records

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        rid = f"s{self.session}-{next(self.ids)}"
        request.headers["x-request-id"] = rid
        rpc = None
        with contextlib.suppress(httpx2.RequestNotRead):
            rpc = rpc_summary(request.content) if request.content else None
        record = ClientRequest(rid, self.session, request.method, rpc, time.monotonic())
        self.records.append(record)
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException as exc:
            record.error = type(exc).__name__
            raise
        record.headers = time.monotonic()
        record.status = response.status_code
        response.stream = _TracedStream(response.stream, record)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


# --- sessions ----------------------------------------------------------------------------------------


@dataclass
class Session:
    n: int
    burst: int
    real: bool = False
    phases: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    opened: anyio.Event = field(default_factory=anyio.Event)
    called: anyio.Event = field(default_factory=anyio.Event)
    release: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)


class Soak:
    def __init__(self, url: str, args: argparse.Namespace) -> None:
        self.url = url
        self.args = args
        self.records: list[ClientRequest] = []
        self.sessions: list[Session] = []

    async def _timed(self, s: Session, phase: str, coro: Any) -> Any:
        start = time.monotonic()
        result = await coro
        s.phases[phase] = time.monotonic() - start
        return result

    async def _call(self, s: Session, client: Client, phase: str) -> None:
        if s.real:
            result = await self._timed(s, phase, client.call_tool(BASH, {"command": "true"}))
            if result.is_error or (result.structured_content or {}).get("return_code") != 0:
                raise RuntimeError(f"bash true failed: {result.structured_content}")
            return
        cid = "container_" + secrets.token_hex(12)  # well-formed, never issued: looked up, then refused
        result = await self._timed(s, phase, client.call_tool(BASH, {"command": "true", "container_id": cid}))
        said = " ".join(getattr(c, "text", "") for c in result.content)
        if (result.structured_content or {}).get("error_code") != "unavailable" or "container_expired" not in said:
            raise RuntimeError(f"unexpected result: {result.structured_content}: {said[:200]}")

    async def run_session(self, s: Session, go: anyio.Event) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"} if self.args.auth else {}
        transport = TracingTransport(s.n, self.records)
        try:
            # Each request fails after --give-up seconds (the client's read timeout); no overall
            # limit, since a session may be held idle through the next burst.
            async with httpx2.AsyncClient(transport=transport, headers=headers, timeout=httpx2.Timeout(self.args.give_up)) as http:
                start = time.monotonic()
                async with Client(streamable_http_client(self.url + "/mcp", http_client=http),
                                  read_timeout_seconds=self.args.give_up, mode="legacy") as client:
                    s.phases["open"] = time.monotonic() - start
                    s.opened.set()
                    await go.wait()
                    await self._timed(s, "tools_list", client.list_tools())
                    await self._call(s, client, "first_call")
                    s.called.set()
                    await s.release.wait()
                    if s.phases.get("idle_s", 0) > 0:
                        await self._call(s, client, "idle_call")
                    start = time.monotonic()
                s.phases["close"] = time.monotonic() - start
        except BaseException as exc:  # a soak records every failure and goes on
            s.error = _leaf(exc)[:300]
            if not isinstance(exc, Exception):
                raise
        finally:
            s.opened.set()
            s.called.set()
            s.done.set()

    async def burst(self, tg: Any, index: int, size: int, *, real: bool = False) -> list[Session]:
        go = anyio.Event()
        batch = [Session(len(self.sessions) + i, index, real) for i in range(size)]
        self.sessions += batch
        for s in batch:
            tg.start_soon(self.run_session, s, go)
        for s in batch:
            await s.opened.wait()
        go.set()
        for s in batch:
            await s.called.wait()
        return batch

    async def release(self, sessions: list[Session], *, idle_call: bool) -> None:
        now = time.monotonic()
        for s in sessions:
            if idle_call and s.error is None:
                s.phases["idle_s"] = now - s.phases.get("called_at", now)
            s.release.set()
        for s in sessions:
            await s.done.wait()

    async def run(self) -> float:
        started = time.monotonic()
        held: list[Session] = []
        async with anyio.create_task_group() as tg:
            for index, size in enumerate(self.args.bursts):
                t0 = time.monotonic()
                batch = await self.burst(tg, index, size, real=self.args.real)
                now = time.monotonic()
                for s in batch:
                    s.phases["called_at"] = now
                held += batch
                evicted, held = held[: max(0, len(held) - self.args.hold)], held[max(0, len(held) - self.args.hold):]
                await self.release(evicted, idle_call=True)
                errors = sum(1 for s in batch if s.error)
                print(f"burst {index + 1}/{len(self.args.bursts)}: {size} sessions in {now - t0:.1f} s, "
                      f"{errors} failed; {len(held)} held idle", file=sys.stderr, flush=True)
                await anyio.sleep(self.args.pause)
            if self.args.real_sessions:
                t0 = time.monotonic()
                batch = await self.burst(tg, len(self.args.bursts), self.args.real_sessions, real=True)
                print(f"real burst: {len(batch)} sessions in {time.monotonic() - t0:.1f} s, "
                      f"{sum(1 for s in batch if s.error)} failed", file=sys.stderr, flush=True)
                held += batch
            await self.release(held, idle_call=True)
        return time.monotonic() - started


def _leaf(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_leaf(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


# --- joining the traces ------------------------------------------------------------------------------


def where(record: ClientRequest, server: TracedRequest | None) -> str:
    """Where a request that did not finish in time stopped, from both sides' traces."""
    if server is None:
        return "never arrived (no server trace of it)"
    stopped = server.stopped_at()
    if stopped is not None:
        return stopped
    if record.headers is None:
        return "server ended the response; the client never got its headers"
    if record.finished is None:
        return "server ended the response; the client never read the body to its end"
    return "finished late"


def _stats(samples: list[float]) -> dict[str, Any] | None:
    if not samples:
        return None
    return {"n": len(samples), "p50_ms": ms(pct(samples, 50)), "p99_ms": ms(pct(samples, 99)), "max_ms": ms(max(samples))}


def join(soak: Soak, trace: Path, bound: float) -> dict[str, Any]:
    server = {r.rid: r for r in read_trace(trace) if r.rid}
    by_what: dict[str, list[float]] = {}
    hops: dict[str, list[float]] = {"arrive_after_send": [], "start_after_arrive": [], "end_after_start": [],
                                    "client_end_after_server_end": []}
    stalls, failed = [], []
    streams = {"GET": 0, "GET_without_headers": 0}
    for record in soak.records:
        theirs = server.get(record.rid)
        if record.method == "GET":  # the session's standalone stream: open until the session ends
            streams["GET"] += 1
            if record.headers is None or record.headers - record.sent > bound:
                streams["GET_without_headers"] += 1
                stalls.append(_stall(record, theirs, "GET stream: " + where(record, theirs)))
            continue
        elapsed = record.elapsed()
        if elapsed is not None:
            by_what.setdefault(record.what, []).append(elapsed)
        if theirs is not None and theirs.t("arrive") is not None:
            hops["arrive_after_send"].append(theirs.t("arrive") - record.sent)
            if theirs.t("start") is not None:
                hops["start_after_arrive"].append(theirs.t("start") - theirs.t("arrive"))
                if theirs.t("end") is not None:
                    hops["end_after_start"].append(theirs.t("end") - theirs.t("start"))
                    if record.finished is not None:
                        hops["client_end_after_server_end"].append(record.finished - theirs.t("end"))
        if record.error is not None and elapsed is None and (record.headers or time.monotonic()) - record.sent <= bound:
            failed.append({"rid": record.rid, "what": record.what, "error": record.error})
        elif elapsed is None or elapsed > bound:
            stalls.append(_stall(record, theirs, where(record, theirs)))
    slow_sessions = []
    for sess in soak.sessions:
        phases = {k: v for k, v in sess.phases.items() if k not in ("called_at", "idle_s")}
        if sess.error or any(v > bound for v in phases.values()):
            mine = [r for r in soak.records if r.session == sess.n]
            slow_sessions.append({
                "session": sess.n, "burst": sess.burst, "error": sess.error, "phases_s": {k: round(v, 3) for k, v in phases.items()},
                # what the SDK handed to httpx: a call missing here never left the client library
                "requests": [[r.rid, r.what, r.status, None if r.elapsed() is None else round(r.elapsed(), 3),
                              "stream" if r.method == "GET" else
                              where(r, server.get(r.rid)) if r.elapsed() is None or r.elapsed() > bound else "ok"] for r in mine],
            })
    unmatched_server = [r for r in server.values() if r.stopped_at() is not None and r.events["arrive"]["method"] != "GET"]
    return {
        "requests": len(soak.records), "server_traced": len(server), "streams": streams,
        "per_request_ms": {k: _stats(v) for k, v in sorted(by_what.items())},
        "hops_ms": {k: _stats(v) for k, v in hops.items()},
        "stalls": stalls, "n_stalls": len(stalls), "slow_or_failed_sessions": slow_sessions[:20],
        "n_slow_or_failed_sessions": len(slow_sessions), "request_errors": failed[:20], "n_request_errors": len(failed),
        "server_unfinished_posts": [{"rid": r.rid, "stopped_at": r.stopped_at(), "rpc": r.rpc} for r in unmatched_server][:20],
    }


def _stall(record: ClientRequest, theirs: TracedRequest | None, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {"rid": record.rid, "session": record.session, "what": record.what, "stopped": where,
                           "status": record.status, "client_error": record.error,
                           "elapsed_s": None if record.elapsed() is None else round(record.elapsed(), 3)}
    if theirs is not None:
        out["server_s_after_send"] = {ev: round(theirs.t(ev) - record.sent, 3) for ev in theirs.events if ev != "open"}
    return out


# --- the server --------------------------------------------------------------------------------------


@contextlib.contextmanager
def server(data: Path, trace: Path, log_path: Path, args: argparse.Namespace) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_CODEEXEC_")}
    env.update(
        MCP_CODEEXEC_DATA_DIR=str(data), MCP_CODEEXEC_CONFIG=str(data / "no-config.toml"),
        MCP_CODEEXEC_TRACE_REQUESTS=str(trace), MCP_CODEEXEC_POOL_SIZE=str(args.pool_size),
        MCP_CODEEXEC_HTTP_CALLS_PER_MINUTE="0", MCP_CODEEXEC_LOG_LEVEL="INFO",
        MCP_CODEEXEC_MAX_CONTAINERS_PER_PRINCIPAL=str(max(16, args.real_sessions + args.pool_size + (sum(args.bursts) if args.real else 0))),
    )
    argv = [sys.executable, "-m", "mcp_codeexec", "serve", "--transport", "http", "--port", str(port)]
    if args.auth:
        env["MCP_CODEEXEC_AUTH_TOKENS"] = f"soak:{TOKEN}"
        env["MCP_CODEEXEC_HTTP_MAX_SESSIONS_PER_PRINCIPAL"] = "100000"
    else:
        argv.append("--no-auth")
    for key in ("MCP_CODEEXEC_IMAGE", "MCP_CODEEXEC_RUNTIME"):
        if key in os.environ:
            env[key] = os.environ[key]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    if args.server_nofile:  # set from outside (no preexec_fn): the server has barely started
        import resource

        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (args.server_nofile, args.server_nofile))
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {log_path.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not listen within 120 s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _sampling(soak: Soak, pid: int, fds: list[int]) -> float:
    """The soak, with the server's open descriptors counted twice a second (a leak, or the limit near)."""
    async with anyio.create_task_group() as tg:
        async def sample() -> None:
            while True:
                with contextlib.suppress(OSError):
                    fds.append(len(os.listdir(f"/proc/{pid}/fd")))
                await anyio.sleep(0.5)

        tg.start_soon(sample)
        seconds = await soak.run()
        tg.cancel_scope.cancel()
    return seconds


def _settings(data: Path) -> Any:
    from mcp_codeexec.config import load_settings

    return load_settings(data_dir=str(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bursts", type=lambda v: [int(x) for x in v.split(",")], default=[256, 512] * 4,
                        help="burst sizes, comma-separated (default 256,512 four times: 3072 sessions)")
    parser.add_argument("--hold", type=int, default=256, help="sessions kept open and idle between bursts")
    parser.add_argument("--bound", type=float, default=30.0, help="seconds within which every request must finish")
    parser.add_argument("--give-up", type=float, default=90.0, help="client read timeout: a stalled request fails after this")
    parser.add_argument("--pause", type=float, default=6.0, help="seconds between bursts (held sessions idle past uvicorn's 5 s keep-alive)")
    parser.add_argument("--auth", action="store_true", help="bearer-token auth and the session ledger (default: --no-auth)")
    parser.add_argument("--real-sessions", type=int, default=0, help="a last burst whose calls run in real sandboxes")
    parser.add_argument("--real", action="store_true", help="every session's calls run in a real sandbox of its own")
    parser.add_argument("--pool-size", type=int, default=0, help="the server's warm pool (for --real-sessions)")
    parser.add_argument("--server-nofile", type=int, default=0, help="the server's open-file limit (default: inherited)")
    parser.add_argument("--keep", metavar="DIR", help="keep the traces and the server log in DIR")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="mcp-codeexec-soak-"))
    data, trace, log_path = tmp / "data", tmp / "server-trace.jsonl", tmp / "server.log"
    data.mkdir()
    out: dict[str, Any] = {"sessions_planned": sum(args.bursts) + args.real_sessions, "bursts": args.bursts, "hold": args.hold,
                           "bound_s": args.bound, "auth": args.auth, "real": args.real, "real_sessions": args.real_sessions,
                           "runtime": os.environ.get("MCP_CODEEXEC_RUNTIME", "runc")}
    try:
        with server(data, trace, log_path, args) as (url, proc):
            soak = Soak(url, args)
            fds: list[int] = []
            out["seconds"] = round(anyio.run(_sampling, soak, proc.pid, fds), 1)
            out["server_open_files_max"] = max(fds, default=None)
            time.sleep(0.5)  # the server's last lines (DELETE ends) reach the trace
            out.update(join(soak, trace, args.bound))
            if out["n_stalls"]:
                dump_stacks(proc.pid, log_path)
        sessions = soak.sessions
        out["sessions"] = len(sessions)
        out["session_errors"] = sum(1 for s in sessions if s.error)
        out["session_error_sample"] = sorted({s.error for s in sessions if s.error})[:5]
        for phase in ("open", "tools_list", "first_call", "idle_call", "close", "idle_s"):
            samples = [s.phases[phase] for s in sessions if phase in s.phases and s.real == args.real]
            out[f"phase_{phase}"] = _stats(samples) if phase != "idle_s" else (
                {"n": len(samples), "min_s": round(min(samples), 1), "max_s": round(max(samples), 1)} if samples else None)
        if args.real_sessions:
            out["phase_real_first_call"] = _stats([s.phases["first_call"] for s in sessions if s.real and "first_call" in s.phases])
        access = [line for line in log_path.read_text(errors="replace").splitlines() if '"POST /mcp' in line]
        out["server_access_log_posts"] = len(access)
        out["server_log_errors"] = [line[:300] for line in log_path.read_text(errors="replace").splitlines()
                                    if "Traceback" in line or " ERROR " in line or "Exception" in line][:10]
    finally:
        if args.real or args.real_sessions or args.pool_size:  # their containers; none are made otherwise
            from .run import remove_everything

            try:
                remove_everything(_settings(data))
            except CodeExecError as exc:
                print(f"could not remove the soak's containers: {exc}", file=sys.stderr)
        if args.keep:
            keep = Path(args.keep)
            keep.mkdir(parents=True, exist_ok=True)
            for f in (trace, log_path):
                if f.exists():
                    shutil.copy(f, keep / f.name)
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))
    return 1 if out.get("n_stalls") or out.get("session_errors") else 0


if __name__ == "__main__":
    sys.exit(main())
