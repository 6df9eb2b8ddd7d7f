"""Call mcp-codeexec over streamable HTTP with a bearer token, using the MCP Python SDK.

Start the server (it prints a generated token once and saves it in <data dir>/http_token):

    mcp-codeexec serve --transport http            # http://127.0.0.1:8000/mcp

then:

    MCP_CODEEXEC_URL=http://127.0.0.1:8000/mcp MCP_CODEEXEC_TOKEN=... python examples/http_client.py
"""

from __future__ import annotations

import asyncio
import json
import os

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_codeexec.config import load_settings


def token() -> str:
    if value := os.environ.get("MCP_CODEEXEC_TOKEN"):
        return value
    saved = load_settings().data_dir / "http_token"  # the server's generated token
    if not saved.is_file():
        raise SystemExit(f"no token: set MCP_CODEEXEC_TOKEN, or start the server once so that it saves one in {saved}")
    return saved.read_text().strip()


async def main() -> None:
    url = os.environ.get("MCP_CODEEXEC_URL", "http://127.0.0.1:8000/mcp")
    headers = {"Authorization": f"Bearer {token()}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(120)) as http:
        try:
            probe = await http.post(url, json={})
        except httpx2.TransportError as exc:  # say so plainly instead of a stack trace
            raise SystemExit(f"cannot reach {url} ({exc or type(exc).__name__}): start it with `mcp-codeexec serve --transport http`") from None
        if probe.status_code == 401:
            raise SystemExit(f"{url} refused the token (HTTP 401): use the one the server printed or saved in <data dir>/http_token")
        async with Client(streamable_http_client(url, http_client=http)) as client:
            tools = await client.list_tools()
            print("tools:", ", ".join(tool.name for tool in tools.tools))

            result = await client.call_tool("bash_code_execution", {"command": "python3 -c 'print(sum(range(101)))'"})
            print("bash:", json.dumps(result.structured_content))
            container_id = result.meta["container"]["id"]
            print("container:", container_id)

            # The same container again (files persist), here through the text editor.
            await client.call_tool(
                "text_editor_code_execution",
                {"command": "create", "path": "hello.py", "file_text": "print('hello from HTTP')\n", "container_id": container_id},
            )
            again = await client.call_tool("bash_code_execution", {"command": "python3 hello.py", "container_id": container_id})
            print("editor + bash:", again.structured_content["stdout"].strip())


if __name__ == "__main__":
    asyncio.run(main())
