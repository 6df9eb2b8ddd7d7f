"""Open many MCP streamable-HTTP sessions in bursts on 127.0.0.1, hold up to HOLD idle, log every
request by id with its timing; report requests that took longer than STALL seconds."""
import asyncio
import itertools
import json
import sys
import time

import httpx2

URL, TOTAL, HOLD, BURST, STALL = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
counter = itertools.count(1)
slow, failed, times = [], [], []
log = open(sys.argv[6], "w", buffering=1)  # noqa: SIM115 - the run's log, open for the whole run
HEAD = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}

async def post(http, sid, body, session):
    rid = f"s{session}-r{next(counter)}"
    headers = {**HEAD, "X-Request-Id": rid, **({"Mcp-Session-Id": sid} if sid else {}), "MCP-Protocol-Version": "2025-06-18"}
    t = time.monotonic()
    log.write(f"{t:.4f} send {rid} {body.get('method')}\n")
    try:
        r = await asyncio.wait_for(http.post(URL, content=json.dumps(body), headers=headers), STALL * 4)
        text = r.text
    except Exception as exc:
        failed.append((rid, body.get("method"), repr(exc)[:200]))
        log.write(f"{time.monotonic():.4f} fail {rid} {exc!r}\n")
        raise
    dt = time.monotonic() - t
    times.append(dt)
    log.write(f"{time.monotonic():.4f} done {rid} {r.status_code} {dt:.3f}\n")
    if dt > STALL:
        slow.append((rid, body.get("method"), round(dt, 2)))
    return r, text

async def session(http, n):
    r, _ = await post(http, None, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "soak", "version": "1"}}}, n)
    sid = r.headers.get("mcp-session-id")
    await post(http, sid, {"jsonrpc": "2.0", "method": "notifications/initialized"}, n)
    await post(http, sid, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, n)
    r, text = await post(http, sid, {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "bash_code_execution", "arguments": {"command": f"echo {n}"}}}, n)
    assert f"echo {n}" in text, text[:300]
    return sid

async def main():
    held = []
    limits = httpx2.Limits(max_connections=HOLD * 2, max_keepalive_connections=HOLD * 2)
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(STALL * 4), limits=limits) as http:
        started = time.monotonic()
        for base in range(0, TOTAL, BURST):
            results = await asyncio.gather(*(session(http, n) for n in range(base, min(TOTAL, base + BURST))), return_exceptions=True)
            held += [r for r in results if isinstance(r, str)]
            while len(held) > HOLD:
                sid = held.pop(0)
                try:
                    await http.delete(URL, headers={**HEAD, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"})
                except Exception as exc:  # noqa: BLE001 - a soak records every failure
                    failed.append(("delete", sid, repr(exc)[:200]))
            await asyncio.sleep(0.2)
        times.sort()
        print(json.dumps({"sessions": TOTAL, "requests": len(times), "seconds": round(time.monotonic() - started, 1),
                          "p50": round(times[len(times) // 2], 4), "p99": round(times[int(len(times) * 0.99)], 4),
                          "max": round(times[-1], 3), "slow": slow[:20], "n_slow": len(slow), "failed": failed[:20], "n_failed": len(failed)}))

asyncio.run(main())
