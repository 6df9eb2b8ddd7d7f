"""The HTTP server's direct path against the SDK's pipeline, interleaved (issue 18, item 3).

    python -m bench.direct_ab [--rounds 5] [--calls 800] [--spaced 120] [--pause-ms 100] [--json] [--smoke]

Each round runs both sides, direct first (``MCP_CODEEXEC_DIRECT_CALLS`` true, then false): a fresh
``mcp-codeexec serve --transport http --no-auth`` on a loopback port; one handshake-era session
whose sandbox is warmed by 100 calls; then ``--calls`` back-to-back and ``--spaced`` spaced
(``--pause-ms`` before each) ``bash_code_execution`` ``true`` calls, each timed; the server's CPU
(utime + stime from /proc) per call over each phase. The client is raw JSON-RPC on one keep-alive
httpx connection, so the MCP SDK client's own cost (which the main bench's ``mcp_warm`` includes)
does not blur the server's. The same machine, the same minutes, the two sides alternating: the
figures are medians over rounds and the direct / SDK ratio; read those, not one run's numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2

from mcp_codeexec.config import Settings, load_settings
from mcp_codeexec.engines.docker import installation_label

from .harness import http_server, ms, p50
from .run import remove_everything

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
VERSION = "2025-11-25"  # what the TypeScript SDK and Claude Code negotiate


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Session:
    def __init__(self, http: httpx2.Client, url: str) -> None:
        self.http, self.url, self.next_id = http, url + "/mcp", 1
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}
        r = http.post(self.url, content=json.dumps(init), headers=HEADERS)
        r.raise_for_status()
        self.headers = {**HEADERS, "Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": VERSION}
        http.post(self.url, content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                  headers=self.headers).raise_for_status()

    def true(self) -> float:
        self.next_id += 1
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": "tools/call",
                "params": {"name": "bash_code_execution", "arguments": {"command": "true"}}}
        start = time.perf_counter()
        r = self.http.post(self.url, content=json.dumps(body), headers=self.headers)
        took = time.perf_counter() - start
        if r.status_code != 200 or '"return_code":0' not in r.text:
            raise RuntimeError(f"call failed: {r.status_code} {r.text[:300]}")
        return took


def side(settings: Settings, logs: Path, name: str, calls: int, spaced: int, pause: float) -> dict[str, float]:
    with http_server(settings, logs / f"{name}.log", trace_requests=False) as (url, proc), httpx2.Client(timeout=120) as http:
        session = Session(http, url)
        for _ in range(100):
            session.true()
        out: dict[str, float] = {}
        for phase, n, wait in (("back_to_back", calls, 0.0), ("spaced", spaced, pause)):
            before = _cpu_seconds(proc.pid)
            times = []
            for _ in range(n):
                if wait:
                    time.sleep(wait)
                times.append(session.true())
            out[f"{phase}_server_cpu_ms"] = ms((_cpu_seconds(proc.pid) - before) / n)
            out[f"{phase}_p50_ms"] = ms(p50(times))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.direct_ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=800, help="back-to-back calls per side and round")
    parser.add_argument("--spaced", type=int, default=120, help="spaced calls per side and round")
    parser.add_argument("--pause-ms", type=float, default=100.0)
    parser.add_argument("--smoke", action="store_true", help="one round of a few calls (CI)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    rounds, calls, spaced = (1, 20, 5) if args.smoke else (args.rounds, args.calls, args.spaced)

    def say(message: str) -> None:
        print(f"[bench.direct_ab {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="mcp-codeexec-bench-ab-"))
    logs = work / "logs"
    logs.mkdir()
    base = load_settings(data_dir=str(work / "data"), config_file=None)
    runs: dict[str, list[dict[str, float]]] = {"direct": [], "sdk": []}
    try:
        for r in range(rounds):
            for name, direct in (("direct", True), ("sdk", False)):
                say(f"round {r + 1}/{rounds}: {name}")
                settings = base.model_copy(update={"direct_calls": direct})
                runs[name].append(side(settings, logs, f"{name}-{r}", calls, spaced, args.pause_ms / 1000))
                remove_everything(settings)
    finally:
        remove_everything(base)
        shutil.rmtree(work, ignore_errors=True)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "smoke": args.smoke,
                               "installation": installation_label(base.data_dir),  # the label on its containers
                               "rounds": rounds, "calls": calls, "spaced": spaced, "runs": runs}
    for key in runs["direct"][0]:
        direct, sdk = (statistics.median(run[key] for run in runs[name]) for name in ("direct", "sdk"))
        results[f"direct_{key}"], results[f"sdk_{key}"] = round(direct, 3), round(sdk, 3)
        results[f"ratio_{key}"] = round(direct / sdk, 3) if sdk else None
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            if key != "runs":
                print(f"{key:36} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
