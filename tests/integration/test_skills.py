"""Agent Skills end to end: folder skills read-only at /skills/<name>/, disclosed in `initialize`,
run from bash through real MCP clients; uploaded skills (real `anthropic` SDK) selected per sandbox."""

from __future__ import annotations

import base64
import io
import os
import zipfile
from pathlib import Path

import anthropic
import pytest
from anthropic.lib import files_from_dir

from mcp_codeexec.api import Sandbox
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import http_server, mcp_client, new_token

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "skills"
RUNTIME = os.environ.get("MCP_CODEEXEC_RUNTIME") or "runc"


@pytest.fixture
def skilled(settings):
    return settings.model_copy(update={"skills": [FIXTURES]})


async def _bash(client, command: str, **extra):
    result = await client.call_tool("bash_code_execution", {"command": command, **extra})
    assert_hosted_shape(result.structured_content, "bash_code_execution")
    return result


@pytest.mark.parametrize("transport", ["memory", "stdio"])
async def test_a_folder_skill_is_named_in_initialize_and_its_scripts_make_a_chart_and_a_workbook(transport, skilled):
    async with mcp_client(transport, skilled) as client:
        instructions = client.instructions
        tools = (await client.list_tools()).tools
        bash_tool = next(t for t in tools if t.name == "bash_code_execution")
        assert "chart-report (/skills/chart-report/SKILL.md)" in bash_tool.description
        assert "- chart-report (/skills/chart-report/SKILL.md): Turn a small table" in instructions
        resources = (await client.list_resources()).resources
        skill_md = next(r for r in resources if str(r.uri) == "codeexec://skills/chart-report/SKILL.md")
        text = (await client.read_resource(skill_md.uri)).contents[0].text
        assert text.startswith("---\nname: chart-report")

        result = await _bash(
            client,
            "cat /skills/chart-report/SKILL.md | head -2; "
            "python /skills/chart-report/scripts/chart.py apples=3 pears=5 && "
            "python /skills/chart-report/scripts/sheet.py apples=3 pears=5",
        )
        sc = result.structured_content
        assert sc["return_code"] == 0, sc
        assert "name: chart-report" in sc["stdout"]
        assert result.meta["container"]["skills"] == [
            {"skill_id": "chart-report", "type": "custom", "version": result.meta["container"]["skills"][0]["version"]}
        ]
        assert result.meta["container"]["skills"][0]["version"].startswith("local-")
        assert len(sc["content"]) == 2 and all(c["type"] == "bash_code_execution_output" for c in sc["content"])
        names = sorted(c.name for c in result.content if c.type == "resource_link")
        assert names == ["chart.png", "report.xlsx"]
        links = {c.name: c for c in result.content if c.type == "resource_link"}
        xlsx = (await client.read_resource(links["report.xlsx"].uri)).contents[0]
        book = zipfile.ZipFile(io.BytesIO(base64.b64decode(xlsx.blob)))  # an .xlsx is a zip of XML parts
        strings = book.read("xl/sharedStrings.xml").decode() if "xl/sharedStrings.xml" in book.namelist() else ""
        sheet = book.read("xl/worksheets/sheet1.xml").decode()
        assert all(w in strings + sheet for w in ("label", "apples", "pears", "total")) and "SUM(B2:B3)" in sheet
        assert 'name="data"' in book.read("xl/workbook.xml").decode()
        png = (await client.read_resource(links["chart.png"].uri)).contents[0]
        assert base64.b64decode(png.blob).startswith(b"\x89PNG")


@pytest.mark.parametrize("transport", ["memory", "stdio"])
async def test_the_skills_scripts_run_from_the_repl_and_their_files_come_back(transport, skilled):
    """The same skill from code_execution: its scripts run with the cell's $OUTPUT_DIR, and the chart
    and workbook come back as code_execution_output files."""
    async with mcp_client(transport, skilled) as client:
        code_tool = next(t for t in (await client.list_tools()).tools if t.name == "code_execution")
        assert "chart-report (/skills/chart-report/SKILL.md)" in code_tool.description
        result = await client.call_tool("code_execution", {"code": (
            "import os, subprocess, sys\n"
            "print(open('/skills/chart-report/SKILL.md').read().splitlines()[1])\n"
            "for script in ('chart.py', 'sheet.py'):\n"
            "    subprocess.run([sys.executable, f'/skills/chart-report/scripts/{script}', 'apples=3', 'pears=5'], check=True)\n"
            "print(sorted(os.listdir(os.environ['OUTPUT_DIR'])))\n"
        )})
        sc = result.structured_content
        assert_hosted_shape(sc, "code_execution")
        assert sc["return_code"] == 0, sc
        assert sc["stdout"].splitlines()[0] == "name: chart-report"
        assert sc["stdout"].splitlines()[-1] == "['chart.png', 'report.xlsx']"
        assert len(sc["content"]) == 2 and all(c["type"] == "code_execution_output" for c in sc["content"])
        assert result.meta["container"]["skills"][0]["skill_id"] == "chart-report"
        links = {c.name: c for c in result.content if c.type == "resource_link"}
        assert sorted(links) == ["chart.png", "report.xlsx"]
        png = (await client.read_resource(links["chart.png"].uri)).contents[0]
        assert base64.b64decode(png.blob).startswith(b"\x89PNG")


