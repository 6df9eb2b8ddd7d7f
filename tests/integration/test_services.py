"""Services (issue 17 item 3) through real MCP clients and the Python API: a process that outlives
its call, reachable on the sandbox's own ports from the next bash call, listed, logged, stopped."""

from __future__ import annotations

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from mcp_codeexec import Sandbox
from mcp_codeexec.errors import InvalidToolInput
from tests.integration.conftest import make_settings
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import http_server, mcp_client, new_token, remove_installation

pytestmark = pytest.mark.anyio

HOSTED = ("bash_code_execution", "text_editor_code_execution", "code_execution")
WAIT_FOR_PORT = "for i in $(seq 100); do curl -sf localhost:8000/ >/dev/null && break; sleep 0.1; done; "


async def bash(client, command: str):
    result = await client.call_tool("bash_code_execution", {"command": command})
    assert_hosted_shape(result.structured_content, "bash_code_execution")
    return result.structured_content


async def services(client, **arguments):
    return await client.call_tool("services", arguments)


@pytest.mark.parametrize("transport", ["memory", "stdio", "http"])
async def test_a_service_started_in_one_call_answers_curl_in_the_next_and_is_listed_logged_and_stopped(tmp_path, docker_engine, transport):
    settings = make_settings(tmp_path, services=True)
    token = new_token()
    try:
        if transport == "http":
            cm = http_server(settings, token=token)
            base = cm.__enter__()
        else:
            cm, base = None, None
        try:
            async with mcp_client(transport, settings, base_url=base, token=token if base else None) as client:
                await bash(client, "mkdir -p site && echo hello-from-the-service > site/index.html && cd site")
                started = await services(client, action="start", name="web", command="exec python3 -m http.server 8000 --bind 127.0.0.1")
                assert not started.is_error, started.content
                entry = started.structured_content["service"]
                assert entry["name"] == "web" and entry["status"] == "running" and entry["pid"] > 1
                cid = started.meta["container"]["id"]

                got = await bash(client, WAIT_FOR_PORT + "curl -s localhost:8000/index.html")
                assert got["stdout"] == "hello-from-the-service\n", got  # served from the shell's cwd (site/)

                listed = await services(client, action="list")
                [row] = listed.structured_content["services"]
                assert row["status"] == "running" and row["exit_code"] is None and row["uptime_seconds"] > 0
                assert row["command"].startswith("exec python3 -m http.server") and listed.meta["container"]["id"] == cid
                assert "web: running" in listed.content[0].text

                logs = await services(client, action="logs", name="web")
                assert "GET /index.html" in logs.structured_content["output"]

                stopped = await services(client, action="stop", name="web")
                assert stopped.structured_content["service"]["status"] == "exited"
                assert stopped.structured_content["service"]["exit_code"] == 128 + 15  # SIGTERM
                gone = await bash(client, "curl -s -o /dev/null localhost:8000/; echo $?")
                assert gone["stdout"] == "7\n"  # connection refused
                assert (await services(client, action="list")).structured_content["services"] == []
        finally:
            if cm is not None:
                cm.__exit__(None, None, None)
    finally:
        remove_installation(settings)


async def test_the_services_tool_is_opt_in_and_leaves_the_hosted_tools_exactly_as_they_were(tmp_path, docker_engine):
    plain, opted = make_settings(tmp_path / "a"), make_settings(tmp_path / "b", services=True)
    async with mcp_client("memory", plain) as client:
        before = {t.name: t.model_dump() for t in (await client.list_tools()).tools}
        with pytest.raises(MCPError, match="Unknown tool: services"):
            await client.call_tool("services", {"action": "list"})
    async with mcp_client("memory", opted) as client:
        after = {t.name: t.model_dump() for t in (await client.list_tools()).tools}
    assert "services" not in before and set(after) == set(before) | {"services"}
    assert all(before[name] == after[name] for name in HOSTED)


async def test_bad_services_input_is_an_error_result_naming_the_problem(tmp_path, docker_engine):
    settings = make_settings(tmp_path, services=True)
    try:
        async with mcp_client("memory", settings) as client:
            for arguments, words in (({"action": "start", "name": "x"}, "command"), ({"action": "logs"}, "name"),
                                     ({"action": "dance"}, "action"), ({"action": "stop", "name": "nope"}, "no service"),
                                     ({"action": "start", "name": "../x", "command": "true"}, "name")):
                result = await services(client, **arguments)
                assert result.is_error and result.structured_content["error_code"] == "invalid_tool_input", arguments
                assert words in result.structured_content["message"], (arguments, result.structured_content)
    finally:
        remove_installation(settings)


async def test_the_python_api_starts_lists_reads_and_stops_services_within_the_cap(tmp_path, docker_engine):
    settings = make_settings(tmp_path, services_max=2)
    async with Sandbox(settings) as sb:
        await sb.bash("export GREETING=hi")
        first = await sb.start_service("a", "echo $GREETING from $SERVICE_NAME; sleep 600")
        await sb.start_service("b", "sleep 600")
        with pytest.raises(InvalidToolInput, match="at most 2"):
            await sb.start_service("c", "sleep 600")
        with pytest.raises(InvalidToolInput, match="is running"):
            await sb.start_service("a", "sleep 1")
        assert [s["name"] for s in await sb.services()] == ["a", "b"]
        assert (await sb.bash("true")).return_code == 0  # a call's sweep leaves both alone
        assert all(s["status"] == "running" for s in await sb.services())
        assert await sb.service_logs("a") == "hi from a\n"
        stopped = await sb.stop_service("b")
        assert stopped["status"] == "exited" and stopped["pid"] != first["pid"]
        third = await sb.start_service("c", "exit 3")  # a slot is free again
        for _ in range(100):  # it exits at once, but under gVisor its end is seen a little later
            [c] = [s for s in await sb.services() if s["name"] == "c"]
            if c["status"] == "exited":
                break
            await anyio.sleep(0.1)
        assert c["status"] == "exited" and c["exit_code"] == 3 and third["name"] == "c", c


async def test_a_sandbox_with_a_running_service_outlives_the_normal_idle_stop(tmp_path, docker_engine):
    import anyio
    import docker

    from mcp_codeexec.engines.docker import NAME_PREFIX

    settings = make_settings(tmp_path, services=True, idle_stop_seconds=1.0, repl_idle_stop_seconds=3600.0,
                             reap_interval_seconds=0.3)
    engine = docker.from_env()
    try:
        async with mcp_client("memory", settings) as client:
            started = await services(client, action="start", name="job", command="sleep 600")
            cid = started.meta["container"]["id"]
            await anyio.sleep(3)  # ten reaper rounds past the normal idle limit
            assert engine.containers.get(NAME_PREFIX + cid).status == "running"
            await services(client, action="stop", name="job")  # no service left: the normal limit again
            with anyio.fail_after(30):
                while engine.containers.get(NAME_PREFIX + cid).status != "exited":
                    await anyio.sleep(0.2)
    finally:
        engine.close()
        remove_installation(settings)
