"""The ``code_execution`` tool: a persistent Python interpreter per container, through real MCP clients.

The cases on ``repl_settings`` run on both backends (``backend_name``); on Kubernetes the subset is
the interpreter's state across cells, bash calls, a restart and a killed server (``@outside_kubernetes_subset``
says where each other case runs on pods)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys

import pytest

from tests.integration.conftest import make_settings
from tests.support.backends import backend_settings, outside_kubernetes_subset, remove_backend_installation
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import mcp_client, remove_installation, server_env

pytestmark = pytest.mark.anyio

PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


async def code(client, source: str, **extra):
    result = await client.call_tool("code_execution", {"code": source, **extra})
    assert_hosted_shape(result.structured_content, "code_execution")
    return result


@pytest.fixture
def repl_settings(tmp_path, docker_engine, backend_name):
    s = backend_settings(backend_name, tmp_path, code_cell_timeout=3.0)
    yield s
    remove_backend_installation(s)


async def test_code_execution_is_published_by_default_beside_bash_and_the_editor_with_an_output_schema(settings):
    async with mcp_client("memory", settings) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert list(tools) == ["bash_code_execution", "text_editor_code_execution", "code_execution"]
        schema = tools["code_execution"].output_schema
        assert {v["properties"]["type"]["const"] for v in schema["anyOf"]} == {
            "code_execution_result", "code_execution_tool_result_error"
        }
        assert set(tools["code_execution"].input_schema["properties"]) == {"code", "restart", "container_id"}


async def test_the_tools_setting_selects_what_is_published_and_unpublished_tools_are_unknown(tmp_path, docker_engine):
    s = make_settings(tmp_path, tools=["bash_code_execution"])
    async with mcp_client("memory", s) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["bash_code_execution"]
        with pytest.raises(Exception, match="Unknown tool"):
            await client.call_tool("code_execution", {"code": "1"})


@outside_kubernetes_subset("state across cells on pods: test_backends.py and the cases below (over stdio)")
async def test_variables_imports_and_functions_persist_and_await_works(repl_settings, transport, http_base):
    url, token = http_base
    async with mcp_client(transport, repl_settings, base_url=url, token=token) as client:
        first = await code(client, "import math\nx = 41\ndef twice(v):\n    return 2 * v")
        assert first.structured_content == {"type": "code_execution_result", "stdout": "", "stderr": "",
                                            "return_code": 0, "content": []}
        second = await code(client, "x += 1\nprint(x, twice(x), round(math.pi, 2))")
        assert second.structured_content["stdout"] == "42 84 3.14\n"
        awaited = await code(
            client,
            "import asyncio\nawait asyncio.sleep(0.05)\n"
            "async def sq(i):\n    await asyncio.sleep(0.01)\n    return i * i\n"
            "print(await asyncio.gather(*(sq(i) for i in range(5))))",
        )
        assert awaited.structured_content["stdout"] == "[0, 1, 4, 9, 16]\n"
        assert (await code(client, "x")).structured_content["stdout"] == "42\n"  # a final expression is shown


@outside_kubernetes_subset("the interpreter's own, the same in a pod")
async def test_a_traceback_is_a_result_on_stderr_with_a_nonzero_return_code(repl_settings):
    async with mcp_client("stdio", repl_settings) as client:
        result = await code(client, "def f():\n    return 1 / 0\nf()")
        sc = result.structured_content
        assert result.is_error is False
        assert sc["return_code"] == 1 and sc["stdout"] == ""
        assert sc["stderr"].startswith("Traceback (most recent call last):\n")
        assert 'File "<cell-' in sc["stderr"] and sc["stderr"].endswith("ZeroDivisionError: division by zero\n")


@outside_kubernetes_subset("$OUTPUT_DIR on pods: test_backends.py, test_files_flow.py")
async def test_output_dir_files_come_back_as_file_ids_and_images_inline(repl_settings):
    async with mcp_client("stdio", repl_settings) as client:
        source = (
            "import base64, os\n"
            f"open(os.path.join(os.environ['OUTPUT_DIR'], 'dot.png'), 'wb').write(base64.b64decode('{PNG}'))\n"
            "open(os.path.join(os.environ['OUTPUT_DIR'], 'r.csv'), 'w').write('a,b\\n')\n"
            "print(os.getcwd())"
        )
        result = await code(client, source)
        sc = result.structured_content
        assert sc["stdout"] == "/workspace\n"
        assert [c["type"] for c in sc["content"]] == ["code_execution_output", "code_execution_output"]
        assert all(c["file_id"].startswith("file_") for c in sc["content"])
        kinds = [c.type for c in result.content]
        assert kinds == ["text", "image", "resource_link", "resource_link"]
        again = await code(client, "import os\nprint(os.listdir(os.environ['OUTPUT_DIR']))")
        assert again.structured_content["stdout"] == "[]\n"  # a fresh $OUTPUT_DIR per call


@outside_kubernetes_subset("the cell limit on pods: tests/adversarial/test_repl.py")
async def test_a_cell_past_the_limit_is_interrupted_with_detection_timeout_and_state_survives(repl_settings):
    async with mcp_client("stdio", repl_settings) as client:
        await code(client, "kept = 'yes'")
        slow = await code(client, "import time\nprint('started', flush=True)\ntime.sleep(30)")
        sc = slow.structured_content
        assert slow.is_error is False
        assert sc["return_code"] != 0 and sc["stdout"] == "started\n"
        assert "KeyboardInterrupt" in sc["stderr"] and "detection_timeout" in sc["stderr"]
        assert (await code(client, "print(kept)")).structured_content["stdout"] == "yes\n"


@outside_kubernetes_subset("the cell limit on pods: tests/adversarial/test_repl.py")
async def test_a_cell_that_ignores_keyboard_interrupt_is_killed_and_the_next_call_says_so(repl_settings):
    async with mcp_client("stdio", repl_settings) as client:
        await code(client, "kept = 1")
        stubborn = await code(client, "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)")
        assert stubborn.structured_content["return_code"] != 0
        assert "detection_timeout" in stubborn.structured_content["stderr"]
        after = await code(client, "print('kept' in globals())")
        assert after.structured_content["stdout"] == "False\n"
        first_line = after.structured_content["stderr"].splitlines()[0]
        assert first_line.startswith("[the Python interpreter was restarted: the cell ran past its 3 s limit")


async def test_bash_between_cells_leaves_the_interpreter_alive_and_they_share_files_not_state(repl_settings):
    async with mcp_client("stdio", repl_settings) as client:
        await code(client, "import os\nstate = os.getpid()\nopen('from_python.txt', 'w').write('hello')")
        bash = await client.call_tool("bash_code_execution", {"command": "cat from_python.txt; echo; sleep 1 & true"})
        assert bash.structured_content["stdout"] == "hello\n"
        after = await code(client, "import os\nprint(state == os.getpid(), open('from_python.txt').read())")
        assert after.structured_content == {"type": "code_execution_result", "stdout": "True hello\n", "stderr": "",
                                            "return_code": 0, "content": []}


async def test_restart_gives_a_fresh_interpreter_and_says_so(repl_settings):
    async with mcp_client("stdio", repl_settings) as client:
        await code(client, "x = 1")
        fresh = await code(client, "print('x' in globals())", restart=True)
        assert fresh.structured_content["stdout"] == "False\n"
        assert fresh.structured_content["stderr"].startswith("[the Python interpreter was restarted: restart was requested")


@outside_kubernetes_subset("the server's input validation, before any sandbox")
async def test_invalid_input_is_the_hosted_invalid_tool_input_block(repl_settings):
    async with mcp_client("memory", repl_settings) as client:
        bad = await client.call_tool("code_execution", {"code": 5})
        assert bad.is_error is True
        assert bad.structured_content == {"type": "code_execution_tool_result_error", "error_code": "invalid_tool_input"}


async def test_the_interpreter_survives_a_server_kill_and_reattach_by_container_id(repl_settings):
    env = server_env(repl_settings)
    first = await _run_client_process(env, "import os\nsurvivor = os.getpid()\nprint(survivor)", kill=True)
    cid, pid = first["container"], first["stdout"].strip()
    second = await _run_client_process(env, "print(survivor)", container_id=cid)
    assert second["stdout"].strip() == pid and second["stderr"] == ""


async def _run_client_process(env: dict[str, str], source: str, *, kill: bool = False, container_id: str | None = None) -> dict:
    """One stdio server process: run a cell; with ``kill`` the server is then killed with SIGKILL."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_codeexec", "serve"], env=env)
    arguments = {"code": source, **({"container_id": container_id} if container_id else {})}
    async with Client(params) as client:
        result = await client.call_tool("code_execution", arguments)
        out = {**result.structured_content, "container": result.meta["container"]["id"]}
        if kill:
            pids = subprocess.run(["pgrep", "-f", "mcp_codeexec serve"], capture_output=True, text=True).stdout.split()
            for pid in pids:  # only the server this test started: its environment names this test's data dir
                try:
                    with open(f"/proc/{pid}/environ", "rb") as fh:
                        if env["MCP_CODEEXEC_DATA_DIR"].encode() in fh.read():
                            os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
    return out


