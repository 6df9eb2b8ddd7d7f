"""The legacy Python-only ``code_execution`` tool, offered behind a flag."""

from __future__ import annotations

import pytest

from mcp_codeexec.schemas import CodeResult
from tests.integration.conftest import make_settings
from tests.support.servers import mcp_client, remove_installation

pytestmark = pytest.mark.anyio


async def test_the_legacy_tool_runs_python_and_answers_in_its_own_hosted_shape(tmp_path, docker_engine):
    from anthropic.types.beta import BetaCodeExecutionResultBlock

    settings = make_settings(tmp_path, legacy_tool=True)
    try:
        async with mcp_client("stdio", settings) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            assert names == ["bash_code_execution", "text_editor_code_execution", "code_execution"]
            code = "import os, sys\nprint(sum(range(10)))\nopen(os.environ['OUTPUT_DIR'] + '/r.txt', 'w').write('x')\nsys.exit(3)"
            result = await client.call_tool("code_execution", {"code": code})
            sc = result.structured_content
            BetaCodeExecutionResultBlock.model_validate(sc)
            assert CodeResult.model_validate(sc)
            assert sc["stdout"] == "45\n" and sc["return_code"] == 3
            assert sc["content"][0]["type"] == "code_execution_output"
            bad = await client.call_tool("code_execution", {"code": 5})
            assert bad.structured_content == {"type": "code_execution_tool_result_error", "error_code": "invalid_tool_input"}
    finally:
        remove_installation(settings)


async def test_the_legacy_tool_is_absent_unless_enabled(settings):
    async with mcp_client("memory", settings) as client:
        assert "code_execution" not in [t.name for t in (await client.list_tools()).tools]
