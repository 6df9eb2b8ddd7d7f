"""Programmatic tool calling in a local agent loop: Claude writes Python that calls your tools.

The two tools below carry ``allowed_callers: ["code_execution_20260120"]``, so (as with the hosted
API) Claude does not call them turn by turn: it gets a ``code_execution`` tool whose description
lists them as async functions, writes one cell that calls them (in parallel with
``asyncio.gather``), and only what the cell prints comes back into its context. The cell runs in
a local sandbox; each call it makes is executed here, on the host, by the Python function.

    ANTHROPIC_API_KEY=... python examples/ptc_loop.py "Which of our warehouses is warmest today?"

ANTHROPIC_BASE_URL (read by the SDK) points it at a gateway or, in the tests, a fake Messages API.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import anthropic

from mcp_codeexec import Sandbox
from mcp_codeexec.anthropic_tools import run_ptc_loop

MODEL = os.environ.get("ANTHROPIC_MODEL", "claude-sonnet-4-5")
CALLERS = ["code_execution_20260120"]

TOOLS: list[dict[str, Any]] = [
    {
        "name": "list_warehouses",
        "description": 'List the warehouses. Returns JSON: [{"id": str, "city": str}].',
        "input_schema": {"type": "object", "properties": {}},
        "allowed_callers": CALLERS,
    },
    {
        "name": "get_temperature",
        "description": 'Current temperature of a city. Returns JSON: {"city": str, "celsius": float}.',
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "allowed_callers": CALLERS,
    },
]

WAREHOUSES = [{"id": "w1", "city": "Oslo"}, {"id": "w2", "city": "Lima"}, {"id": "w3", "city": "Paris"}]
TEMPERATURES = {"Oslo": -3.5, "Lima": 24.0, "Paris": 11.0}


def list_warehouses() -> str:
    return json.dumps(WAREHOUSES)


async def get_temperature(city: str) -> str:
    await asyncio.sleep(0)  # a real implementation would call a weather service here
    return json.dumps({"city": city, "celsius": TEMPERATURES.get(city, 15.0)})


async def main(prompt: str, sandbox: Sandbox | None = None) -> str:
    async with anthropic.AsyncAnthropic() as client, sandbox or Sandbox() as sb:
        result = await run_ptc_loop(
            client,
            sb,
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            tools=TOOLS,
            implementations={"list_warehouses": list_warehouses, "get_temperature": get_temperature},
            on_reply=_show,
        )
    print(f"[{result.requests} model requests; {len(result.code_calls)} tool calls made from code: {result.code_calls}]")
    return "".join(block.text for block in result.reply.content if block.type == "text")


def _show(reply: Any) -> None:
    for block in reply.content:
        if block.type == "text":
            print(block.text)
        elif block.type == "tool_use":
            print(f"[{block.name}]\n{block.input.get('code', block.input)}")


if __name__ == "__main__":
    asyncio.run(main(" ".join(sys.argv[1:]) or "Which of our warehouses is warmest today?"))
