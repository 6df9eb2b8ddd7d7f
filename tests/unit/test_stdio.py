"""The thread-free stdio line streams: the same lines the SDK's text-file iteration gives."""

from __future__ import annotations

import os

import anyio
import pytest

from mcp_codeexec.stdio import _FdLines, _FdWriter

pytestmark = pytest.mark.anyio


async def _lines_from(chunks: list[bytes]) -> list[str]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    lines: list[str] = []

    async def reader() -> None:
        async for line in _FdLines(r):
            lines.append(line)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            for chunk in chunks:
                await anyio.sleep(0.01)
                os.write(w, chunk)
            os.close(w)
    finally:
        os.close(r)
    return lines


async def test_lines_split_across_reads_come_out_whole_and_a_last_unterminated_line_is_kept():
    lines = await _lines_from([b'{"a":', b' 1}\n{"b"', b": 2}\n\n", "é".encode()[:1], "é".encode()[1:] + b"tail"])
    assert lines == ['{"a": 1}\n', '{"b": 2}\n', "\n", "étail"]


async def test_a_line_larger_than_the_pipe_buffer_arrives_intact():
    big = b'{"x":"' + b"y" * 3_000_000 + b'"}\n'
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    got: list[str] = []
    try:
        async with anyio.create_task_group() as tg:

            async def reader() -> None:
                async for line in _FdLines(r):
                    got.append(line)

            tg.start_soon(reader)
            await _FdWriter(w).write(big.decode())
            os.close(w)
    finally:
        os.close(r)
    assert got == [big.decode()]
