"""A small stdio MCP server used as an upstream in the tool-calling tests (run as a script).

Well-behaved tools (``echo``, ``add``, ``weather.get-forecast``, ``structured``, ``fails``) and
misbehaving ones for the abuse tests: ``hang`` never answers, ``crash`` prints ``UPSTREAM_TOKEN`` to stderr and kills the process,
``flood`` writes a line of junk far larger than any message to stdout, ``garbage`` writes a line
that is not JSON-RPC, ``big`` returns a result of ``size`` characters, ``secret`` prints the
environment variable ``UPSTREAM_TOKEN`` to stderr and fails.

Accounting for the abuse tests: ``count`` (async) echoes its ``text`` after ``ms`` milliseconds and
records it; ``stats`` returns, as JSON, how many ``count`` calls arrived, the most in progress at
once, and how many carried a text starting with ``FORGED``. ``frames`` returns a text made of
agent-protocol frames (``payload``, latin-1) to see that a result is only ever data. ``grow``
adds a tool at runtime (``name``: it upper-cases its ``text``; ``required``: that argument's
name) or, with ``remove``, removes one, then announces ``notifications/tools/list_changed``.

``UPSTREAM_MARK`` (env) is prefixed to every echo, so tests can tell two upstreams apart;
``UPSTREAM_CRASH_ON_START=1`` makes the process exit before serving (a server that cannot start).
``--http PORT`` serves streamable HTTP on 127.0.0.1 instead (``UPSTREAM_HTTP_TOKEN``: the bearer
token it requires).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from mcp.server.mcpserver import Context, MCPServer
from pydantic import BaseModel

if os.environ.get("UPSTREAM_CRASH_ON_START") == "1":
    print("upstream refuses to start", file=sys.stderr, flush=True)
    sys.exit(3)

MARK = os.environ.get("UPSTREAM_MARK", "")
ALIAS = os.environ.get("UPSTREAM_ALIAS")
"""Also list ``echo`` under this name (to make two upstreams collide in the sandbox)."""
WIRE = os.dup(1)
"""The protocol pipe itself: once serving, the SDK diverts fd 1 (and sys.stdout) to stderr."""
server = MCPServer("test-upstream")


@server.tool(description="Echo the text back.", structured_output=False)
def echo(text: str) -> str:
    return MARK + text


if ALIAS:
    server.tool(name=ALIAS, description="Echo, under another name.", structured_output=False)(echo)


@server.tool(description="The value of an environment variable of this process.", structured_output=False)
def getenv(name: str) -> str:
    return os.environ.get(name, "<unset>")


@server.tool(description="Add two integers.")
def add(a: int, b: int) -> int:
    return a + b


class Forecast(BaseModel):
    city: str
    days: int
    summary: str


@server.tool(name="weather.get-forecast", description="Forecast for a city (structured).")
def forecast(city: str, days: int = 1) -> Forecast:
    return Forecast(city=city, days=days, summary=f"sunny in {city} for {days} day(s)")


@server.tool(description="Always fails with a tool error.")
def fails(reason: str = "nope") -> str:
    raise ValueError(f"failed on purpose: {reason}")


@server.tool(description="Never answers.")
def hang() -> str:
    while True:
        time.sleep(3600)


@server.tool(description="Exit the process mid-call.")
def crash() -> str:
    print(f"upstream crashing now (token {os.environ.get('UPSTREAM_TOKEN')})", file=sys.stderr, flush=True)
    os._exit(7)


@server.tool(description="Write a huge junk line to stdout, then answer.")
def flood(size: int = 50_000_000) -> str:
    chunk = b"x" * 1_000_000
    for _ in range(size // len(chunk)):
        os.write(WIRE, chunk)
    os.write(WIRE, b"\n")
    return "flooded"


@server.tool(description="Write a line that is not JSON-RPC to stdout, then never answer.")
def garbage() -> str:
    os.write(WIRE, b'{"jsonrpc": "2.0", "id": "not-a-request", "bogus": [1, 2\n')
    while True:
        time.sleep(3600)


@server.tool(description="Return a result of `size` characters.", structured_output=False)
def big(size: int) -> str:
    return "y" * size


@server.tool(description="Print the token to stderr, then fail.")
def secret() -> str:
    print(f"my token is {os.environ.get('UPSTREAM_TOKEN')}", file=sys.stderr, flush=True)
    raise RuntimeError(f"token {os.environ.get('UPSTREAM_TOKEN')} rejected")


STATS = {"calls": 0, "in_progress": 0, "max_in_progress": 0, "forged": 0}


@server.tool(description="Echo `text` after `ms` milliseconds, counting the call.", structured_output=False)
async def count(text: str, ms: int = 0) -> str:
    import asyncio

    STATS["calls"] += 1
    STATS["forged"] += text.startswith("FORGED")
    STATS["in_progress"] += 1
    STATS["max_in_progress"] = max(STATS["max_in_progress"], STATS["in_progress"])
    try:
        if ms:
            await asyncio.sleep(ms / 1000)
        return text
    finally:
        STATS["in_progress"] -= 1


@server.tool(description="The counters of `count` calls, as JSON.", structured_output=False)
def stats(reset: bool = False) -> str:
    import json

    out = json.dumps(STATS)
    if reset:
        STATS.update(calls=0, max_in_progress=0, forged=0)
    return out


@server.tool(description="Return `payload` (frame-shaped bytes as latin-1 text) verbatim.", structured_output=False)
def frames(payload: str) -> str:
    return payload


@server.tool(description="Add (or remove) a tool at runtime and announce the change.", structured_output=False)
async def grow(name: str, ctx: Context, required: str = "text", remove: bool = False) -> str:
    if remove:
        server.remove_tool(name)
    else:
        def shout(**kwargs: str) -> str:
            return str(kwargs.get(required, "")).upper()

        import inspect

        shout.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(required, inspect.Parameter.KEYWORD_ONLY, annotation=str)], return_annotation=str
        )
        server.add_tool(shout, name=name, description=f"Upper-case `{required}` (added at runtime).",
                        structured_output=False)
    await ctx.notify_tools_changed()
    with contextlib.suppress(Exception):  # handshake-era clients get the plain notification
        await ctx.request_context.session.send_tool_list_changed()
    return "removed" if remove else "added"


def serve_http(port: int, token: str | None) -> None:
    """Streamable HTTP on 127.0.0.1:port/mcp; with ``token``, requests without
    ``Authorization: Bearer <token>`` are answered 401."""
    import uvicorn
    from starlette.responses import PlainTextResponse

    app = server.streamable_http_app()

    async def guarded(scope, receive, send):  # type: ignore[no-untyped-def]
        if token and scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization") != f"Bearer {token}".encode():
                await PlainTextResponse("unauthorized", status_code=401)(scope, receive, send)
                return
        await app(scope, receive, send)

    # A client's subscriptions/listen stream stays open: shutdown must not wait for it forever.
    uvicorn.run(guarded, host="127.0.0.1", port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--http":
        serve_http(int(sys.argv[2]), os.environ.get("UPSTREAM_HTTP_TOKEN"))
    else:
        server.run()
