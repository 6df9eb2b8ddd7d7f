"""The real Claude Code CLI (`@anthropic-ai/claude-code` from npm) as the client.

`examples/claude_code.sh` registers the server with the real `claude` binary; `claude mcp get`
then starts it and reports it connected; and a headless `claude -p` session, whose model is a
scripted streaming Messages API on 127.0.0.1, calls both tools through Claude Code's own MCP
client and sends the results back to the model. Nothing here reaches the internet: Claude Code's
non-essential traffic is switched off and its API base URL is the fake.

The package is installed into tests/.node/ (gitignored) on first use, like the Inspector CLI;
where npm or the registry is missing the tests skip, except under CI=true where they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.streaming_messages import ScriptedMessages, ToolUse, streaming_messages
from tests.support.npm import NODE_DIR, ensure_installed
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import server_env

PACKAGE = "@anthropic-ai/claude-code"
VERSION = "2.1.330"  # pinned: the headless flags and tool-search switch are what this version takes
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BASH = "mcp__codeexec__bash_code_execution"
EDITOR = "mcp__codeexec__text_editor_code_execution"


@pytest.fixture(scope="module")
def claude_bin() -> Path:
    """The directory holding the real `claude` executable (installed now if missing)."""
    bin_dir = NODE_DIR / "node_modules" / ".bin"
    ensure_installed("the Claude Code CLI", f"{PACKAGE}@{VERSION}", lambda: _runs(bin_dir / "claude"))
    return bin_dir


def _runs(claude: Path) -> bool:
    if not claude.exists():
        return False
    proc = subprocess.run([str(claude), "--version"], capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode == 0 and proc.stdout.startswith(f"{VERSION} (Claude Code)")


@pytest.fixture
def claude_env(settings, claude_bin: Path, tmp_path: Path) -> dict[str, str]:
    """An environment for `claude`: a private HOME, the real CLI and `mcp-codeexec` on PATH, the
    test's server settings (Claude Code passes its environment on to stdio servers)."""
    home = tmp_path / "home"
    home.mkdir()
    path = os.pathsep.join([str(claude_bin), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return server_env(
        settings, HOME=str(home), PATH=path, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1",
        DISABLE_TELEMETRY="1", DISABLE_ERROR_REPORTING="1",
        # Headless Claude Code starts its first turn after ~2 s whether or not the MCP servers have
        # connected (non-blocking connect); a server slower than that on a loaded machine is simply
        # absent from the turn. Wait for it, so the tests judge the server, not the race.
        MCP_CONNECTION_NONBLOCKING="0",
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    directory = tmp_path / "project"
    directory.mkdir()
    return directory


def claude(env: dict[str, str], cwd: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["claude", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"claude {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def register_with_the_example(env: dict[str, str], project: Path) -> None:
    subprocess.run(["bash", str(EXAMPLES / "claude_code.sh")], env=env, cwd=project, check=True, timeout=60,
                   capture_output=True, text=True)


def test_the_example_registers_a_server_claude_code_connects_to(claude_env, project: Path) -> None:
    register_with_the_example(claude_env, project)
    shown = claude(claude_env, project, "mcp", "get", "codeexec").stdout
    assert "Connected" in shown and "Command: mcp-codeexec" in shown and "Args: serve" in shown, shown
    listed = claude(claude_env, project, "mcp", "list").stdout
    assert "codeexec: mcp-codeexec serve" in listed and "Connected" in listed, listed


def result_payload(block: dict[str, Any]) -> dict[str, Any]:
    """The hosted result inside a tool_result as Claude Code forwards it: the one text part that is
    our result's JSON (output files come as "[Resource link: NAME] codeexec://files/ID" parts)."""
    content = block["content"]
    texts = [content] if isinstance(content, str) else [part["text"] for part in content if part["type"] == "text"]
    [payload] = [text for text in texts if text.startswith("{")]
    return json.loads(payload)


def test_a_headless_claude_code_session_runs_both_tools(claude_env, project: Path) -> None:
    register_with_the_example(claude_env, project)
    script = ScriptedMessages(
        marker_tool=BASH,
        turns=[
            ToolUse(BASH, {"command": "cd /workspace && export ANSWER=$((6*7)) && echo $ANSWER | tee $OUTPUT_DIR/answer.txt"}),
            ToolUse(BASH, {"command": "echo $PWD $ANSWER; ls /workspace"}),
            ToolUse(EDITOR, {"command": "create", "path": "/workspace/notes.md", "file_text": "one\ntwo\n"}),
            ToolUse(EDITOR, {"command": "str_replace", "path": "/workspace/notes.md", "old_str": "two", "new_str": "2"}),
            ToolUse(EDITOR, {"command": "view", "path": "/workspace/notes.md"}),
            ToolUse(EDITOR, {"command": "view", "path": "/workspace/missing.txt"}),
            "Done: 6*7 is 42.",
        ],
    )
    with streaming_messages(script) as base_url:
        env = {**claude_env, "ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": "sk-ant-test", "ENABLE_TOOL_SEARCH": "false"}
        proc = claude(env, project, "-p", "Work out 6*7 in the sandbox and keep notes.", "--output-format", "json",
                      "--allowedTools", f"{BASH} {EDITOR}")
    final = json.loads(proc.stdout)
    assert final["is_error"] is False and final["result"] == "Done: 6*7 is 42.", final

    results = script.tool_results()
    assert [block["tool_use_id"] for block in results] == [f"toolu_{n:02d}" for n in range(1, 7)]
    payloads = [result_payload(block) for block in results[:5]]
    for payload, tool in zip(payloads, ["bash_code_execution"] * 2 + ["text_editor_code_execution"] * 3, strict=True):
        assert_hosted_shape(payload, tool)
    first, second, created, replaced, viewed = payloads
    assert first["stdout"] == "42\n" and first["return_code"] == 0
    [output] = first["content"]
    assert output["type"] == "bash_code_execution_output"
    assert any(f"codeexec://files/{output['file_id']}" in part.get("text", "") for part in results[0]["content"])
    assert second["stdout"].startswith("/workspace 42\n"), second  # cwd and exports carried over
    assert created == {"type": "text_editor_code_execution_create_result", "is_file_update": False}
    assert replaced["type"] == "text_editor_code_execution_str_replace_result" and replaced["lines"] == ["-two", "+2"], replaced
    assert viewed["type"] == "text_editor_code_execution_view_result" and viewed["content"] == "one\n2\n", viewed
    # An error reaches the model flagged as one, with its hosted error code in the text.
    missing = results[5]
    assert missing.get("is_error") is True and "file_not_found" in json.dumps(missing["content"]), missing


def test_claude_code_shows_the_model_a_flood_whole_with_its_marker_and_an_image_view_as_an_image(claude_env, project: Path) -> None:
    # Without the budget on the tool definitions Claude Code swaps a result over 50,000 characters
    # for a 2 KB preview ("Output too large"), and the model never sees the marker or the spill path.
    register_with_the_example(claude_env, project)
    flood = "python3 -c \"import sys; sys.stdout.write('o' * 3_000_000)\""
    png = ("python3 -c \"import zlib,struct;c=lambda t,d:struct.pack('>I',len(d))+t+d+struct.pack('>I',zlib.crc32(t+d));"
           "open('/workspace/dot.png','wb').write(b'\\x89PNG\\r\\n\\x1a\\n'+c(b'IHDR',struct.pack('>IIBBBBB',1,1,8,2,0,0,0))"
           "+c(b'IDAT',zlib.compress(b'\\x00\\xff\\x00\\x00'))+c(b'IEND',b''))\"")
    script = ScriptedMessages(
        marker_tool=BASH,
        turns=[ToolUse(BASH, {"command": flood}), ToolUse(BASH, {"command": png}),
               ToolUse(EDITOR, {"command": "view", "path": "/workspace/dot.png"}), "Done."],
    )
    with streaming_messages(script) as base_url:
        env = {**claude_env, "ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": "sk-ant-test", "ENABLE_TOOL_SEARCH": "false"}
        claude(env, project, "-p", "Flood, then look at an image.", "--output-format", "json", "--allowedTools", f"{BASH} {EDITOR}")
    flooded, _, viewed = script.tool_results()
    text = json.dumps(flooded["content"])
    assert "Output too large" not in text and "persisted-output" not in text, text[:1000]
    assert '{\\"type\\": \\"bash_code_execution_result' in text or '"{\\"type\\"' in text or "bash_code_execution_result" in text, text[:1000]
    payload = result_payload(flooded)
    assert payload["stdout"].startswith("o" * 1000) and payload["stdout"].endswith("o" * 1000)
    assert "bytes omitted; full output saved to /workspace/.codeexec/spill/" in payload["stdout"]
    assert isinstance(viewed["content"], list) and viewed["content"][0]["type"] == "image", viewed
