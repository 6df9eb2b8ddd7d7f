"""The hosted tool's file story, locally: upload with the real anthropic SDK, analyse in a named
container, download every output by id; MCP clients see images and read files as resources.
On both backends (``any_settings``: the sandboxes are containers, then pods)."""

from __future__ import annotations

import base64
import hashlib

import anthropic
import anyio
import pytest

from tests.support.oracle import assert_hosted_shape
from tests.support.servers import http_server, mcp_client, new_token

pytestmark = pytest.mark.anyio

CSV = b"x,y\n1,2\n2,4\n3,9\n"
SCRIPT = r"""
import csv, os, struct, zlib
rows = list(csv.DictReader(open('/workspace/inputs/data.csv')))
out = os.environ['OUTPUT_DIR']
with open(os.path.join(out, 'summary.csv'), 'w') as fh:
    fh.write('n,sum_y\n%d,%d\n' % (len(rows), sum(int(r['y']) for r in rows)))
def chunk(k, d): return struct.pack('>I', len(d)) + k + d + struct.pack('>I', zlib.crc32(k + d))
png = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 2, 1, 8, 0, 0, 0, 0)) \
    + chunk(b'IDAT', zlib.compress(b'\x00\x00\xff')) + chunk(b'IEND', b'')
open(os.path.join(out, 'chart.png'), 'wb').write(png)
print(len(rows))
"""


async def test_an_sdk_upload_is_analysed_in_the_named_container_and_outputs_download_byte_identical(any_settings):
    settings = any_settings
    token = new_token()
    with http_server(settings, token=token) as url:
        sdk = anthropic.Anthropic(api_key=token, base_url=url)
        async with mcp_client("http", settings, base_url=url, token=token) as client:
            first = await client.call_tool("bash_code_execution", {"command": "true"})
            cid = first.meta["container"]["id"]

            uploaded = await anyio.to_thread.run_sync(
                lambda: sdk.beta.files.upload(file=("data.csv", CSV, "text/csv"), extra_query={"container_id": cid})
            )
            assert uploaded.id.startswith("file_") and uploaded.size_bytes == len(CSV)

            encoded = base64.b64encode(SCRIPT.encode()).decode()
            result = await client.call_tool(
                "bash_code_execution", {"command": f"echo {encoded} | base64 -d > /tmp/a.py && python3 /tmp/a.py"}
            )
            sc = result.structured_content
            assert_hosted_shape(sc, "bash_code_execution")
            assert sc["stdout"] == "3\n", sc
            ids = [b["file_id"] for b in sc["content"]]
            assert len(ids) == 2

            assert [c.type for c in result.content].count("image") == 1
            links = {c.name: c.uri for c in result.content if c.type == "resource_link"}
            summary = await client.read_resource(links["summary.csv"])
            assert summary.contents[0].text == "n,sum_y\n3,15\n"

        for file_id in ids:
            meta = await anyio.to_thread.run_sync(lambda fid=file_id: sdk.beta.files.retrieve_metadata(fid))
            data = await anyio.to_thread.run_sync(lambda fid=file_id: sdk.beta.files.download(fid).read())
            assert meta.size_bytes == len(data)
            if meta.filename == "summary.csv":
                assert data == b"n,sum_y\n3,15\n"
            else:
                assert data.startswith(b"\x89PNG")
            assert hashlib.sha256(data).hexdigest()


async def test_another_principal_cannot_upload_into_or_list_files_of_my_container(any_settings):
    settings = any_settings
    alice, bob = new_token(), new_token()
    with http_server(settings, token=f"alice:{alice},bob:{bob}") as url:
        async with mcp_client("http", settings, base_url=url, token=alice) as client:
            first = await client.call_tool("bash_code_execution", {"command": "true"})
            cid = first.meta["container"]["id"]
        sdk_bob = anthropic.Anthropic(api_key=bob, base_url=url, max_retries=0)
        with pytest.raises(anthropic.NotFoundError):
            await anyio.to_thread.run_sync(
                lambda: sdk_bob.beta.files.upload(file=("x.txt", b"x"), extra_query={"container_id": cid})
            )
        assert list(sdk_bob.beta.files.list()) == []


async def test_a_cli_upload_lands_in_the_container_before_its_next_call(any_settings, tmp_path):
    settings = any_settings
    import sys

    from tests.support.servers import server_env

    source = tmp_path / "notes.txt"
    source.write_bytes(b"from the cli\n")
    async with mcp_client("memory", settings) as client:
        first = await client.call_tool("bash_code_execution", {"command": "true"})
        cid = first.meta["container"]["id"]
        proc = await anyio.run_process(
            [sys.executable, "-m", "mcp_codeexec", "files", "upload", str(source), "--container", cid],
            env=server_env(settings), check=False,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        file_id = proc.stdout.decode().split()[0]
        assert file_id.startswith("file_")
        result = await client.call_tool("bash_code_execution", {"command": "cat /workspace/inputs/notes.txt"})
        assert result.structured_content["stdout"] == "from the cli\n"
        missing = await anyio.run_process(
            [sys.executable, "-m", "mcp_codeexec", "files", "upload", str(source), "--container", "container_" + "0" * 24],
            env=server_env(settings), check=False,
        )
        assert missing.returncode != 0 and b"container_expired" in missing.stderr

