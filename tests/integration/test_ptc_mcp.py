"""Programmatic tool calling end to end through real MCP clients: the server is configured with an
upstream MCP server (`--tools-config`, the mcpServers format); a client's `code_execution` cell calls
its tools as async functions; each HTTP principal sees only the upstreams configured for it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support.oracle import assert_hosted_shape
from tests.support.servers import http_server, mcp_client, new_token, remove_installation
from tests.integration.conftest import make_settings

pytestmark = pytest.mark.anyio

UPSTREAM = str(Path(__file__).resolve().parents[1] / "support" / "upstream_server.py")
CODE = "code_execution"


def tools_config(tmp_path: Path, **servers: dict) -> Path:
    path = tmp_path / "tools.json"
    path.write_text(json.dumps({"mcpServers": servers}))
    return path


@pytest.fixture
def ptc_settings(tmp_path: Path, docker_engine: None):
    config = tools_config(
        tmp_path,
        t={"command": sys.executable, "args": [UPSTREAM], "allowed_tools": ["echo", "add", "weather.get-forecast", "hang"]},
    )
    s = make_settings(tmp_path, tools_config=str(config), tools_pending_timeout=3.0)
    yield s
    remove_installation(s)


async def code(client, source: str) -> dict:
    result = await client.call_tool(CODE, {"code": source})
    assert_hosted_shape(result.structured_content, CODE)
    return result.structured_content


@pytest.mark.parametrize("transport", ["memory", "stdio", "http"])
async def test_code_calls_upstream_tools_through_an_mcp_client(transport: str, ptc_settings, tmp_path: Path) -> None:
    token = new_token()
    with http_server(ptc_settings, token=token) if transport == "http" else _null() as url:
        async with mcp_client(transport, ptc_settings, base_url=url, token=token) as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
            description = listed[CODE].description or ""
            assert "t__echo" in description and "t__weather_get_forecast" in description
            assert "t__crash" not in description  # not on the allow-list
            block = await code(client, (
                "import asyncio, json\n"
                "echoes = await asyncio.gather(*(t__echo({'text': str(i)}) for i in range(20)))\n"
                "forecast = json.loads(await t__weather_get_forecast({'city': 'Oslo'}))\n"
                "print(','.join(echoes), forecast['summary'])\n"
                "print(sorted(f['name'] for f in list_tools()))\n"
            ))
            assert block["return_code"] == 0, block["stderr"]
            lines = block["stdout"].splitlines()
            assert lines[0] == ",".join(str(i) for i in range(20)) + " sunny in Oslo for 1 day(s)"
            assert "t__echo" in lines[1] and "t__crash" not in lines[1]

            hang = await code(client, "await t__hang({})")
            assert hang["return_code"] != 0
            assert "TimeoutError" in hang["stderr"] and "t__hang" in hang["stderr"]
            invalid = await code(client, "await t__add({'a': 1, 'b': 'two'})")
            assert invalid["return_code"] != 0 and "'two' is not of type 'integer'" in invalid["stderr"]
            disallowed = await code(client, "await t__crash({})")
            assert disallowed["return_code"] != 0 and "NameError" in disallowed["stderr"]
            # The interpreter kept its state through all of it.
            assert (await code(client, "print(len(echoes))"))["stdout"] == "20\n"


async def test_http_principals_see_only_their_upstreams(tmp_path: Path, docker_engine: None) -> None:
    config = tools_config(
        tmp_path,
        a={"command": sys.executable, "args": [UPSTREAM], "allowed_tools": ["echo"], "principals": ["alice"]},
        b={"command": sys.executable, "args": [UPSTREAM], "allowed_tools": ["add"], "principals": ["bob"]},
    )
    settings = make_settings(tmp_path, tools_config=str(config))
    alice, bob = new_token(), new_token()
    try:
        with http_server(settings, token=f"alice:{alice},bob:{bob}") as url:
            async with mcp_client("http", settings, base_url=url, token=alice) as client:
                description = {t.name: t for t in (await client.list_tools()).tools}[CODE].description or ""
                assert "a__echo" in description and "b__add" not in description
                ok = await code(client, "print(await a__echo({'text': 'hi'}))")
                assert ok["stdout"] == "hi\n"
                other = await code(client, "await b__add({'a': 1, 'b': 2})")
                assert other["return_code"] != 0 and "NameError" in other["stderr"]
            async with mcp_client("http", settings, base_url=url, token=bob) as client:
                # structuredContent comes back as its JSON text
                assert (await code(client, "print(await b__add({'a': 1, 'b': 2}))"))["stdout"] == '{"result": 3}\n'
    finally:
        remove_installation(settings)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def test_an_upstream_that_adds_a_tool_at_runtime_is_followed_with_its_allow_list(tmp_path: Path, docker_engine: None) -> None:
    config = tools_config(
        tmp_path, t={"command": sys.executable, "args": [UPSTREAM], "allowed_tools": ["grow", "echo", "shout"]},
    )
    settings = make_settings(tmp_path, tools_config=str(config))

    async def listed(client) -> str:
        return {t.name: t for t in (await client.list_tools()).tools}[CODE].description or ""

    async def until_listed(client, present: str, absent: str | None = None) -> str:
        import anyio

        with anyio.fail_after(20):  # the re-list follows the notification asynchronously
            while True:
                description = await listed(client)
                if present in description and (absent is None or absent not in description):
                    return description
                await anyio.sleep(0.1)

    try:
        async with mcp_client("stdio", settings) as client:
            assert "t__shout" not in await listed(client)
            grown = await code(client, "print(await t__grow({'name': 'shout'}), await t__grow({'name': 'hidden'}))")
            assert grown["stdout"] == "added added\n", grown
            description = await until_listed(client, "t__shout({text: string})")
            assert "t__hidden" not in description  # the allow-list applies to the new listing too
            block = await code(client, (
                "names = sorted(f['name'] for f in list_tools())\n"
                "schema = next(f for f in list_tools() if f['name'] == 't__shout')['input_schema']\n"
                "print(names, schema['required'])\n"
                "print(await t__shout({'text': 'hi'}))\n"
            ))
            assert block["return_code"] == 0, block["stderr"]
            assert block["stdout"] == "['t__echo', 't__grow', 't__shout'] ['text']\nHI\n"
            # A changed schema is the one arguments are checked against.
            changed = await code(client, "await t__grow({'name': 'shout', 'remove': True})\n"
                                         "print(await t__grow({'name': 'shout', 'required': 'word'}))")
            assert changed["stdout"] == "added\n", changed
            await until_listed(client, "t__shout({word: string})")
            old = await code(client, "await t__shout({'text': 'hi'})")
            assert old["return_code"] != 0 and "'word' is a required property" in old["stderr"], old["stderr"]
            assert (await code(client, "print(await t__shout({'word': 'ok'}))"))["stdout"] == "OK\n"
            # A removed tool is gone from the next cell.
            await code(client, "await t__grow({'name': 'shout', 'remove': True})")
            await until_listed(client, "t__echo", absent="t__shout")
            gone = await code(client, "await t__shout({'word': 'x'})")
            assert gone["return_code"] != 0 and "NameError" in gone["stderr"]
    finally:
        remove_installation(settings)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_clients_hear_that_the_tool_list_changed_when_an_upstream_grows(mode: str, tmp_path: Path, docker_engine: None) -> None:
    """code_execution's description names the callable functions, so an upstream's new tool is a
    change of our tool list: 2026-07-28 clients hear it on their `subscriptions/listen` stream,
    handshake-era ones as `notifications/tools/list_changed` (announced in the capabilities)."""
    import anyio
    import mcp_types as types
    from mcp import Client

    from mcp_codeexec.server import create_server

    config = tools_config(tmp_path, t={"command": sys.executable, "args": [UPSTREAM], "allowed_tools": ["grow", "echo", "shout"]})
    settings = make_settings(tmp_path, tools_config=str(config))
    heard = anyio.Event()

    async def on_message(message) -> None:
        if isinstance(getattr(message, "root", message), types.ToolListChangedNotification):
            heard.set()

    try:
        async with Client(create_server(settings), mode=mode, message_handler=on_message) as client:
            assert "t__shout" not in {t.name: t for t in (await client.list_tools()).tools}[CODE].description

            async def grow() -> None:
                grown = await code(client, "print(await t__grow({'name': 'shout'}))")
                assert grown["stdout"] == "added\n", grown

            with anyio.fail_after(60):
                if mode == "legacy":
                    assert client.server_capabilities.tools.list_changed is True
                    await grow()
                    await heard.wait()
                else:
                    async with client.listen(tools_list_changed=True) as subscription:
                        assert subscription.honored is not None and subscription.honored.tools_list_changed
                        await grow()
                        async for _event in subscription:
                            break
            description = {t.name: t for t in (await client.list_tools()).tools}[CODE].description
            assert "t__shout({text: string})" in description
    finally:
        remove_installation(settings)
