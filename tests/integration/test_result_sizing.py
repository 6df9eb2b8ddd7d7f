"""Results state their size budget (`_meta["anthropic/maxResultSizeChars"]`) and keep their text within it."""

from __future__ import annotations

import re

import pytest

from tests.integration.conftest import make_settings
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import mcp_client, remove_installation

pytestmark = pytest.mark.anyio

FLOOD = "python3 -c \"import sys; sys.stdout.write('o' * 3_000_000); sys.stderr.write('e' * 3_000_000)\""


async def test_flooding_output_stays_within_the_announced_budget_and_the_full_text_is_kept(settings) -> None:
    async with mcp_client("memory", settings) as client:
        result = await client.call_tool("bash_code_execution", {"command": FLOOD})
        budget = result.meta["anthropic/maxResultSizeChars"]
        assert budget == settings.max_result_chars
        sc = assert_hosted_shape(result.structured_content, "bash_code_execution")
        text = result.content[0].text
        assert len(text) <= budget, len(text)
        assert text.startswith("ooo") and "[exit code 0]" in text[-200:]
        for stream, char in (("stdout", "o"), ("stderr", "e")):
            kept = getattr(sc, stream)
            spill = re.search(r"\n\[\.\.\. \d+ bytes omitted; full output saved to (\S+?) \.\.\.\]\n", kept)
            assert spill, kept[settings.max_output_bytes // 2 - 10: settings.max_output_bytes // 2 + 200]
            assert kept.replace(spill.group(0), "") == char * settings.max_output_bytes  # head + tail
            size = await client.call_tool("bash_code_execution", {"command": f"wc -c < {spill.group(1)}"})
            assert size.structured_content["stdout"].strip() == "3000000"


async def test_a_smaller_configured_budget_is_announced_and_kept(tmp_path, docker_engine) -> None:
    settings = make_settings(tmp_path, max_result_chars=20_000, max_output_bytes=8_000)
    try:
        async with mcp_client("memory", settings) as client:
            flood = await client.call_tool("bash_code_execution", {"command": FLOOD})
            assert flood.meta["anthropic/maxResultSizeChars"] == 20_000
            assert len(flood.content[0].text) <= 20_000
            await client.call_tool("text_editor_code_execution", {"command": "create", "path": "big.txt", "file_text": "line\n" * 50_000})
            viewed = await client.call_tool("text_editor_code_execution", {"command": "view", "path": "big.txt"})
            assert_hosted_shape(viewed.structured_content, "text_editor_code_execution")
            text = viewed.content[0].text
            assert len(text) <= 20_000 and "characters omitted" in text
    finally:
        remove_installation(settings)
