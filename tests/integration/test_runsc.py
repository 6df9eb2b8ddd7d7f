"""gVisor: with ``runtime = "runsc"`` a sandbox really runs under gVisor's user-space kernel, and
the core calls work there. These tests force runsc whatever MCP_CODEEXEC_RUNTIME says; the whole
integration and adversarial suites run a second time under runsc in CI (.ci/run).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import docker
import pytest

from mcp_codeexec.engines.docker import NAME_PREFIX
from tests.conftest import IN_CI
from tests.integration.conftest import make_settings
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import mcp_client, remove_installation, server_env

pytestmark = pytest.mark.anyio


@pytest.fixture
def runsc_settings(tmp_path, docker_engine):
    runtimes = docker.from_env().info().get("Runtimes") or {}
    if "runsc" not in runtimes:
        why = f"the Docker engine has no runsc runtime (it has: {', '.join(sorted(runtimes))})"
        if IN_CI:
            pytest.fail(f"CI installs gVisor: {why}")
        pytest.skip(why)
    settings = make_settings(tmp_path, runtime="runsc", call_timeout=5.0)
    yield settings
    remove_installation(settings)


async def call(client, tool: str, **arguments):
    result = await client.call_tool(tool, arguments)
    assert_hosted_shape(result.structured_content, tool)
    return result


async def test_a_runsc_sandbox_runs_under_gvisor(runsc_settings) -> None:
    async with mcp_client("memory", runsc_settings) as client:
        probe = await call(client, "bash_code_execution", command="dmesg | head -3; cat /proc/version; id -u")
        out = probe.structured_content["stdout"]
        assert "gVisor" in out, out  # "Starting gVisor..." is the Sentry's boot log
        assert out.rstrip().endswith("1000")
        cid = probe.meta["container"]["id"]
    container = docker.from_env().containers.get(NAME_PREFIX + cid)
    assert container.attrs["HostConfig"]["Runtime"] == "runsc"
    # On the host, the container's cgroup holds only gVisor's processes (sentry, gofer): the agent
    # and the user's commands are tasks inside the Sentry, not host processes.
    procs = Path(f"/sys/fs/cgroup/pids/docker/{container.id}/cgroup.procs")
    if procs.exists():
        cmdlines = []
        for pid in procs.read_text().split():
            try:
                cmdlines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
        # (ptrace-platform stubs show an empty command line: they never exec anything of the image)
        named = [c for c in cmdlines if c]
        assert any("runsc-sandbox" in c for c in named) and all("runsc" in c for c in named), named
        assert not any("agent.py" in c or "python" in c for c in cmdlines)


async def test_the_core_calls_work_under_runsc(runsc_settings) -> None:
    async with mcp_client("memory", runsc_settings) as client:
        first = await call(client, "bash_code_execution", command="mkdir -p /workspace/w && cd /workspace/w && export K=v && echo hi")
        assert first.structured_content["stdout"] == "hi\n"
        again = await call(client, "bash_code_execution", command="pwd; echo $K; python3 -c 'print(6*7)'")
        assert again.structured_content["stdout"] == "/workspace/w\nv\n42\n"
        made = await call(client, "text_editor_code_execution", command="create", path="notes.txt", file_text="a\nb\nc\n")
        assert made.structured_content["is_file_update"] is False
        edited = await call(client, "text_editor_code_execution", command="str_replace", path="notes.txt", old_str="b", new_str="B")
        assert edited.structured_content["lines"] == ["-b", "+B"]
        viewed = await call(client, "text_editor_code_execution", command="view", path="/workspace/notes.txt", view_range=[2, 3])
        assert viewed.structured_content["content"] == "B\nc\n"
        produced = await call(client, "bash_code_execution", command="printf 'x,y\\n1,2\\n' > $OUTPUT_DIR/t.csv")
        assert len(produced.structured_content["content"]) == 1
        late = await call(client, "bash_code_execution", command="sleep 100")
        assert late.structured_content["error_code"] == "execution_time_exceeded"
        after = await call(client, "bash_code_execution", command="cat /workspace/notes.txt; ps -eo comm= | grep -c sleep || true")
        assert after.structured_content["stdout"] == "a\nB\nc\n0\n"


async def test_the_stdio_server_passes_the_runtime_through(runsc_settings) -> None:
    """--runtime runsc / MCP_CODEEXEC_RUNTIME=runsc on the command line reach the container."""
    async with mcp_client("stdio", runsc_settings) as client:
        first = await call(client, "bash_code_execution", command="dmesg | grep -c gVisor")
        assert int(first.structured_content["stdout"]) >= 1
        cid = first.meta["container"]["id"]
    assert docker.from_env().containers.get(NAME_PREFIX + cid).attrs["HostConfig"]["Runtime"] == "runsc"


def test_doctor_reports_runsc(runsc_settings) -> None:
    env = server_env(runsc_settings)
    default = subprocess.run([sys.executable, "-m", "mcp_codeexec", "doctor"], check=False, capture_output=True, text=True, timeout=120,
                             env={k: v for k, v in env.items() if k != "MCP_CODEEXEC_RUNTIME"})
    assert "runsc (gVisor) available" in default.stdout, default.stdout
    chosen = subprocess.run([sys.executable, "-m", "mcp_codeexec", "doctor"], check=False, capture_output=True, text=True,
                            timeout=120, env=env)
    runtime_line = next(line for line in chosen.stdout.splitlines() if " runtime " in f" {line} ")
    assert runtime_line.startswith("OK") and "runsc" in runtime_line.split("(")[0], runtime_line
