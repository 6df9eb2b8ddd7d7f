"""The two tools end to end: real MCP client sessions (in-memory, stdio, HTTP) against real sandboxes.

Every structuredContent is validated against the anthropic SDK classes.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.support.oracle import assert_hosted_shape
from tests.support.servers import mcp_client

pytestmark = pytest.mark.anyio

GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "golden" / "hosted_examples.json").read_text())


async def bash(client, command: str, **extra):
    result = await client.call_tool("bash_code_execution", {"command": command, **extra})
    assert_hosted_shape(result.structured_content, "bash_code_execution")
    return result


async def edit(client, **arguments):
    result = await client.call_tool("text_editor_code_execution", arguments)
    assert_hosted_shape(result.structured_content, "text_editor_code_execution")
    return result


async def test_bash_runs_in_a_container_and_keeps_cwd_and_exports_between_calls(transport, settings, http_base):
    url, token = http_base
    async with mcp_client(transport, settings, base_url=url, token=token) as client:
        first = await bash(client, "echo hello; echo oops >&2; mkdir -p /workspace/sub; cd /workspace/sub; export FOO=bar")
        sc = first.structured_content
        assert sc["stdout"] == "hello\n" and sc["stderr"] == "oops\n" and sc["return_code"] == 0
        assert sc["content"] == []
        cid = first.meta["container"]["id"]
        assert cid.startswith("container_") and first.meta["container"]["expires_at"].endswith("Z")

        second = await bash(client, "pwd; echo $FOO; whoami")
        assert second.structured_content["stdout"] == "/workspace/sub\nbar\nsandbox\n"
        assert second.meta["container"]["id"] == cid

        fresh = await bash(client, "pwd; echo \"[$FOO]\"", restart=True)
        assert fresh.structured_content["stdout"] == "/workspace\n[]\n"


async def test_a_non_zero_exit_is_a_result_not_an_error(transport, settings, http_base):
    url, token = http_base
    async with mcp_client(transport, settings, base_url=url, token=token) as client:
        result = await bash(client, "python3 -c 'undefined_variable'")
    expected = next(c for c in GOLDEN["cases"] if c["name"] == "bash: non-zero exit is a result")["expected_shape"]
    sc = result.structured_content
    assert {k: sc[k] for k in expected} == expected
    assert "NameError" in sc["stderr"]
    assert result.is_error is False


async def test_every_golden_editor_example_gives_exactly_the_hosted_result(transport, settings, http_base):
    url, token = http_base
    async with mcp_client(transport, settings, base_url=url, token=token) as client:
        for case in GOLDEN["cases"]:
            if case["tool"] != "text_editor_code_execution":
                continue
            await bash(client, "rm -rf /workspace/* && mkdir -p /workspace", restart=True)
            for name, text in case["files_before"].items():
                created = await edit(client, command="create", path=name, file_text=text)
                assert created.structured_content["is_file_update"] is False
            result = await edit(client, **case["input"])
            if "expected" in case:
                assert result.structured_content == case["expected"], case["name"]
            else:
                sc = result.structured_content
                assert {k: sc[k] for k in case["expected_shape"]} == case["expected_shape"], case["name"]
                assert sc["error_message"]
            for name, text in case.get("files_after", {}).items():
                shown = await edit(client, command="view", path=name)
                assert shown.structured_content["content"] == text


async def test_editor_errors_and_details(transport, settings, http_base):
    url, token = http_base
    async with mcp_client(transport, settings, base_url=url, token=token) as client:
        await edit(client, command="create", path="deep/er/notes.txt", file_text="a\nb\na\nc\n")
        again = await edit(client, command="create", path="/workspace/deep/er/notes.txt", file_text="one\ntwo\nthree\nfour\n")
        assert again.structured_content["is_file_update"] is True

        ranged = await edit(client, command="view", path="deep/er/notes.txt", view_range=[2, 3])
        assert ranged.structured_content == {
            "type": "text_editor_code_execution_view_result", "file_type": "text", "content": "two\nthree\n",
            "num_lines": 2, "start_line": 2, "total_lines": 4,
        }
        to_end = await edit(client, command="view", path="deep/er/notes.txt", view_range=[3, -1])
        assert to_end.structured_content["content"] == "three\nfour\n"

        await edit(client, command="create", path="dup.txt", file_text="x\nx\n")
        twice = await edit(client, command="str_replace", path="dup.txt", old_str="x", new_str="y")
        assert twice.is_error and twice.structured_content["error_code"] == "invalid_tool_input"
        assert "2" in twice.structured_content["error_message"]
        missing = await edit(client, command="str_replace", path="dup.txt", old_str="zzz", new_str="y")
        assert missing.structured_content["error_code"] == "invalid_tool_input"
        assert "not found" in missing.structured_content["error_message"]
        unchanged = await edit(client, command="view", path="dup.txt")
        assert unchanged.structured_content["content"] == "x\nx\n"

        gone = await edit(client, command="view", path="does/not/exist.txt")
        assert gone.is_error and gone.structured_content["error_code"] == "file_not_found"
        gone_replace = await edit(client, command="str_replace", path="nope.txt", old_str="a", new_str="b")
        assert gone_replace.structured_content["error_code"] == "file_not_found"

        listing = await edit(client, command="view", path="/workspace")
        assert listing.structured_content["file_type"] == "text" and "deep" in listing.structured_content["content"]

        multi = await edit(client, command="str_replace", path="deep/er/notes.txt", old_str="two\nthree", new_str="2\n2.5\n3")
        assert multi.structured_content == {
            "type": "text_editor_code_execution_str_replace_result", "old_start": 2, "old_lines": 2, "new_start": 2,
            "new_lines": 3, "lines": ["-two", "-three", "+2", "+2.5", "+3"],
        }
        shown_by_bash = await bash(client, "cat deep/er/notes.txt")
        assert shown_by_bash.structured_content["stdout"] == "one\n2\n2.5\n3\nfour\n"


async def test_output_dir_files_come_back_as_ids_images_and_readable_resources(transport, settings, http_base):
    url, token = http_base
    png = base64.b64encode(_tiny_png()).decode()
    async with mcp_client(transport, settings, base_url=url, token=token) as client:
        result = await bash(
            client,
            f"echo -n {png} | base64 -d > $OUTPUT_DIR/dot.png; printf 'a,b\\n1,2\\n' > $OUTPUT_DIR/table.csv; "
            "mkdir $OUTPUT_DIR/nested && echo no > $OUTPUT_DIR/nested/skip.txt; echo kept > /workspace/elsewhere.txt",
        )
        sc = result.structured_content
        assert len(sc["content"]) == 2 and all(b["file_id"].startswith("file_") for b in sc["content"])
        kinds = [c.type for c in result.content]
        assert kinds.count("image") == 1 and kinds.count("resource_link") == 2
        links = {c.name: c for c in result.content if c.type == "resource_link"}
        csv = await client.read_resource(links["table.csv"].uri)
        assert csv.contents[0].text == "a,b\n1,2\n"
        image = await client.read_resource(links["dot.png"].uri)
        assert base64.b64decode(image.contents[0].blob) == _tiny_png()

        next_call = await bash(client, "ls -A $OUTPUT_DIR | wc -l; cat /workspace/elsewhere.txt")
        assert next_call.structured_content["stdout"] == "0\nkept\n"
        assert next_call.structured_content["content"] == []


async def test_a_call_past_the_time_limit_is_stopped_and_the_container_stays_usable(tmp_path, docker_engine):
    from tests.integration.conftest import make_settings
    from tests.support.servers import remove_installation

    settings = make_settings(tmp_path, call_timeout=3.0)
    try:
        async with mcp_client("memory", settings) as client:
            await bash(client, "echo keep > /workspace/k.txt")
            slow = await bash(client, "(trap '' TERM; sleep 1000) & setsid sleep 1000 & trap '' TERM; sleep 100000")
            assert slow.is_error is True
            assert slow.structured_content == {"type": "bash_code_execution_tool_result_error", "error_code": "execution_time_exceeded"}
            after = await bash(client, "cat k.txt; ps -eo user=,comm= | grep -c sleep || true")
            assert after.structured_content["stdout"] == "keep\n0\n"
    finally:
        remove_installation(settings)


async def test_a_restarted_server_reattaches_to_the_container_by_id(settings):
    async with mcp_client("stdio", settings) as client:
        first = await bash(client, "echo persisted > /workspace/p.txt")
        cid = first.meta["container"]["id"]
    async with mcp_client("stdio", settings) as client:
        again = await bash(client, "cat /workspace/p.txt", container_id=cid)
        assert again.structured_content["stdout"] == "persisted\n"
        assert again.meta["container"]["id"] == cid
        viewed = await edit(client, command="view", path="p.txt", container_id=cid)
        assert viewed.structured_content["content"] == "persisted\n"
        unknown = await bash(client, "true", container_id="container_" + "f" * 24)
        assert unknown.structured_content == {"type": "bash_code_execution_tool_result_error", "error_code": "unavailable"}
        assert "container_expired" in unknown.content[0].text


async def test_the_sandbox_has_the_hosted_limits_and_no_network(settings):
    async with mcp_client("memory", settings) as client:
        probe = await bash(
            client,
            "id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; "
            "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; "
            "ls /sys/class/net; "
            # No route anywhere (judged from the table; nothing is sent off the machine):
            "[ \"$(tail -n +2 /proc/net/route | grep -c .)\" = 0 ] && echo blocked || echo has-routes; "
            "touch /etc/x 2>/dev/null && echo wrote-etc || echo etc-readonly",
        )
        lines = probe.structured_content["stdout"].split()
        assert lines[0] == "1000"
        assert "0000000000000000" in probe.structured_content["stdout"]  # CapEff
        if settings.runtime == "runsc":
            # gVisor has no cgroupfs and no /sys/class/net inside: check the limits where gVisor
            # applies them (the sandbox's host cgroup, from the container's config) and the
            # interfaces through the socket API.
            import docker

            from mcp_codeexec.engines.docker import NAME_PREFIX

            host = docker.from_env().containers.get(NAME_PREFIX + probe.meta["container"]["id"]).attrs["HostConfig"]
            assert host["Memory"] == 5 * 1024**3 and host["PidsLimit"] == 512 and host["NanoCpus"] == 10**9
            nics = await bash(client, "python3 -c 'import socket; print(*[n for _, n in socket.if_nameindex()])'")
            assert nics.structured_content["stdout"] == "lo\n"
        else:
            assert f"{5 * 1024**3}" in lines and "512" in lines
            assert "lo" in lines and "eth0" not in lines
        assert "blocked" in lines and "etc-readonly" in lines
        disk = await bash(client, "fallocate -l 6G /workspace/big; echo rc=$?; rm -f /workspace/big; df -B1 --output=avail /workspace | tail -1")
        out = disk.structured_content
        assert "rc=1" in out["stdout"] and "No space left" in out["stderr"]
        assert 5 * 1024**3 <= int(out["stdout"].split()[-1]) < 5.2 * 1024**3


def _tiny_png() -> bytes:
    import struct
    import zlib

    raw = b"\x00\xff\x00\x00"
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
