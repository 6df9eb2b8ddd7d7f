"""Every example in examples/ works as written, against real sandboxes.

Client configs are parsed and the server command they name is launched exactly as the client
would (with `mcp-codeexec` replaced by this interpreter's `-m mcp_codeexec`); the scripts run as
subprocesses; agent_loop.py talks to a fake Messages API on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.support.oracle import assert_hosted_shape
from tests.support.servers import free_port, http_server, new_token, server_env

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TOOLS = ["bash_code_execution", "text_editor_code_execution", "code_execution"]


def launchable(command: str, args: list[str]) -> tuple[str, list[str]]:
    """The installed `mcp-codeexec` script is this interpreter's `-m mcp_codeexec` (same code)."""
    if command == "mcp-codeexec":
        return sys.executable, ["-m", "mcp_codeexec", *args]
    return command, args


def servers_of(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return config.get("mcpServers") or config["servers"]


async def list_tools_over_stdio(settings, command: str, args: list[str], env: dict[str, str] | None = None,
                                call: bool = False) -> list[str]:
    command, args = launchable(command, args)
    params = StdioServerParameters(command=command, args=args, env={**server_env(settings), **(env or {})})
    async with Client(params) as client:
        names = [tool.name for tool in (await client.list_tools()).tools]
        if call:
            result = await client.call_tool("bash_code_execution", {"command": "echo from-the-example-config"})
            assert_hosted_shape(result.structured_content, "bash_code_execution")
            assert result.structured_content["stdout"] == "from-the-example-config\n"
    return names


@pytest.mark.parametrize("name", ["claude_desktop_config.json", "cursor_mcp.json", "vscode_mcp.json"])
async def test_each_client_config_launches_a_stdio_server_with_both_tools(settings, name: str) -> None:
    config = json.loads((EXAMPLES / name).read_text())
    entries = servers_of(config)
    assert list(entries) == ["codeexec"]
    entry = entries["codeexec"]
    assert entry.get("type", "stdio") == "stdio"
    names = await list_tools_over_stdio(settings, entry["command"], entry.get("args", []), entry.get("env"),
                                        call=name == "claude_desktop_config.json")
    assert names == TOOLS


async def test_the_claude_code_script_registers_a_command_that_serves_both_tools(settings, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "claude-argv.json"
    stub = bin_dir / "claude"  # stands in for Claude Code's CLI: records how it was called
    stub.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", str(EXAMPLES / "claude_code.sh")], env=env, check=True, timeout=30)
    argv = json.loads(record.read_text())
    assert argv[:3] == ["mcp", "add", "codeexec"] and "--" in argv
    command, *args = argv[argv.index("--") + 1:]
    assert await list_tools_over_stdio(settings, command, args) == TOOLS


def run_example(script: str, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], env=env, capture_output=True, text=True,
                          timeout=180, cwd=EXAMPLES.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_http_client_example_reaches_the_server_with_a_bearer_token(settings) -> None:
    token = new_token()
    with http_server(settings, token=token) as url:
        out = run_example("http_client.py", server_env(settings, MCP_CODEEXEC_URL=url + "/mcp", MCP_CODEEXEC_TOKEN=token))
        lines = out.splitlines()
        assert lines[0] == "tools: bash_code_execution, text_editor_code_execution, code_execution"
        bash = json.loads(lines[1].removeprefix("bash: "))
        assert_hosted_shape(bash, "bash_code_execution")
        assert bash["stdout"] == "5050\n"
        assert lines[2].startswith("container: container_")
        assert lines[3] == "editor + bash: hello from HTTP"
        refused = subprocess.run([sys.executable, str(EXAMPLES / "http_client.py")], capture_output=True, text=True, timeout=60,
                                 env=server_env(settings, MCP_CODEEXEC_URL=url + "/mcp", MCP_CODEEXEC_TOKEN="wrong-token-0123456789"))
        assert refused.returncode == 1 and "refused the token (HTTP 401)" in refused.stderr


def test_the_http_client_example_without_a_server_says_so_in_one_line(tmp_path) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"  # nothing listens there
    env = {**os.environ, "MCP_CODEEXEC_URL": url, "MCP_CODEEXEC_TOKEN": "some-token-0123456789"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / "http_client.py")], capture_output=True, text=True, timeout=60, env=env, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"cannot reach {url}") and "mcp-codeexec serve --transport http" in proc.stderr


def test_the_python_api_example_runs_a_sandbox_end_to_end(settings) -> None:
    out = run_example("python_api.py", server_env(settings))
    assert "stdout: 3 cities, hottest: Cairo" in out
    assert "output file: file_" in out and out.split("output file: ")[1].split()[1] == "Cairo"
    assert "view: print(f\"{len(rows)} cities, warmest: {hottest['city']}\")" in out
    assert "'error_code': 'file_not_found'" in out