async def test_skills_are_read_only_and_no_host_path_shows_in_the_sandbox(skilled):
    async with mcp_client("memory", skilled) as client:
        result = await _bash(
            client,
            "touch /skills/chart-report/x 2>&1; echo pwn >> /skills/chart-report/SKILL.md 2>&1; "
            "mkdir /skills/new 2>&1; rm -f /skills/chart-report/SKILL.md 2>&1; "
            "find /skills -maxdepth 1 -printf '%M %u\\n'; echo ---; "
            "cat /proc/self/mountinfo; cat /sys/block/loop*/loop/backing_file 2>/dev/null; "
            "grep -rs . /sys/devices/virtual/block/*/loop/backing_file 2>/dev/null; true",
        )
        out = result.structured_content["stdout"]
        writes, _, rest = out.partition("---")
        writes += result.structured_content["stderr"]  # the shell's own redirection error
        assert writes.count("Read-only file system") == 4 and "denied" not in writes, writes
        assert str(FIXTURES) not in rest and "fixtures" not in rest
        assert not any(" /skills" in line.split(" - ")[0] for line in rest.splitlines()), "no /skills mount"
        again = await _bash(client, "cat /skills/chart-report/SKILL.md | head -2")
        assert "name: chart-report" in again.structured_content["stdout"]


async def test_an_sdk_uploaded_skill_is_seen_by_a_sandbox_that_selected_it_and_by_the_principals_new_sessions(settings, tmp_path):
    src = tmp_path / "src" / "shout"
    (src / "scripts").mkdir(parents=True)
    (src / "SKILL.md").write_text("---\nname: shout\ndescription: Print text in capitals.\n---\nRun scripts/shout.sh\n")
    (src / "scripts" / "shout.sh").write_text("echo \"$*\" | tr a-z A-Z\n")
    token = new_token()
    with http_server(settings, token=token) as url:
        sdk = anthropic.Anthropic(api_key=token, base_url=url)
        skill = sdk.beta.skills.create(files=files_from_dir(src), display_name="Shout")
        assert skill.display_name == "Shout" and skill.source.type == "custom" and skill.type == "skill"
        assert [s.id for s in sdk.beta.skills.list()] == [skill.id]
        assert sdk.beta.skills.retrieve(skill.id).latest_version_id == skill.latest_version_id
        (src / "SKILL.md").write_text("---\nname: shout\ndescription: Print text in CAPITALS (v2).\n---\nv2\n")
        v2 = sdk.beta.skills.versions.create(skill.id, files=files_from_dir(src))
        assert v2.name == "shout" and v2.description.endswith("(v2).")
        assert {v.id for v in sdk.beta.skills.versions.list(skill_id=skill.id)} == {skill.latest_version_id, v2.id}
        archive = zipfile.ZipFile(io.BytesIO(sdk.beta.skills.versions.download(v2.id, skill_id=skill.id).read()))
        assert sorted(archive.namelist()) == ["shout/SKILL.md", "shout/scripts/shout.sh"]

        async with mcp_client("http", settings, base_url=url, token=token) as client:
            tools = (await client.list_tools()).tools
            assert "shout (/skills/shout/SKILL.md, uploaded: in containers created after the upload): Print text in CAPITALS (v2)." in next(t for t in tools if t.name == "bash_code_execution").description
            uris = [str(r.uri) for r in (await client.list_resources()).resources]
            assert f"codeexec://skills/{skill.id}/SKILL.md" in uris
            md = (await client.read_resource(f"codeexec://skills/{skill.id}/SKILL.md")).contents[0].text
            assert "(v2)" in md
            result = await _bash(client, "sh /skills/shout/scripts/shout.sh hello; head -3 /skills/shout/SKILL.md")
            assert result.structured_content["stdout"].startswith("HELLO\n"), result.structured_content
            assert result.meta["container"]["skills"] == [{"skill_id": skill.id, "type": "custom", "version": v2.id}]

        other = anthropic.Anthropic(api_key=new_token(), base_url=url)
        with pytest.raises(anthropic.AuthenticationError):
            other.beta.skills.list()
        sdk.beta.skills.versions.delete(skill.latest_version_id if False else v2.id, skill_id=skill.id)
        assert sdk.beta.skills.retrieve(skill.id).latest_version_id != v2.id
        deleted = sdk.beta.skills.delete(skill.id)
        assert deleted.type == "skill_deleted"
        with pytest.raises(anthropic.NotFoundError):
            sdk.beta.skills.retrieve(skill.id)

    # The Python API selects the (first) version explicitly; an uploaded skill not selected is absent.
    from mcp_codeexec.skills import catalog_for

    store = catalog_for(settings).store
    entries = [("SKILL.md", 0o644, b"---\nname: pick-me\ndescription: Selected.\n---\n")]
    row, version = store.create("local", "pick-me", "Selected.", entries, None)
    store.create("local", "not-me", "Not selected.", [("SKILL.md", 0o644, b"---\nname: not-me\ndescription: x\n---\n")], None)
    async with Sandbox(settings, skills=[{"type": "custom", "skill_id": row.id, "version": version.id}]) as sb:
        out = await sb.bash("cd /skills && echo *")  # not ls: the CI gVisor build lacks statx
        assert out.stdout.split() == ["pick-me"]
        assert sb.last_outcome.container.meta()["skills"] == [{"skill_id": row.id, "type": "custom", "version": version.id}]


