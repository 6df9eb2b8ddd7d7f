"""``mcp-codeexec serve`` over stdio with the backend that runs nothing (tests/support/dummy_backend.py):
the stdio transport as the CLI wires it, without Docker. ``sleep N`` takes N seconds and notes on
stderr when it was cancelled. ``MCP_CODEEXEC_DIRECT_CALLS`` (the setting) switches the direct
path; the direct path's count of answered calls is logged to stderr at exit."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mcp_codeexec.backends.base import CallContext, Outcome  # noqa: E402
from mcp_codeexec.config import load_settings  # noqa: E402
from mcp_codeexec.files import FileStore  # noqa: E402
from mcp_codeexec.schemas import BashInput  # noqa: E402
from mcp_codeexec.server import create_server  # noqa: E402
from mcp_codeexec.stdio import serve_stdio  # noqa: E402
from tests.support.dummy_backend import DummyBackend  # noqa: E402


class SleepyBackend(DummyBackend):
    async def bash(self, request: BashInput, ctx: CallContext) -> Outcome:
        if request.command.startswith("sleep "):
            try:
                await anyio.sleep(float(request.command.split()[1]))
            except anyio.get_cancelled_exc_class():
                print(f"cancelled: {request.command}", file=sys.stderr, flush=True)
                raise
        return await super().bash(request, ctx)


def main() -> None:
    logging.basicConfig(level=logging.DEBUG if os.environ.get("DUMMY_DEBUG") else logging.WARNING, stream=sys.stderr)
    data = tempfile.mkdtemp(prefix="dummy-stdio-")
    settings = load_settings(data_dir=os.path.join(data, "data"))
    server = create_server(settings, backend=SleepyBackend(), store=FileStore(settings.files_dir))

    async def run() -> None:
        async with serve_stdio(server) as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

    try:
        anyio.run(run)
    finally:
        import shutil

        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
