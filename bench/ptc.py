"""Programmatic tool calling, host side: what a call from code costs, and what it saves.

    python -m bench.ptc [--calls 300] [--json]

1. **Latency.** One upstream tool (the test upstream's ``echo``, a stdio MCP server written with
   the ``mcp`` SDK) called N times through the registry (``CodeTools.call``: name lookup,
   argument validation, the persistent session, result rendering, redaction) against the same
   tool called N times by a plain ``mcp.Client`` on its own session: p50 / p99 of each.
   (The sandbox→host frame hop of a call from REPL code is not included: it is the agent
   stream, measured by the main bench once the REPL lands.)
2. **Context.** 100 calls to that tool made by the model (100 ``tool_use`` turns, each result
   entering its context) against one ``code_execution`` cell that makes the 100 calls with
   ``asyncio.gather`` and prints a one-line summary, both through the local Messages loop
   against the loopback fake API: Messages API requests, and bytes of the final request's
   ``messages`` (what the model has read by the end).
"""

from __future__ import annotations

import argparse
import json
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


async def latency(calls: int) -> dict[str, Any]:
    from mcp_codeexec.tools import ToolRegistry, parse_tools_config

    config = parse_tools_config({"mcpServers": {"x": {"command": sys.executable, "args": [UPSTREAM]}}}, environ={})
    registry_samples: list[float] = []
    async with ToolRegistry(config) as registry:
        tools = registry.for_principal("local")
        assert tools is not None
        for i in range(calls + 20):
            started = time.perf_counter()
            text, is_error = await tools.call("x__echo", {"text": f"ping {i}"})
            if i >= 20:  # warm-up excluded
                registry_samples.append(time.perf_counter() - started)
            assert not is_error and text == f"ping {i}", text
    direct_samples: list[float] = []
    async with Client(StdioServerParameters(command=sys.executable, args=[UPSTREAM])) as client:
        for i in range(calls + 20):
            started = time.perf_counter()
            result = await client.call_tool("echo", {"text": f"ping {i}"})
            if i >= 20:
                direct_samples.append(time.perf_counter() - started)
            assert not result.is_error
    return {"registry": _summary(registry_samples), "direct_mcp_client": _summary(direct_samples)}


async def context(calls: int = 100) -> dict[str, Any]:
    import anthropic

    from mcp_codeexec import Sandbox
    from mcp_codeexec.anthropic_tools import run_ptc_loop
    from mcp_codeexec.config import load_settings
    from mcp_codeexec.tools import ToolRegistry, parse_tools_config
    from tests.fakes import fake_anthropic as fa
    from tests.support.fake_repl import FakeReplBackend

    config = parse_tools_config({"mcpServers": {"x": {"command": sys.executable, "args": [UPSTREAM]}}}, environ={})
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
        scratch = tempfile.TemporaryDirectory(prefix="bench-ptc-")
        settings = load_settings(data_dir=scratch.name)
        for mode in ("model_side", "one_cell"):
            with fa.FakeAnthropic() as api:
                if mode == "model_side":
                    api.push(*[fa.message([fa.client_tool_use("x__echo", {"text": f"record {i}: " + "v" * 40})],
                                          stop_reason="tool_use") for i in range(calls)])
                else:
                    api.push(fa.message([fa.client_tool_use("code_execution", {"code": cell})], stop_reason="tool_use"))
                api.push(fa.message([fa.text("done")]))
                async with anthropic.AsyncAnthropic(api_key="x", base_url=api.base_url) as client, Sandbox(
                    settings, backend=FakeReplBackend(), tools=code_tools if mode == "one_cell" else None
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
        scratch.cleanup()
    out["context_ratio"] = round(out["model_side"]["context_bytes"] / out["one_cell"]["context_bytes"], 1)
    return out


async def run(calls: int) -> dict[str, Any]:
    return {"latency": await latency(calls), "context_100_calls": await context(100)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ptc", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = anyio.run(run, args.calls)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        lat, ctx = result["latency"], result["context_100_calls"]
        print(f"upstream echo through the registry: p50 {lat['registry']['p50_ms']} ms, p99 {lat['registry']['p99_ms']} ms")
        print(f"same tool, direct MCP client:       p50 {lat['direct_mcp_client']['p50_ms']} ms, p99 {lat['direct_mcp_client']['p99_ms']} ms")
        for mode in ("model_side", "one_cell"):
            m = ctx[mode]
            print(f"100 calls {mode:10}: {m['messages_api_requests']} requests, {m['context_bytes']} context bytes, {m['wall_s']} s")
        print(f"context ratio: {ctx['context_ratio']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
