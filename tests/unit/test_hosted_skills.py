"""Skills with --backend hosted: Anthropic's by reference, ours uploaded once (by content) to the
hosted Skills API and named in `container.skills`; the loaded set comes back in _meta.container."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_codeexec.backends.base import CallContext
from mcp_codeexec.backends.hosted import HostedBackend
from mcp_codeexec.config import load_settings
from mcp_codeexec.errors import InvalidToolInput
from mcp_codeexec.files import FileStore
from mcp_codeexec.schemas import BashInput
from tests.fakes import fake_anthropic as fa

pytestmark = pytest.mark.anyio
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "skills"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _ok(tool, tool_input):
    return fa.bash_result(stdout="ok\n")


async def test_folder_and_anthropic_skills_reach_the_hosted_container_and_uploads_happen_once(tmp_path: Path) -> None:
    with fa.FakeAnthropic() as api, FileStore(tmp_path / "files") as store:
        api.fallback = fa.executor(_ok)
        settings = load_settings(data_dir=str(tmp_path / "data"), ANTHROPIC_API_KEY="sk-ant-test", anthropic_base_url=api.base_url,
                                 skills=[str(FIXTURES)], progress_interval=0)
        refs = ({"type": "anthropic", "skill_id": "pptx", "version": "latest"},)
        async with HostedBackend(settings, store) as backend:
            first = await backend.bash(BashInput(command="ls /skills"), CallContext("local", "s1", skills=refs))
            again = await backend.bash(BashInput(command="true"), CallContext("local", "s1", skills=refs))
        async with HostedBackend(settings, store) as backend:  # a new server: the upload is reused by content
            other = await backend.bash(BashInput(command="true"), CallContext("local", "s2", skills=refs))

        assert len(api.requests_to("skills.create")) == 1
        assert sorted(name for name, _ in api.skills[next(iter(api.skills))]) == [
            "chart-report/SKILL.md", "chart-report/scripts/chart.py", "chart-report/scripts/common.py", "chart-report/scripts/sheet.py"]
        sent = [r["container"] for r in api.message_requests]
        skill_id = next(iter(api.skills))
        assert sent[0]["skills"][0] == {"type": "anthropic", "skill_id": "pptx", "version": "latest"}
        assert sent[0]["skills"][1]["skill_id"] == skill_id and sent[0]["skills"][1]["type"] == "custom"
        assert "id" not in sent[0] and sent[1]["id"] == first.container.id and sent[1]["skills"] == sent[0]["skills"]
        assert sent[2]["skills"] == sent[0]["skills"]
        assert [s["skill_id"] for s in first.container.meta()["skills"]] == ["pptx", skill_id]
        assert again.container.meta()["skills"] == first.container.meta()["skills"] == other.container.meta()["skills"]


async def test_an_unknown_custom_skill_is_invalid_input_before_any_request(tmp_path: Path) -> None:
    with fa.FakeAnthropic() as api, FileStore(tmp_path / "files") as store:
        settings = load_settings(data_dir=str(tmp_path / "data"), ANTHROPIC_API_KEY="sk-ant-test", anthropic_base_url=api.base_url)
        async with HostedBackend(settings, store) as backend:
            with pytest.raises(InvalidToolInput, match="Skill not found"):
                await backend.bash(BashInput(command="true"), CallContext("local", "s1", skills=("skill_01nope",)))
        assert api.message_requests == []
