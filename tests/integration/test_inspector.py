"""A real third-party client: the MCP Inspector CLI (`@modelcontextprotocol/inspector-cli` from npm,
TypeScript SDK) lists the tools and calls both, over stdio and over HTTP with a bearer token.

The package is installed into tests/.node/ (gitignored) on first use; where npm or the registry is
missing the tests skip, except under CI=true where they fail. `npx @modelcontextprotocol/inspector-cli
--cli ...` runs the same `mcp-inspector-cli` binary that these tests call through node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.npm import NODE_DIR, ensure_installed
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import http_server, new_token, server_env

PACKAGE = "@modelcontextprotocol/inspector-cli"
VERSION = "1"
PACKAGE_DIR = NODE_DIR / "node_modules" / "@modelcontextprotocol" / "inspector-cli"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def inspector() -> Path:
    """The installed `mcp-inspector-cli` entry point (installed now if missing)."""
    entry = PACKAGE_DIR / "build" / "cli.js"
    ensure_installed("the MCP Inspector CLI", f"{PACKAGE}@{VERSION}", entry.is_file)
    return entry


def run_inspector(inspector: Path, settings, *args: str) -> dict[str, Any]:
    """`mcp-inspector-cli --cli ARGS`; the parsed JSON it prints."""
    proc = subprocess.run(
        ["node", str(inspector), "--cli", *args],
        # The CLI looks for its package.json at "../package.json" relative to the working directory.
        cwd=inspector.parent, env=server_env(settings), capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, f"inspector failed ({proc.returncode}): {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    start = proc.stdout.index("{")
    return json.loads(proc.stdout[start:])


def stdio_server() -> list[str]:
    return [sys.executable, "-m", "mcp_codeexec", "serve"]


def test_the_inspector_lists_both_tools_with_their_schemas_over_stdio(inspector: Path, settings) -> None:
    listed = run_inspector(inspector, settings, *stdio_server(), "--method", "tools/list")
    tools = {tool["name"]: tool for tool in listed["tools"]}
    assert list(tools) == ["bash_code_execution", "text_editor_code_execution", "code_execution"]
    for tool in tools.values():
        assert tool["inputSchema"]["type"] == "object" and tool["outputSchema"]["type"] == "object"
    assert tools["bash_code_execution"]["inputSchema"]["required"] == ["command"]


def test_the_inspector_calls_bash_and_the_editor_and_gets_hosted_results(inspector: Path, settings) -> None:
    ran = run_inspector(
        inspector, settings, *stdio_server(), "--method", "tools/call", "--tool-name", "bash_code_execution",
        "--tool-arg", "command=echo made-by-inspector > note.txt; python3 -c 'print(6*7)'",
    )
    assert ran["isError"] is False
    assert_hosted_shape(ran["structuredContent"], "bash_code_execution")
    assert ran["structuredContent"]["stdout"] == "42\n"
    assert "42" in ran["content"][0]["text"]
    cid = ran["_meta"]["container"]["id"]
    assert ran["_meta"]["anthropic/maxResultSizeChars"] == settings.max_result_chars

    # A new Inspector process is a new MCP session: container_id brings it back to the same files.
    viewed = run_inspector(
        inspector, settings, *stdio_server(), "--method", "tools/call", "--tool-name", "text_editor_code_execution",
        "--tool-arg", "command=view", "path=note.txt", f"container_id={cid}",
    )
    assert_hosted_shape(viewed["structuredContent"], "text_editor_code_execution")
    assert viewed["structuredContent"]["content"] == "made-by-inspector\n"
    assert viewed["_meta"]["container"]["id"] == cid

    created = run_inspector(
        inspector, settings, *stdio_server(), "--method", "tools/call", "--tool-name", "text_editor_code_execution",
        "--tool-arg", "command=create", "path=dir/new.txt", "file_text=line one", f"container_id={cid}",
    )
    assert created["structuredContent"] == {"type": "text_editor_code_execution_create_result", "is_file_update": False}

    missing = run_inspector(
        inspector, settings, *stdio_server(), "--method", "tools/call", "--tool-name", "text_editor_code_execution",
        "--tool-arg", "command=view", "path=nowhere.txt",
    )
    assert missing["isError"] is True
    assert_hosted_shape(missing["structuredContent"], "text_editor_code_execution")
    assert missing["structuredContent"]["error_code"] == "file_not_found"


def test_the_inspector_runs_repl_cells_that_keep_state_across_sessions_by_container_id(inspector: Path, settings) -> None:
    """The TypeScript SDK client validates structuredContent against the declared outputSchema."""
    first = run_inspector(
        inspector, settings, *stdio_server(), "--method", "tools/call", "--tool-name", "code_execution",
        "--tool-arg", "code=import math\nkept = math.factorial(5)\nprint(kept)",
    )
    assert first["isError"] is False
    assert_hosted_shape(first["structuredContent"], "code_execution")
    assert first["structuredContent"]["stdout"] == "120\n"
    cid = first["_meta"]["container"]["id"]
    again = run_inspector(
        inspector, settings, *stdio_server(), "--method", "tools/call", "--tool-name", "code_execution",
        "--tool-arg", "code=kept + 1", f"container_id={cid}",
    )
    assert again["structuredContent"] == {"type": "code_execution_result", "stdout": "121\n", "stderr": "",
                                          "return_code": 0, "content": []}


def test_the_inspector_runs_the_claude_desktop_config_as_written(inspector: Path, settings, tmp_path: Path) -> None:
    config = json.loads((EXAMPLES / "claude_desktop_config.json").read_text())
    entry = config["mcpServers"]["codeexec"]
    assert entry["command"] == "mcp-codeexec"
    entry["command"], entry["args"] = sys.executable, ["-m", "mcp_codeexec", *entry["args"]]  # the installed script
    path = tmp_path / "claude_desktop_config.json"
    path.write_text(json.dumps(config))
    ran = run_inspector(inspector, settings, "--config", str(path), "--server", "codeexec", "--method", "tools/call",
                        "--tool-name", "bash_code_execution", "--tool-arg", "command=uname -m")
    assert_hosted_shape(ran["structuredContent"], "bash_code_execution")
    assert ran["structuredContent"]["stdout"].strip() in ("x86_64", "aarch64")


def test_the_inspector_reaches_the_http_transport_with_a_bearer_token(inspector: Path, settings) -> None:
    token = new_token()
    with http_server(settings, token=token) as url:
        listed = run_inspector(inspector, settings, url + "/mcp", "--transport", "http",
                               "--header", f"Authorization: Bearer {token}", "--method", "tools/list")
        assert [t["name"] for t in listed["tools"]] == ["bash_code_execution", "text_editor_code_execution", "code_execution"]
        ran = run_inspector(inspector, settings, url + "/mcp", "--transport", "http",
                            "--header", f"Authorization: Bearer {token}", "--method", "tools/call",
                            "--tool-name", "bash_code_execution", "--tool-arg", "command=echo over-http")
        assert_hosted_shape(ran["structuredContent"], "bash_code_execution")
        assert ran["structuredContent"]["stdout"] == "over-http\n"
        refused = subprocess.run(
            ["node", str(inspector), "--cli", url + "/mcp", "--transport", "http", "--method", "tools/list"],
            cwd=inspector.parent, env={**os.environ}, capture_output=True, text=True, timeout=120,
        )
        assert refused.returncode != 0


def test_the_inspector_runs_a_repl_cell_that_calls_a_third_party_upstream(inspector: Path, tmp_path: Path, docker_engine) -> None:
    """Programmatic tool calling through a TypeScript client: our server has npm's server-everything
    as an upstream; the cell calls two of its tools concurrently and only its print comes back."""
    from tests.integration.conftest import make_settings
    from tests.support.servers import remove_installation
    from tests.unit.test_tools_registry import EVERYTHING, EVERYTHING_ENTRY, EVERYTHING_VERSION

    ensure_installed("the MCP server-everything", f"{EVERYTHING}@{EVERYTHING_VERSION}", EVERYTHING_ENTRY.is_file)
    config = tmp_path / "tools.json"
    config.write_text(json.dumps({"mcpServers": {"everything": {
        "command": "node", "args": [str(EVERYTHING_ENTRY), "stdio"], "allowed_tools": ["echo", "get-sum"]}}}))
    settings = make_settings(tmp_path, tools_config=str(config))
    try:
        listed = run_inspector(inspector, settings, *stdio_server(), "--method", "tools/list")
        code_tool = {t["name"]: t for t in listed["tools"]}["code_execution"]
        assert "everything__echo" in code_tool["description"] and "everything__get_sum" in code_tool["description"]
        ran = run_inspector(
            inspector, settings, *stdio_server(), "--method", "tools/call", "--tool-name", "code_execution",
            "--tool-arg", "code=import asyncio\n"
            "echo, total = await asyncio.gather(everything__echo({'message': 'hi'}), everything__get_sum({'a': 2, 'b': 3}))\n"
            "print(echo)\nprint(total)",
        )
        assert ran["isError"] is False
        assert_hosted_shape(ran["structuredContent"], "code_execution")
        out = ran["structuredContent"]
        assert out["return_code"] == 0, out["stderr"]
        assert out["stdout"] == "Echo: hi\nThe sum of 2 and 3 is 5.\n"
    finally:
        remove_installation(settings)
