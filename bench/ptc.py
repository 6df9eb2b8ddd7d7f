"""Programmatic tool calling: what a call from code costs, and what it saves.

    python -m bench.ptc [--calls 300] [--json] [--smoke]
    python -m bench --only ptc            # the same, as a step of the main bench (keys ptc_*)

1. **Latency.** One upstream tool (the test upstream's ``echo``, a stdio MCP server written with
   the ``mcp`` SDK) called N times three ways, each after 20 warm-up calls: **from code in a
   sandbox** (a ``code_execution`` cell in a real Docker sandbox runs ``await x__echo({...})`` N
   times in a loop and times each call inside the cell with ``time.perf_counter``: the REPL →
   agent → attach stream → host → registry → upstream → back); through the registry alone
   (``CodeTools.call`` on the host: name lookup, validation, the persistent session, result
   rendering, redaction); and by a plain ``mcp.Client`` on its own session (what an MCP client
   pays for the same tool). p50 / p99 (nearest rank) of each.
2. **Context.** 100 calls to that tool made by the model (100 ``tool_use`` turns, each result
   entering its context) against one ``code_execution`` cell in a real sandbox that makes the
   100 calls with ``asyncio.gather`` and prints a one-line summary, both through the local
   Messages loop against the loopback fake API: Messages API requests (model round trips), and
   bytes of the final request's ``messages`` (what the model has read by the end). The cell's
   own time for the gather is ``gather100_in_cell_ms``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = str(ROOT / "tests" / "support" / "upstream_server.py")
RESULTS = ROOT / "bench" / "results" / "ptc.json"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(_pct(ms, 0.99), 3), "n": len(ms)}


class PtcBenchError(Exception):
    """A call that should have succeeded did not."""


def _config() -> Any:
    from mcp_codeexec.tools import parse_tools_config

    return parse_tools_config({"mcpServers": {"x": {"command": sys.executable, "args": [UPSTREAM]}}}, environ={})


async def in_cell(settings: Any, calls: int, warmup: int = 20) -> dict[str, Any]:
    """``await x__echo`` timed inside a cell of a real sandbox, then 100 at once with gather."""
    from mcp_codeexec import Sandbox
    from mcp_codeexec.tools import ToolRegistry

    code = (
        "import asyncio, json, time\n"
        "samples = []\n"
        f"for i in range({calls + warmup}):\n"
        "    t0 = time.perf_counter()\n"
        "    text = await x__echo({'text': f'ping {i}'})\n"
        "    took = time.perf_counter() - t0\n"
        "    assert text == f'ping {i}', text\n"
        f"    if i >= {warmup}:\n"
        "        samples.append(took)\n"
        "t0 = time.perf_counter()\n"
        "got = await asyncio.gather(*(x__echo({'text': str(i)}) for i in range(100)))\n"
        "gather = time.perf_counter() - t0\n"
        "assert got == [str(i) for i in range(100)]\n"
        "print(json.dumps({'samples': samples, 'gather': gather}))\n"
    )
    async with ToolRegistry(_config()) as registry, Sandbox(settings, tools=registry.for_principal("local")) as sb:
        block = await sb.code("pass")  # the interpreter starts here, not in the timed cell
        block = await sb.code(code)
    if block.return_code != 0:
        raise PtcBenchError(f"the bench cell failed: {block.stderr[-2000:]}")
    data = json.loads(block.stdout.strip().splitlines()[-1])
    return {"in_cell": _summary(data["samples"]), "gather100_in_cell_ms": round(data["gather"] * 1000, 2)}


async def latency(calls: int) -> dict[str, Any]:
    from mcp_codeexec.tools import ToolRegistry

    config = _config()
    registry_samples: list[float] = []
    async with ToolRegistry(config) as registry:
        tools = registry.for_principal("local")
        assert tools is not None
        for i in range(calls + 20):
            started = time.perf_counter()
            text, is_error = await tools.call("x__echo", {"text": f"ping {i}"})
            if i >= 20:  # warm-up excluded
                registry_samples.append(time.perf_counter() - started)
            if is_error or text != f"ping {i}":
                raise PtcBenchError(f"registry call failed: {text}")
    direct_samples: list[float] = []
    async with Client(StdioServerParameters(command=sys.executable, args=[UPSTREAM])) as client:
        for i in range(calls + 20):
            started = time.perf_counter()
            result = await client.call_tool("echo", {"text": f"ping {i}"})
            if i >= 20:
                direct_samples.append(time.perf_counter() - started)
            if result.is_error:
                raise PtcBenchError(f"direct call failed: {result.content}")
    return {"registry": _summary(registry_samples), "direct_mcp_client": _summary(direct_samples)}


async def context(settings: Any, calls: int = 100) -> dict[str, Any]:
    import anthropic

    from mcp_codeexec import Sandbox
    from mcp_codeexec.anthropic_tools import run_ptc_loop
    from mcp_codeexec.tools import ToolRegistry
    from tests.fakes import fake_anthropic as fa
    from tests.support.fake_repl import FakeReplBackend

    config = _config()
    cell = (
        "import asyncio\n"
        f"results = await asyncio.gather(*(x__echo({{'text': f'record {{i}}: ' + 'v' * 40}}) for i in range({calls})))\n"
        "print(len(results), 'records,', sum(len(r) for r in results), 'characters; first:', results[0][:20])\n"
    )
    out: dict[str, Any] = {}
    async with ToolRegistry(config) as registry:
        code_tools = registry.for_principal("local")
        assert code_tools is not None

        async def echo(text: str) -> str:  # the same upstream tool, called by the model
            result, _ = await code_tools.call("x__echo", {"text": text})
            return result

        direct_tool = [{"name": "x__echo", "description": "Echo the text back.",
                        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}]
        for mode in ("model_side", "one_cell"):
            with fa.FakeAnthropic() as api:
                if mode == "model_side":
                    api.push(*[fa.message([fa.client_tool_use("x__echo", {"text": f"record {i}: " + "v" * 40})],
                                          stop_reason="tool_use") for i in range(calls)])
                else:
                    api.push(fa.message([fa.client_tool_use("code_execution", {"code": cell})], stop_reason="tool_use"))
                api.push(fa.message([fa.text("done")]))
                # The model-side loop runs no code (a fake backend); the cell runs in a real sandbox.
                backend = FakeReplBackend() if mode == "model_side" else None
                async with anthropic.AsyncAnthropic(api_key="x", base_url=api.base_url) as client, Sandbox(
                    settings, backend=backend, tools=code_tools if mode == "one_cell" else None
                ) as sb:
                    started = time.perf_counter()
                    await run_ptc_loop(client, sb, model="claude-test", messages=[{"role": "user", "content": "go"}],
                                       tools=direct_tool if mode == "model_side" else [],
                                       implementations={"x__echo": echo} if mode == "model_side" else None,
                                       max_turns=calls + 5)
                    elapsed = time.perf_counter() - started
                last = api.message_requests[-1]
                out[mode] = {
                    "messages_api_requests": len(api.message_requests),
                    "context_bytes": len(json.dumps(last["messages"]).encode()),
                    "wall_s": round(elapsed, 3),
                }
    out["context_ratio"] = round(out["model_side"]["context_bytes"] / out["one_cell"]["context_bytes"], 1)
    return out


async def run(settings: Any, calls: int) -> dict[str, Any]:
    cell = await in_cell(settings, calls)
    lat = await latency(calls)
    lat["in_cell"] = cell.pop("in_cell")
    return {"latency": lat, "context_100_calls": {**await context(settings, 100), **cell}}


def flat(result: dict[str, Any]) -> dict[str, Any]:
    """The ``ptc_*`` keys of the main bench's results."""
    lat, ctx = result["latency"], result["context_100_calls"]
    out: dict[str, Any] = {}
    for name, key in (("in_cell", "cell"), ("registry", "registry"), ("direct_mcp_client", "direct")):
        out[f"ptc_{key}_p50_ms"] = lat[name]["p50_ms"]
        out[f"ptc_{key}_p99_ms"] = lat[name]["p99_ms"]
    out["ptc_gather100_in_cell_ms"] = ctx["gather100_in_cell_ms"]
    for mode in ("model_side", "one_cell"):
        out[f"ptc_{mode}_requests"] = ctx[mode]["messages_api_requests"]
        out[f"ptc_{mode}_context_bytes"] = ctx[mode]["context_bytes"]
    out["ptc_context_ratio"] = ctx["context_ratio"]
    return out


