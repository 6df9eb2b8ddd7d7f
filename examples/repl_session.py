"""A Python REPL session: the `code_execution` tool's persistent interpreter, from the Python API.

    python examples/repl_session.py

Variables, imports and functions survive between cells; top-level `await` works; a traceback is a
result (non-zero return_code), not an exception; files written to $OUTPUT_DIR come back as file ids;
bash shares the files, not the variables. Needs a running Docker engine and the sandbox image
(`mcp-codeexec doctor` checks both).
"""

from __future__ import annotations

import asyncio

from mcp_codeexec import Sandbox
from mcp_codeexec.backends.base import CodeTools, ToolFunction
from mcp_codeexec.schemas import CodeResult


async def lookup(name: str, arguments: dict) -> tuple[str, bool]:
    """A host-side tool the sandbox code may call (programmatic tool calling): (text, is_error)."""
    capitals = {"France": "Paris", "Peru": "Lima", "Egypt": "Cairo"}
    country = arguments.get("country", "")
    return (capitals[country], False) if country in capitals else (f"unknown country {country!r}", True)


async def main() -> None:
    async with Sandbox() as sb:
        print("container:", sb.container_id)

        # Cell 1: imports, data and a function stay in the interpreter.
        await sb.code("import pandas as pd\ndf = pd.DataFrame({'city': ['Oslo', 'Lima', 'Cairo'], 'temp': [4, 19, 27]})\n"
                      "def hottest(frame):\n    return frame.loc[frame.temp.idxmax(), 'city']")
        # Cell 2: uses them; a final bare expression is printed, like a REPL.
        result = await sb.code("hottest(df)")
        assert isinstance(result, CodeResult), result
        print("hottest:", result.stdout.strip())

        # Top-level await, on a persistent event loop.
        result = await sb.code("import asyncio\nasync def square(x):\n    await asyncio.sleep(0.01)\n    return x * x\n"
                               "print(await asyncio.gather(*(square(t) for t in df.temp)))")
        print("gathered:", result.stdout.strip())

        # A traceback is a normal result with a non-zero return code.
        result = await sb.code("df['missing']")
        print("traceback:", result.return_code, result.stderr.strip().splitlines()[-1])

        # $OUTPUT_DIR files come back as code_execution_output file ids.
        result = await sb.code("import os\ndf.to_csv(os.path.join(os.environ['OUTPUT_DIR'], 'temps.csv'), index=False)")
        for output in result.content:
            print("output file:", output.file_id, (await sb.download(output.file_id)).decode().splitlines()[0])

        # Bash sees the interpreter's files but not its variables; the interpreter lives on.
        await sb.code("df.to_json('temps.json')")
        print("bash:", (await sb.bash("test -f temps.json && echo temps.json; echo ${df:-no df in bash}")).stdout.split())
        print("still there:", (await sb.code("len(df)")).stdout.strip())

        # Host functions the code can call: async globals taking one dict, returning text.
        tools = CodeTools([ToolFunction("capital", "The capital of a country.", {"type": "object"})], lookup)
        result = await sb.code("print(await capital({'country': 'Peru'}))", tools=tools)
        print("tool:", result.stdout.strip())

        # restart gives a fresh interpreter, and says so on stderr.
        result = await sb.code("print('df' in globals())", restart=True)
        print("after restart:", result.stdout.strip(), "|", result.stderr.strip())


if __name__ == "__main__":
    asyncio.run(main())