async def test_asking_for_an_anthropic_skill_says_how_to_provide_it_locally(settings):
    with pytest.raises(Exception) as info:
        async with Sandbox(settings, skills=[{"type": "anthropic", "skill_id": "pptx", "version": "latest"}]):
            pass
    assert "--skills" in str(info.value) and "pptx" in str(info.value)


async def test_the_anthropic_adapter_takes_container_skills_and_echoes_them_like_the_hosted_response(skilled):
    from anthropic.types.beta import BetaContainer

    from mcp_codeexec.anthropic_tools import container_of, run_tool_use, sandbox_for_container

    container = {"skills": [{"type": "custom", "skill_id": "chart-report", "version": "latest"}]}
    async with sandbox_for_container(container, settings=skilled) as sb:
        block = {"type": "tool_use", "id": "toolu_1", "name": "bash_code_execution",
                 "input": {"command": "head -2 /skills/chart-report/SKILL.md"}}
        result = await run_tool_use(sb, block)
        assert "name: chart-report" in result["content"][0]["text"]
        echoed = BetaContainer.model_validate(container_of(sb))
        assert [(s.skill_id, s.type) for s in echoed.skills] == [("chart-report", "custom")]
        assert echoed.id == sb.container_id

        # The container's skill set is fixed: naming it with another set is refused, not changed.
        from mcp_codeexec.skills import catalog_for

        row, _ = catalog_for(skilled).store.create(
            "local", "extra", "Extra.", [("SKILL.md", 0o644, b"---\nname: extra\ndescription: Extra.\n---\n")], None)
        with pytest.raises(Exception, match="skills are fixed"):
            async with Sandbox(skilled, container_id=sb.container_id, skills=[row.id]):
                pass


async def test_a_pool_container_carries_the_folder_skills_and_a_rebuilt_container_keeps_its_skills(skilled):
    import docker

    from mcp_codeexec.engines.docker import NAME_PREFIX

    pooled = skilled.model_copy(update={"pool_size": 1})
    async with mcp_client("memory", pooled) as client:
        first = await _bash(client, "cat /skills/chart-report/SKILL.md | head -2")
        cid = first.meta["container"]["id"]
        skills = first.meta["container"]["skills"]
        assert [s["skill_id"] for s in skills] == ["chart-report"]
        docker.from_env().containers.get(NAME_PREFIX + cid).remove(force=True)  # removed behind the server's back
        await client.call_tool("bash_code_execution", {"command": "true", "container_id": cid})  # may see the lost connection
        again = await _bash(client, "cat /skills/chart-report/SKILL.md | head -2", container_id=cid)
        assert again.structured_content.get("return_code") == 0, again.content[0].text
        assert "name: chart-report" in again.structured_content["stdout"]
        assert again.meta["container"] == {**first.meta["container"], "skills": skills}
