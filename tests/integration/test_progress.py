"""Long bash calls stream MCP progress notifications carrying the output so far, over every
transport, against real sandboxes on both backends (``backend_name``: containers, pods); short calls
send none."""

from __future__ import annotations

import pytest

from tests.support.backends import backend_settings, remove_backend_installation
from tests.support.servers import http_server, mcp_client, new_token

pytestmark = pytest.mark.anyio


@pytest.fixture
def progress_settings(tmp_path, docker_engine, backend_name):
    s = backend_settings(backend_name, tmp_path, progress_interval=0.3)
    yield s
    remove_backend_installation(s)


async def test_a_long_call_reports_progress_with_the_output_so_far_and_a_short_one_none(transport, progress_settings):
    updates: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, message))

    token = new_token() if transport == "http" else None
    if transport == "http":
        with http_server(progress_settings, token=token) as url:
            await _run(transport, progress_settings, on_progress, url, token)
    else:
        await _run(transport, progress_settings, on_progress, None, None)

    assert len(updates) >= 2, updates  # a 1.6 s command, a notification every 0.3 s
    assert [p for p, _ in updates] == sorted(p for p, _ in updates)  # elapsed seconds, increasing
    messages = [m or "" for _, m in updates]
    assert messages[0].startswith("tick 1")
    assert all(later.startswith(earlier.rstrip()) for earlier, later in zip(messages, messages[1:]))  # output so far
    assert "tick 2" in messages[-1]


async def _run(transport, settings, on_progress, url, token) -> None:
    async with mcp_client(transport, settings, base_url=url, token=token) as client:
        seen: list[str | None] = []

        async def on_short(progress: float, total: float | None, message: str | None) -> None:
            seen.append(message)

        quick = await client.call_tool("bash_code_execution", {"command": "echo hi"}, progress_callback=on_short)
        assert quick.structured_content["stdout"] == "hi\n" and seen == []
        result = await client.call_tool(
            "bash_code_execution",
            {"command": "for i in 1 2 3 4; do echo tick $i; sleep 0.4; done"},
            progress_callback=on_progress,
        )
        assert result.structured_content["stdout"] == "tick 1\ntick 2\ntick 3\ntick 4\n"
