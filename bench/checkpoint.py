"""Idle checkpoints under gVisor (issue 12, item 5): what a checkpoint costs and what it buys.

    python -m bench.checkpoint [--smoke] [--json] [--sizes 0,64,256] [--trials 3]

For each REPL state size S (MiB of random bytes held in a variable; random so that no compression
flatters it), a stdio server (``serve``, runtime runsc, ``idle_stop_seconds`` 1, the reaper every
0.25 s) runs a cell that allocates it, then the sandbox idles until the server checkpoints it:

- ``checkpoint_{S}mib_s``: from the checkpoint request to the container stopped (the server's log);
- ``checkpoint_{S}mib_mib``: the checkpoint image on disk;
- ``restore_first_result_{S}mib_ms``: the next ``code_execution`` call (the client's time): the
  restore from the checkpoint, the attach, the agent's hello and the cell, which reads the
  variable back (checked);
- ``cold_first_result_ms``: the same call after a plain idle stop (``checkpoint_idle`` off, the
  interpreter lost), for comparison: a cold container start plus a fresh interpreter;
- ``warm_cell_ms``: a warm cell in the same session.

Medians over ``--trials``. Needs runsc and dockerd's experimental mode (``doctor`` says).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from mcp_codeexec.config import Settings, load_settings
from mcp_codeexec.engines.docker import NAME_PREFIX, installation_label

from .harness import ServerLog, server_env
from .run import remove_everything

CODE = "code_execution"
CHECKPOINTED = re.compile(r"checkpointed with its memory in ([0-9.]+) s \((\d+|\?) bytes\)")


class BenchError(RuntimeError):
    pass


@asynccontextmanager
async def _session(settings: Settings, log_path: Path, *, checkpoint: bool) -> AsyncIterator[tuple[Client, ServerLog]]:
    env = server_env(settings, log_level="INFO")
    env.update(MCP_CODEEXEC_IDLE_STOP_SECONDS="1", MCP_CODEEXEC_REPL_IDLE_STOP_SECONDS="1",
               MCP_CODEEXEC_CHECKPOINT_IDLE="true" if checkpoint else "false")
    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_codeexec", "serve"], env=env)
    with open(log_path, "a") as errlog:  # noqa: ASYNC230 (once per session, before the server starts)
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=300) as client:
            yield client, ServerLog(log_path)


async def _code(client: Client, code: str) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    result = await client.call_tool(CODE, {"code": code})
    elapsed = time.perf_counter() - start
    sc = result.structured_content or {}
    if result.is_error or sc.get("type") != "code_execution_result" or sc.get("return_code") != 0:
        raise BenchError(f"{code[:60]}: unexpected result {sc}")
    return elapsed, sc


def _status(cid: str) -> str:
    import docker

    return docker.from_env().containers.get(NAME_PREFIX + cid).status


async def _until_stopped(cid: str, timeout: float = 300.0) -> None:
    with anyio.fail_after(timeout):
        while await anyio.to_thread.run_sync(_status, cid) != "exited":
            await anyio.sleep(0.1)


async def checkpoint_trial(settings: Settings, logs: Path, size_mib: int, trial: int) -> dict[str, float]:
    log_path = logs / f"checkpoint-{size_mib}-{trial}.log"
    async with _session(settings, log_path, checkpoint=True) as (client, log):
        made = await client.call_tool(CODE, {"code": f"import os\nblob = os.urandom({size_mib} * 2**20)\nx = 41"})
        if made.is_error:
            raise BenchError(f"allocating {size_mib} MiB: {made.structured_content}")
        cid = (made.meta or {})["container"]["id"]
        warm, _ = await _code(client, "pass")
        await log.wait_for(CHECKPOINTED, timeout=300)
        await _until_stopped(cid)
        seconds, size = CHECKPOINTED.findall(log.text())[-1]
        elapsed, sc = await _code(client, "x += 1\nprint(len(blob), x)")
        if sc["stdout"] != f"{size_mib * 2**20} 42\n" or sc["stderr"]:
            raise BenchError(f"the restored interpreter lost its state: {sc}")
    return {"checkpoint_s": float(seconds), "checkpoint_mib": int(size) / 2**20 if size != "?" else float("nan"),
            "restore_ms": elapsed * 1000, "warm_ms": warm * 1000}


async def cold_trial(settings: Settings, logs: Path, trial: int) -> float:
    async with _session(settings, logs / f"cold-{trial}.log", checkpoint=False) as (client, _):
        made = await client.call_tool(CODE, {"code": "x = 41"})
        cid = (made.meta or {})["container"]["id"]
        await _until_stopped(cid)
        elapsed, sc = await _code(client, "print('x' in globals())")
        if sc["stdout"] != "False\n":
            raise BenchError(f"a cold start kept the interpreter? {sc}")
    return elapsed * 1000


async def run(settings: Settings, logs: Path, sizes: list[int], trials: int, say: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"checkpoint_trials": trials}
    warm: list[float] = []
    for size in sizes:
        rows = []
        for trial in range(trials):
            say(f"{size} MiB, trial {trial + 1}/{trials} ...")
            rows.append(await checkpoint_trial(settings, logs, size, trial))
            await anyio.to_thread.run_sync(remove_everything, settings)
        out[f"checkpoint_{size}mib_s"] = round(statistics.median(r["checkpoint_s"] for r in rows), 3)
        out[f"checkpoint_{size}mib_mib"] = round(statistics.median(r["checkpoint_mib"] for r in rows), 1)
        out[f"restore_first_result_{size}mib_ms"] = round(statistics.median(r["restore_ms"] for r in rows), 1)
        warm += [r["warm_ms"] for r in rows]
    cold = []
    for trial in range(trials):
        say(f"cold start, trial {trial + 1}/{trials} ...")
        cold.append(await cold_trial(settings, logs, trial))
        await anyio.to_thread.run_sync(remove_everything, settings)
    out["cold_first_result_ms"] = round(statistics.median(cold), 1)
    out["warm_cell_ms"] = round(statistics.median(warm), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.checkpoint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="one trial, state size 0 only (CI)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sizes", default="0,64,256", help="REPL state sizes in MiB (default 0,64,256)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    sizes = [0] if args.smoke else [int(s) for s in args.sizes.split(",")]
    trials = 1 if args.smoke else args.trials

    def say(message: str) -> None:
        print(f"[bench.checkpoint {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="mcp-codeexec-bench-ckpt-"))
    logs = work / "logs"
    logs.mkdir()
    settings = load_settings(data_dir=str(work / "data"), pool_size=0, reap_interval_seconds=0.25, config_file=None,
                             runtime="runsc")
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "smoke": args.smoke,
                               "sizes_mib": sizes}
    failed = False
    try:
        results["installation"] = installation_label(settings.data_dir)  # the label on its containers
        results.update(anyio.run(run, settings, logs, sizes, trials, say))
    except BaseException as exc:  # reported, cleaned up below; the exit code says it failed
        failed = True
        say(f"FAILED: {type(exc).__name__}: {exc}")
        for log in sorted(logs.glob("*.log")):
            say(f"{log.name}:\n{log.read_text(errors='replace')[-2000:]}")
        if not isinstance(exc, Exception):
            raise
    finally:
        remove_everything(settings)
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        return 1
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key:36} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