async def scenario(settings: Any, plan: Any) -> dict[str, Any]:
    """The main bench's ``ptc`` step (``python -m bench``; its smoke form: a few calls, errors only)."""
    return flat(await run(settings, plan.ptc_calls))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ptc", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="a few calls, checks for errors only; writes nothing")
    args = parser.parse_args(argv)
    from bench.run import remove_everything
    from mcp_codeexec.config import load_settings

    work = tempfile.TemporaryDirectory(prefix="bench-ptc-")
    settings = load_settings(data_dir=str(Path(work.name) / "data"), pool_size=0, reap_interval_seconds=3600.0,
                             config_file=None, image=os.environ.get("MCP_CODEEXEC_IMAGE") or None,
                             runtime=os.environ.get("MCP_CODEEXEC_RUNTIME") or None)
    try:
        result = anyio.run(run, settings, 10 if args.smoke else args.calls)
    finally:
        remove_everything(settings)
        work.cleanup()
    if not args.smoke:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        lat, ctx = result["latency"], result["context_100_calls"]
        print(f"await x__echo in a sandbox's cell:  p50 {lat['in_cell']['p50_ms']} ms, p99 {lat['in_cell']['p99_ms']} ms")
        print(f"upstream echo through the registry: p50 {lat['registry']['p50_ms']} ms, p99 {lat['registry']['p99_ms']} ms")
        print(f"same tool, direct MCP client:       p50 {lat['direct_mcp_client']['p50_ms']} ms, p99 {lat['direct_mcp_client']['p99_ms']} ms")
        for mode in ("model_side", "one_cell"):
            m = ctx[mode]
            print(f"100 calls {mode:10}: {m['messages_api_requests']} requests, {m['context_bytes']} context bytes, {m['wall_s']} s")
        print(f"100 calls with gather inside the cell: {ctx['gather100_in_cell_ms']} ms")
        print(f"context ratio: {ctx['context_ratio']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
