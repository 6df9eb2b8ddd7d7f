"""Upstream MCP servers as functions for the sandbox code: config, registry, calls (no Docker).

The upstreams are real MCP servers: tests/support/upstream_server.py (the `mcp` SDK) over stdio
and streamable HTTP, and `@modelcontextprotocol/server-everything` from npm.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_codeexec.config import load_settings
from mcp_codeexec.tools import (
    ToolLimits,
    ToolRegistry,
    ToolsConfigError,
    function_name,
    load_tools_config,
    parse_tools_config,
    render_listing,
)
from mcp_codeexec.tools.registry import limits_from
from tests.support.npm import NODE_DIR, ensure_installed

pytestmark = pytest.mark.anyio

UPSTREAM = str(Path(__file__).resolve().parents[1] / "support" / "upstream_server.py")
EVERYTHING = "@modelcontextprotocol/server-everything"
EVERYTHING_VERSION = "2026.8.31"
EVERYTHING_ENTRY = NODE_DIR / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def stdio(**extra: Any) -> dict[str, Any]:
    env = extra.pop("env", {})
    return {"command": sys.executable, "args": [UPSTREAM], "env": env, **extra}


def registry(servers: dict[str, Any], **limits: Any) -> ToolRegistry:
    return ToolRegistry(parse_tools_config({"mcpServers": servers}, environ={}), ToolLimits(**limits))


# --- the config file ------------------------------------------------------------------------------


def test_the_config_file_is_claude_desktops_mcpservers_format_with_allow_lists(tmp_path: Path) -> None:
    path = tmp_path / "tools.json"
    path.write_text(json.dumps({"mcpServers": {
        "weather": {"command": "uvx", "args": ["weather-mcp", "--key", "${KEY}"], "env": {"API_KEY": "${KEY}"},
                    "allowed_tools": ["get_forecast"]},
        "issues": {"type": "http", "url": "https://mcp.example.test/mcp", "headers": {"Authorization": "Bearer ${TOK:-dflt-token}"},
                   "principals": ["alice"]},
        "off": {"command": "x", "disabled": True},
    }}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KEY", "k-12345")
        config = load_tools_config(path)
    assert set(config.servers) == {"weather", "issues"}
    weather, issues = config.servers["weather"], config.servers["issues"]
    assert weather.transport == "stdio" and weather.args == ["weather-mcp", "--key", "k-12345"]
    assert weather.env == {"API_KEY": "k-12345"} and weather.allowed_tools == ["get_forecast"]
    assert issues.transport == "http" and issues.headers == {"Authorization": "Bearer dflt-token"}
    assert issues.allows("alice") and not issues.allows("bob") and issues.allows("local")
    assert weather.allows("bob")
    # credentials never appear in a repr, and every text can be redacted of them
    assert "k-12345" not in repr(config) and "dflt-token" not in repr(config)
    redact = config.redactor()
    assert redact("key k-12345, header Bearer dflt-token, token dflt-token") == "key [redacted], header [redacted], token [redacted]"


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ({"a": {"command": "x", "url": "http://127.0.0.1:1/mcp"}}, "exactly one of"),
        ({"a": {}}, "exactly one of"),
        ({"a": {"command": "x", "colour": "red"}}, "colour"),
        ({"a": {"url": "ws://127.0.0.1:1/"}}, "http:// or https://"),
        ({"a-b": {"command": "x"}, "a.b": {"command": "y"}}, "both become `a_b__"),
        ({"a": {"command": "x", "env": {"K": "${UNSET_VARIABLE_X}"}}}, "UNSET_VARIABLE_X"),
    ],
)
def test_a_bad_config_is_refused_at_start_saying_where(servers: dict[str, Any], message: str) -> None:
    with pytest.raises(ToolsConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_tools_config({"mcpServers": servers}, environ={})


def test_function_names_are_server__tool_with_non_identifier_characters_as_underscores() -> None:
    assert function_name("weather", "get_forecast") == "weather__get_forecast"
    assert function_name("my-server", "weather.get-forecast") == "my_server__weather_get_forecast"
    assert function_name("1st", "a b") == "_1st__a_b"
    assert function_name("github", "createPullRequest").isidentifier()


def test_settings_carry_the_tools_config_path_and_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("MCP_CODEEXEC_TOOLS_CONFIG", str(tmp_path / "tools.json"))
    settings = load_settings(data_dir=str(tmp_path), tools_pending_timeout=5)
    assert settings.tools_config == tmp_path / "tools.json"
    limits = limits_from(settings)
    assert limits.pending_timeout == 5 and limits.max_in_flight == 16
    toml = tmp_path / "config.toml"
    toml.write_text(f'tools_config = "{tmp_path / "from-toml.json"}"\ntools_max_result_bytes = 4096\n')
    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(toml))
    monkeypatch.delenv("MCP_CODEEXEC_TOOLS_CONFIG")
    settings = load_settings(data_dir=str(tmp_path))
    assert settings.tools_config == tmp_path / "from-toml.json" and limits_from(settings).max_result_bytes == 4096


def test_the_serve_command_takes_a_tools_config_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcp_codeexec.cli import _settings_from, build_parser

    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(tmp_path / "none.toml"))
    args = build_parser().parse_args(["serve", "--tools-config", str(tmp_path / "t.json")])
    assert _settings_from(args).tools_config == tmp_path / "t.json"


# --- calls through the registry -------------------------------------------------------------------


async def test_upstream_tools_are_called_with_text_or_structured_content_as_json() -> None:
    async with registry({"t": stdio(env={"UPSTREAM_MARK": "t:"})}) as reg:
        tools = reg.for_principal("local")
        assert tools is not None
        names = [f.name for f in tools.functions]
        assert {"t__echo", "t__add", "t__weather_get_forecast"} <= set(names)
        assert await tools.call("t__echo", {"text": "hi"}) == ("t:hi", False)
        text, is_error = await tools.call("t__weather_get_forecast", {"city": "Paris", "days": 2})
        assert not is_error and json.loads(text) == {"city": "Paris", "days": 2, "summary": "sunny in Paris for 2 day(s)"}
        text, is_error = await tools.call("t__fails", {"reason": "x"})
        assert is_error and "fails" in text
        # the calls run in parallel on the one persistent session
        results = await _gather(tools.call, [("t__echo", {"text": str(i)}) for i in range(20)])
        assert results == [(f"t:{i}", False) for i in range(20)]
        assert reg.upstreams["t"].connections == 1


async def _gather(call: Any, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    async def one(i: int, name: str, args: dict[str, Any]) -> None:
        results[i] = await call(name, args)

    async with anyio.create_task_group() as tg:
        for i, (name, args) in enumerate(calls):
            tg.start_soon(one, i, name, args)
    return results


async def test_the_listing_has_one_line_per_function_with_its_arguments() -> None:
    async with registry({"t": stdio(allowed_tools=["echo", "weather.get-forecast"])}) as reg:
        tools = reg.for_principal("local")
        assert tools is not None
        listing = render_listing(tools.functions)
    assert listing.splitlines() == [
        "- await t__echo({text: string}) -> str: Echo the text back.",
        "- await t__weather_get_forecast({city: string, days?: integer}) -> str: Forecast for a city (structured).",
    ]
    [forecast] = [f for f in tools.functions if f.name == "t__weather_get_forecast"]
    assert forecast.output_schema is not None and "summary" in forecast.output_schema["properties"]


async def test_invalid_arguments_are_refused_before_sending_with_the_reason() -> None:
    async with registry({"t": stdio()}) as reg:
        tools = reg.for_principal("local")
        assert tools is not None
        text, is_error = await tools.call("t__add", {"a": 1, "b": "two"})
        assert is_error and text == "invalid arguments for t__add: 'two' is not of type 'integer' at b"
        text, is_error = await tools.call("t__add", {"a": 1})
        assert is_error and "'b' is a required property" in text
        text, is_error = await tools.call("t__add", [1, 2])  # type: ignore[arg-type]
        assert is_error and "one dict argument" in text


async def test_a_tool_not_on_the_allow_list_is_not_exposed_and_calling_it_says_so() -> None:
    async with registry({"t": stdio(allowed_tools=["echo"])}) as reg:
        tools = reg.for_principal("local")
        assert tools is not None
        assert [f.name for f in tools.functions] == ["t__echo"]
        text, is_error = await tools.call("t__add", {"a": 1, "b": 2})
        assert is_error and text == "t__add (t/add) is not on the allowed_tools list of server 't'"
        text, is_error = await tools.call("nothing__here", {})
        assert is_error and "no tool function named 'nothing__here'" in text


async def test_each_principal_sees_only_the_upstreams_its_configuration_allows() -> None:
    servers = {
        "a": stdio(env={"UPSTREAM_MARK": "A:"}, principals=["alice"]),
        "b": stdio(env={"UPSTREAM_MARK": "B:"}, principals=["bob"]),
        "shared": stdio(env={"UPSTREAM_MARK": "S:"}, allowed_tools=["echo"]),
    }
    async with registry(servers) as reg:
        alice, bob, carol, local = (reg.for_principal(p) for p in ("alice", "bob", "carol", "local"))
        assert alice and bob and carol and local
        assert {f.name.split("__")[0] for f in alice.functions} == {"a", "shared"}
        assert {f.name.split("__")[0] for f in bob.functions} == {"b", "shared"}
        assert [f.name for f in carol.functions] == ["shared__echo"]
        assert {f.name.split("__")[0] for f in local.functions} == {"a", "b", "shared"}
        assert await alice.call("a__echo", {"text": "x"}) == ("A:x", False)
        # bob's upstream does not exist for alice: the same answer as for a name nobody has
        text, is_error = await alice.call("b__echo", {"text": "x"})
        assert is_error and text == "no tool function named 'b__echo'; the code_execution tool description lists the available ones"
        assert await reg.call("alice", "b__add", {"a": 1, "b": 2}) == (
            "no tool function named 'b__add'; the code_execution tool description lists the available ones", True)
        assert await bob.call("b__echo", {"text": "y"}) == ("B:y", False)


async def test_a_principal_with_no_upstream_gets_no_code_tools() -> None:
    async with registry({"a": stdio(principals=["alice"])}) as reg:
        assert reg.for_principal("mallory") is None
        assert reg.for_principal("alice") is not None
    async with registry({}) as reg:
        assert reg.for_principal("local") is None


async def test_two_upstream_tools_with_the_same_sandbox_name_are_a_start_up_error() -> None:
    servers = {"a": stdio(env={"UPSTREAM_ALIAS": "b__echo"}), "a__b": stdio(allowed_tools=["echo"])}
    with pytest.raises(ToolsConfigError, match="a/b__echo and a__b/echo are both `a__b__echo`"):
        async with registry(servers):
            pass


# --- streamable HTTP upstreams ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def http_upstream(token: str, port: int | None = None) -> Iterator[str]:
    port = port or _free_port()
    proc = subprocess.Popen([sys.executable, UPSTREAM, "--http", str(port)], env={
        **_base_env(), "UPSTREAM_HTTP_TOKEN": token, "UPSTREAM_MARK": "H:"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the HTTP upstream exited"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH", "LANG")}


async def test_a_streamable_http_upstream_gets_its_headers_and_they_stay_secret(caplog: pytest.LogCaptureFixture) -> None:
    token = "http-secret-token-4821"
    with http_upstream(token) as url:
        async with registry({"h": {"url": url, "headers": {"Authorization": f"Bearer {token}"}}}) as reg:
            tools = reg.for_principal("local")
            assert tools is not None and "h__echo" in [f.name for f in tools.functions]
            assert await tools.call("h__echo", {"text": "over http"}) == ("H:over http", False)
        caplog.set_level(logging.DEBUG)
        async with registry({"bad": {"url": url, "headers": {"Authorization": "Bearer wrong-token-9999"}}},
                            start_timeout=10) as reg:
            assert not reg.upstreams["bad"].connected
            failure = reg.upstreams["bad"].failure or ""
            tools = reg.for_principal("local")
            assert tools is not None and tools.functions == []
            text, is_error = await tools.call("bad__echo", {"text": "x"})
            assert is_error and "'bad' is down" in text
    assert failure and "wrong-token-9999" not in failure and "wrong-token-9999" not in text
    assert "wrong-token-9999" not in caplog.text and token not in caplog.text


async def test_an_http_upstream_that_goes_away_is_reconnected_when_it_is_back() -> None:
    port = _free_port()
    with http_upstream("tok-1234", port) as url:
        reg = registry({"h": {"url": url, "headers": {"Authorization": "Bearer tok-1234"}}})
        await reg.__aenter__()
    try:
        text, is_error = await reg.call("local", "h__echo", {"text": "gone"})
        assert is_error and "upstream MCP server 'h'" in text
        with http_upstream("tok-1234", port):
            for _ in range(100):  # the supervisor's back-off: 0.5 s, 1 s, ...
                result = await reg.call("local", "h__echo", {"text": "back"})
                if not result[1]:
                    break
                await anyio.sleep(0.1)
            assert result == ("H:back", False)
            assert reg.upstreams["h"].connections == 2
    finally:
        await reg.__aexit__(None, None, None)


# --- the upstream's tool list changes ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_tool_added_or_removed_at_runtime_is_followed_on_both_protocol_eras(mode: str, monkeypatch) -> None:
    """2026-07-28 connections hear of it through subscriptions/listen, handshake-era ones through
    the plain notifications/tools/list_changed."""
    from mcp_codeexec.tools.upstreams import Upstream

    monkeypatch.setattr(Upstream, "connect_mode", mode)
    async with registry({"t": stdio(allowed_tools=["grow", "echo", "shout"])}) as reg:
        names = lambda: [f.name for f in reg.functions_for("local")]
        assert names() == ["t__echo", "t__grow"]
        assert await reg.call("local", "t__grow", {"name": "shout"}) == ("added", False)
        assert await reg.call("local", "t__grow", {"name": "hidden"}) == ("added", False)
        with anyio.fail_after(10):
            while "t__shout" not in names():
                await anyio.sleep(0.05)
        assert names() == ["t__echo", "t__grow", "t__shout"]  # t__hidden: not on the allow-list
        assert await reg.call("local", "t__shout", {"text": "hi"}) == ("HI", False)
        text, is_error = await reg.call("local", "t__hidden", {"text": "hi"})
        assert is_error and "not on the allowed_tools list" in text
        assert await reg.call("local", "t__grow", {"name": "shout", "remove": True}) == ("removed", False)
        with anyio.fail_after(10):
            while "t__shout" in names():
                await anyio.sleep(0.05)
        assert reg.upstreams["t"].connections == 1  # followed on the same session, not by reconnecting


# --- a third-party upstream from npm -------------------------------------------------------------


@pytest.fixture(scope="module")
def everything() -> Path:
    ensure_installed("the MCP server-everything", f"{EVERYTHING}@{EVERYTHING_VERSION}", EVERYTHING_ENTRY.is_file)
    return EVERYTHING_ENTRY


async def test_server_everything_from_npm_is_called_through_the_registry(everything: Path) -> None:
    servers = {"everything": {"command": "node", "args": [str(everything), "stdio"],
                              "allowed_tools": ["echo", "get-sum", "get-structured-content", "get-tiny-image"]}}
    async with registry(servers) as reg:
        tools = reg.for_principal("local")
        assert tools is not None
        assert [f.name for f in tools.functions] == [
            "everything__echo", "everything__get_structured_content", "everything__get_sum", "everything__get_tiny_image"]
        assert await tools.call("everything__echo", {"message": "hi"}) == ("Echo: hi", False)
        results = await _gather(tools.call, [("everything__get_sum", {"a": i, "b": 1}) for i in range(20)])
        assert results == [(f"The sum of {i} and 1 is {i + 1}.", False) for i in range(20)]
        text, is_error = await tools.call("everything__get_structured_content", {"location": "New York"})
        assert not is_error and set(json.loads(text)) == {"temperature", "conditions", "humidity"}
        text, is_error = await tools.call("everything__get_sum", {"a": "x", "b": 2})
        assert is_error and text == "invalid arguments for everything__get_sum: 'x' is not of type 'number' at a"
        text, is_error = await tools.call("everything__get_tiny_image", {})
        assert not is_error and "[image image/png" in text and "base64 characters not shown]" in text
        text, is_error = await tools.call("everything__get_env", {})
        assert is_error and "not on the allowed_tools list" in text


async def test_the_registry_is_built_from_the_settings_tools_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcp_codeexec.tools import registry_from_settings

    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(tmp_path / "none.toml"))
    path = tmp_path / "tools.json"
    path.write_text(json.dumps({"mcpServers": {"t": stdio(allowed_tools=["echo"])}}))
    async with registry_from_settings(load_settings(data_dir=str(tmp_path), tools_config=str(path))) as reg:
        tools = reg.for_principal("local")
        assert tools is not None and await tools.call("t__echo", {"text": "cfg"}) == ("cfg", False)
    async with registry_from_settings(load_settings(data_dir=str(tmp_path))) as reg:
        assert reg.for_principal("local") is None
    path.write_text("{not json")
    with pytest.raises(ToolsConfigError, match="cannot be read as JSON"):
        registry_from_settings(load_settings(data_dir=str(tmp_path), tools_config=str(path)))


def test_credential_like_env_values_are_redacted_and_ordinary_ones_are_not() -> None:
    config = parse_tools_config({"mcpServers": {"s": {"command": "x", "env": {
        "API_KEY": "abcd1234", "GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_short1", "DEBUG": "true", "ROOT": "/srv/data/x",
        "OPAQUE": "Zm9vYmFyYmF6cXV4cXV1eA", "REGION": "${REGION}", "DB": "${DB_PASSWORD}"}}}},
        environ={"REGION": "eu-west-1", "DB_PASSWORD": "hunter22"})
    redact = config.redactor()
    text = "abcd1234 ghp_short1 true /srv/data/x Zm9vYmFyYmF6cXV4cXV1eA eu-west-1 hunter22"
    assert redact(text) == "[redacted] [redacted] true /srv/data/x [redacted] eu-west-1 [redacted]"


def test_the_example_tools_config_is_valid() -> None:
    config = load_tools_config(Path(__file__).resolve().parents[2] / "examples" / "tools_config.json")
    assert list(config.servers) == ["everything"]  # github is disabled (and needs GITHUB_TOKEN)
    assert config.servers["everything"].allowed_tools == ["echo", "get-sum", "get-structured-content"]