def test_the_repl_example_keeps_state_across_cells_and_calls_a_host_tool(settings) -> None:
    out = run_example("repl_session.py", server_env(settings))
    lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    assert lines["hottest"] == "'Cairo'"  # the repr of the final expression
    assert lines["gathered"] == "[16, 361, 729]"
    assert lines["traceback"] == "1 KeyError: 'missing'"
    assert lines["output file"].startswith("file_") and lines["output file"].endswith(" city,temp")
    assert lines["bash"] == "['temps.json', 'no', 'df', 'in', 'bash']"
    assert lines["still there"] == "3" and lines["tool"] == "Lima"
    assert lines["after restart"] == (
        "False | [the Python interpreter was restarted: restart was requested; variables, imports and "
        "definitions from earlier cells are gone]"
    )


# --------------------------------------------------------------------------- a fake Messages API


class FakeMessages:
    """Answers POST /v1/messages from a script of assistant turns; records every request body."""

    def __init__(self, turns: list[list[dict[str, Any]]]) -> None:
        self.turns = turns
        self.requests: list[dict[str, Any]] = []

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(body)
        content = self.turns[len(self.requests) - 1]
        tool_use = any(block["type"] == "tool_use" for block in content)
        return {
            "id": f"msg_{len(self.requests)}", "type": "message", "role": "assistant", "model": body["model"],
            "content": content, "stop_reason": "tool_use" if tool_use else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 10},
        }


@pytest.fixture
def fake_messages() -> Iterator[tuple[FakeMessages, str]]:
    fake = FakeMessages([
        [{"type": "text", "text": "I'll compute it."},
         {"type": "tool_use", "id": "toolu_01", "name": "bash_code_execution",
          "input": {"command": "python3 -c 'print(sum(range(10)))'; echo 'x = 1' > notes.py"}}],
        [{"type": "tool_use", "id": "toolu_02", "name": "text_editor_code_execution",
          "input": {"command": "str_replace", "path": "notes.py", "old_str": "x = 1", "new_str": "x = 2"}},
         {"type": "tool_use", "id": "toolu_03", "name": "text_editor_code_execution",
          "input": {"command": "view", "path": "/workspace/notes.py"}}],
        [{"type": "tool_use", "id": "toolu_04", "name": "text_editor_code_execution",
          "input": {"command": "view", "path": "missing.txt"}}],
        [{"type": "text", "text": "The sum is 45."}],
    ])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            assert self.path.startswith("/v1/messages"), self.path
            data = json.dumps(fake.reply(body)).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()
    server.server_close()


def test_the_agent_loop_runs_the_hosted_conversation_shape_against_a_local_sandbox(settings, fake_messages) -> None:
    fake, base_url = fake_messages
    env = server_env(settings, ANTHROPIC_BASE_URL=base_url, ANTHROPIC_API_KEY="test-key", ANTHROPIC_MODEL="claude-test")
    out = run_example("agent_loop.py", env, "What", "is", "sum(range(10))?")
    assert out.splitlines()[-1] == "The sum is 45."
    assert len(fake.requests) == 4

    first = fake.requests[0]
    assert first["model"] == "claude-test" and [t["name"] for t in first["tools"]] == TOOLS
    assert first["messages"] == [{"role": "user", "content": "What is sum(range(10))?"}]

    def results_of(request: dict[str, Any]) -> list[dict[str, Any]]:
        assert request["messages"][-2]["role"] == "assistant"
        last = request["messages"][-1]
        assert last["role"] == "user"
        return last["content"]

    [bash] = results_of(fake.requests[1])
    assert bash["type"] == "tool_result" and bash["tool_use_id"] == "toolu_01" and bash["is_error"] is False
    block = json.loads(bash["content"][0]["text"])
    assert_hosted_shape(block, "bash_code_execution")
    assert block["stdout"] == "45\n" and block["return_code"] == 0
    assert fake.requests[1]["messages"][1]["content"][1]["type"] == "tool_use"  # the assistant turn went back as sent

    replaced, viewed = results_of(fake.requests[2])
    assert [replaced["tool_use_id"], viewed["tool_use_id"]] == ["toolu_02", "toolu_03"]
    assert json.loads(replaced["content"][0]["text"])["lines"] == ["-x = 1", "+x = 2"]
    assert json.loads(viewed["content"][0]["text"])["content"] == "x = 2\n"

    [missing] = results_of(fake.requests[3])
    error = json.loads(missing["content"][0]["text"])
    assert_hosted_shape(error, "text_editor_code_execution")
    assert missing["is_error"] is True and error["error_code"] == "file_not_found"


def test_the_example_commands_are_the_ones_the_readme_documents() -> None:
    script = (EXAMPLES / "claude_code.sh").read_text()
    commands = [shlex.split(line) for line in script.splitlines() if line.startswith("claude ")]
    assert commands == [["claude", "mcp", "add", "codeexec", "--", "mcp-codeexec", "serve"]]
