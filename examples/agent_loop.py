"""A local agent loop with the anthropic SDK: Claude calls the hosted code-execution tools'
`bash_code_execution` and `text_editor_code_execution` as client tools, which run here, in a
local sandbox, and answer with the hosted result blocks.

    ANTHROPIC_API_KEY=... python examples/agent_loop.py "How many primes are below 10000? Use bash."

ANTHROPIC_BASE_URL (read by the SDK) points it at a gateway or, in the tests, a fake Messages API.
"""

from __future__ import annotations

import asyncio
import os
import sys

import anthropic

from mcp_codeexec import Sandbox
from mcp_codeexec.anthropic_tools import tool_definitions, tool_results

MODEL = os.environ.get("ANTHROPIC_MODEL", "claude-sonnet-4-5")
MAX_TURNS = 20


async def main(prompt: str) -> None:
    client = anthropic.AsyncAnthropic()
    tools = tool_definitions()
    async with Sandbox() as sb:
        messages: list[dict] = [{"role": "user", "content": prompt}]
        for _ in range(MAX_TURNS):
            reply = await client.messages.create(model=MODEL, max_tokens=4096, tools=tools, messages=messages)
            messages.append({"role": "assistant", "content": reply.content})
            for block in reply.content:
                if block.type == "text":
                    print(block.text)
                elif block.type == "tool_use":
                    print(f"[{block.name}] {block.input}")
            if reply.stop_reason != "tool_use":
                break
            results = await tool_results(sb, reply)  # runs each tool_use in the sandbox
            for result in results:
                print(f"  -> {result['content'][0]['text'][:300]}")
            messages.append({"role": "user", "content": results})


if __name__ == "__main__":
    asyncio.run(main(" ".join(sys.argv[1:]) or "How many primes are below 10000? Use bash."))