async def test_a_long_cell_reports_progress_with_the_output_so_far(tmp_path, docker_engine):
    s = make_settings(tmp_path, progress_interval=0.3)
    updates: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append(message or "")

    try:
        async with mcp_client("stdio", s) as client:
            result = await client.call_tool(
                "code_execution", {"code": "import time\nfor i in range(4):\n    print('tick', i, flush=True)\n    time.sleep(0.4)"},
                progress_callback=on_progress,
            )
            assert result.structured_content["stdout"] == "tick 0\ntick 1\ntick 2\ntick 3\n"
    finally:
        remove_installation(s)
    assert len(updates) >= 2 and updates[0].startswith("tick 0")
    assert all(later.startswith(earlier.rstrip()) for earlier, later in zip(updates, updates[1:]))


async def test_the_servers_backstop_answers_execution_time_exceeded_when_the_sandbox_stops_answering(
    tmp_path, docker_engine, monkeypatch
):
    import anyio
    import docker

    from mcp_codeexec import Sandbox
    from mcp_codeexec.backends import sandbox as docker_backend
    from mcp_codeexec.engines.docker import NAME_PREFIX
    from mcp_codeexec.schemas import CodeError

    monkeypatch.setattr(docker_backend, "REPL_BACKSTOP_MARGIN", 2.0)
    s = make_settings(tmp_path, code_cell_timeout=1.0)
    try:
        async with Sandbox(s) as sb:
            await sb.code("kept = 1")
            container = docker.from_env().containers.get(NAME_PREFIX + sb.container_id)

            async def freeze() -> None:
                await anyio.sleep(0.3)
                container.pause()  # the agent cannot answer, or interrupt the cell, any more

            async with anyio.create_task_group() as tg:
                tg.start_soon(freeze)
                result = await sb.code("import time\ntime.sleep(30)")
            assert result == CodeError(error_code="execution_time_exceeded")
            container.unpause()
            after = await sb.code("print(kept)")
            assert after.stdout == "1\n"
    finally:
        remove_installation(s)
