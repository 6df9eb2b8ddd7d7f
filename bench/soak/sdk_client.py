"""Soak with the MCP SDK client as bench uses it (one httpx client per session): open sessions in
bursts, keep HOLD of them open and idle, first tools/call of each timed; stalls > STALL s reported."""
import asyncio
import json
import sys
import time
from contextlib import AsyncExitStack

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

URL, TOTAL, HOLD, BURST, STALL = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
slow, failed, times = [], [], []

async def open_session(n, opened, release):
    async with AsyncExitStack() as stack:
        await _session(n, stack)
        opened.set()
        await release.wait()


async def _session(n, stack):
    http = await stack.enter_async_context(httpx2.AsyncClient(timeout=httpx2.Timeout(120), headers={"X-Soak-Id": f"sdk{n}"}))
    client = await stack.enter_async_context(Client(streamable_http_client(URL, http_client=http)))
    t = time.monotonic()
    result = await asyncio.wait_for(client.call_tool("bash_code_execution", {"command": f"echo {n}"}), STALL * 6)
    dt = time.monotonic() - t
    times.append(dt)
    if dt > STALL:
        slow.append((n, round(dt, 2)))
    assert result.structured_content["stdout"] == f"echo {n}"

async def guarded(n, opened, release):
    try:
        await open_session(n, opened, release)
    except BaseException as exc:  # noqa: BLE001 - a soak records every failure
        failed.append((n, repr(exc)[:200]))
        opened.set()


async def main():
    held = []
    started = time.monotonic()
    for base in range(0, TOTAL, BURST):
        batch = []
        for n in range(base, min(TOTAL, base + BURST)):
            opened, release = asyncio.Event(), asyncio.Event()
            task = asyncio.create_task(guarded(n, opened, release))
            batch.append((opened, release, task))
        for opened, _, _ in batch:
            await opened.wait()
        held += batch
        while len(held) > HOLD:
            _, release, task = held.pop(0)
            release.set()
            await task
    for _, release, task in held:
        release.set()
        await task
    times.sort()
    print(json.dumps({"sessions": TOTAL, "seconds": round(time.monotonic() - started, 1), "first_call_p50": round(times[len(times)//2], 3),
                      "p99": round(times[int(len(times)*0.99)], 3), "max": round(times[-1], 3), "n_slow": len(slow), "slow": slow[:10],
                      "n_failed": len(failed), "failed": failed[:5]}))

asyncio.run(main())
