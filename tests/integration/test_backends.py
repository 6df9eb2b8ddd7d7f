"""The core behaviour on every sandbox backend, one test body each (``backend_name``: docker, kubernetes).

Real MCP clients talk to real ``mcp-codeexec serve`` processes (stdio); the Kubernetes case starts
them with ``--backend kubernetes --kubeconfig ...`` and its sandboxes are pods. Every result is
validated against the anthropic SDK classes. ``-m kubernetes`` runs only the Kubernetes cases.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from mcp_codeexec import Sandbox
from mcp_codeexec.config import Settings
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import server_env

pytestmark = pytest.mark.anyio

GiB = 1024**3


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Client]:
    """``mcp-codeexec serve`` over stdio; the backend named on its command line as a user would."""
    args = ["-m", "mcp_codeexec", "serve", "--backend", settings.backend]
    if settings.backend == "kubernetes":
        args += ["--kubeconfig", str(settings.kubeconfig), "--namespace", settings.k8s_namespace]
    params = StdioServerParameters(command=sys.executable, args=args, env=server_env(settings))
    async with Client(params) as client:
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(tool, arguments)
    assert_hosted_shape(result.structured_content, tool)
    return result


async def bash(client: Client, command: str, **extra: Any) -> Any:
    return await call(client, "bash_code_execution", command=command, **extra)


async def test_bash_the_editor_and_the_repl_answer_with_hosted_schemas(any_settings: Settings) -> None:
    async with serve(any_settings) as client:
        first = await bash(client, "echo hello; echo oops >&2; cd /tmp; export FOO=bar")
        sc = first.structured_content
        assert (sc["stdout"], sc["stderr"], sc["return_code"]) == ("hello\n", "oops\n", 0)
        cid = first.meta["container"]["id"]
        assert cid.startswith("container_") and first.meta["container"]["expires_at"].endswith("Z")
        second = await bash(client, "pwd; echo $FOO; id -u; exit 3")
        assert second.structured_content["stdout"] == "/tmp\nbar\n1000\n" and second.structured_content["return_code"] == 3
        assert second.meta["container"]["id"] == cid

        await call(client, "text_editor_code_execution", command="create", path="/workspace/n.txt", file_text="one\ntwo\n")
        view = await call(client, "text_editor_code_execution", command="view", path="/workspace/n.txt")
        assert view.structured_content["content"] == "one\ntwo\n"
        replaced = await call(client, "text_editor_code_execution", command="str_replace", path="/workspace/n.txt",
                              old_str="two", new_str="2")
        assert replaced.structured_content["lines"] == ["-two", "+2"]
        missing = await call(client, "text_editor_code_execution", command="view", path="/workspace/absent.txt")
        assert missing.structured_content["error_code"] == "file_not_found"

        cell = await call(client, "code_execution", code="state = 41\nprint(open('/workspace/n.txt').read().split())")
        assert cell.structured_content["stdout"] == "['one', '2']\n"
        again = await call(client, "code_execution", code="print(state + 1)")
        assert again.structured_content["stdout"] == "42\n" and again.meta["container"]["id"] == cid


async def test_a_sandbox_is_used_again_by_id_after_the_server_restarts(any_settings: Settings) -> None:
    async with serve(any_settings) as client:
        cid = (await bash(client, "echo kept > /workspace/kept.txt")).meta["container"]["id"]
    async with serve(any_settings) as client:
        again = await bash(client, "cat /workspace/kept.txt", container_id=cid)
        assert again.structured_content["stdout"] == "kept\n" and again.meta["container"]["id"] == cid


async def test_the_limits_and_hardening_are_read_inside_the_sandbox(any_settings: Settings) -> None:
    async with serve(any_settings) as client:
        out = (await bash(
            client,
            "if [ -f /sys/fs/cgroup/cpu.max ]; then cat /sys/fs/cgroup/memory.max; cut -d' ' -f1,2 /sys/fs/cgroup/cpu.max;"
            " else cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us"
            " /sys/fs/cgroup/cpu/cpu.cfs_period_us; fi",
        )).structured_content["stdout"].split()
        assert int(out[0]) == 5 * GiB and int(out[1]) == int(out[2])  # 5 GiB, one CPU
        status = (await bash(client, "grep -E '^(CapEff|NoNewPrivs):' /proc/self/status")).structured_content["stdout"]
        fields = dict(line.split(":\t") for line in status.strip().splitlines())
        assert int(fields["CapEff"], 16) == 0 and fields["NoNewPrivs"] == "1"
        probe = await bash(client, "touch /rootfs-probe 2>/dev/null; echo rc=$?; id -u; touch /workspace/w /tmp/t && echo ok")
        assert probe.structured_content["stdout"] == "rc=1\n1000\nok\n"


async def test_the_sandbox_has_no_network_but_loopback(any_settings: Settings) -> None:
    # Read only: nothing here connects anywhere.
    async with serve(any_settings) as client:
        dev = (await bash(client, "cat /proc/net/dev")).structured_content["stdout"].splitlines()[2:]
        assert [line.split(":")[0].strip() for line in dev] == ["lo"]
        route = (await bash(client, "cat /proc/net/route")).structured_content["stdout"].splitlines()
        assert route[1:] == []  # the header only: no route anywhere


async def test_output_dir_files_come_back_as_file_ids(any_settings: Settings) -> None:
    async with serve(any_settings) as client:
        result = await bash(client, "printf 'a,b\\n1,2\\n' > $OUTPUT_DIR/table.csv; echo kept > /workspace/elsewhere.txt")
        (block,) = result.structured_content["content"]
        assert block["file_id"].startswith("file_")
        link = next(c for c in result.content if c.type == "resource_link")
        assert (await client.read_resource(link.uri)).contents[0].text == "a,b\n1,2\n"
        after = await bash(client, "ls -A $OUTPUT_DIR | wc -l")
        assert after.structured_content["stdout"] == "0\n" and after.structured_content["content"] == []


async def test_an_upload_lands_in_the_inputs_folder(any_settings: Settings) -> None:
    async with Sandbox(any_settings) as sb:
        payload = bytes(range(256)) * 4096
        await sb.upload(payload, filename="blob.bin")
        result = await sb.bash("sha256sum /workspace/inputs/blob.bin | cut -c1-16; stat -c %s /workspace/inputs/blob.bin")
        import hashlib

        assert result.stdout == f"{hashlib.sha256(payload).hexdigest()[:16]}\n{len(payload)}\n"
