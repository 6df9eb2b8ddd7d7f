"""The Python API: a sandbox in an `async with`, the hosted tool's result models, files in and out.

    python examples/python_api.py

Needs a running Docker engine and the sandbox image (`mcp-codeexec doctor` checks both).
"""

from __future__ import annotations

import asyncio

from mcp_codeexec import Sandbox
from mcp_codeexec.schemas import BashResult


async def main() -> None:
    async with Sandbox() as sb:  # a fresh container; removed at the end (keep=True keeps it)
        print("container:", sb.container_id)

        # Upload: the file appears in /workspace/inputs.
        await sb.upload(b"city,temp\nOslo,4\nLima,19\nCairo,27\n", filename="temps.csv")

        # The text editor writes a script; bash runs it and leaves a report in $OUTPUT_DIR.
        await sb.create(
            "report.py",
            "import csv, os\n"
            "rows = list(csv.DictReader(open('inputs/temps.csv')))\n"
            "hottest = max(rows, key=lambda r: int(r['temp']))\n"
            "print(f\"{len(rows)} cities, hottest: {hottest['city']}\")\n"
            "with open(os.path.join(os.environ['OUTPUT_DIR'], 'hottest.txt'), 'w') as f:\n"
            "    f.write(hottest['city'] + '\\n')\n",
        )
        result = await sb.bash("python3 report.py")
        assert isinstance(result, BashResult), result  # a BashError would carry the hosted error_code
        print("stdout:", result.stdout.strip())

        # Output files come back as file ids, exactly like the hosted tool's bash_code_execution_output.
        for output in result.content:
            print("output file:", output.file_id, (await sb.download(output.file_id)).decode().strip())

        # Edits and views return the hosted editor blocks.
        print("str_replace:", (await sb.str_replace("report.py", "hottest:", "warmest:")).lines)
        print("view:", (await sb.view("report.py", view_range=[4, 4])).content.strip())

        # Errors are data too, as in the hosted tool.
        print("error:", (await sb.view("missing.txt")).model_dump())


if __name__ == "__main__":
    asyncio.run(main())
