"""SKILL.md rules, folder loading, start-up refusal, selection messages, level-1 disclosure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_codeexec.config import load_settings
from mcp_codeexec.skills import (
    Catalog,
    SkillInvalid,
    SkillNotFound,
    SkillSet,
    load_folders,
    parse_front_matter,
    validate_front_matter,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "skills"


def _skill(root: Path, folder: str, front: str, body: str = "body\n") -> Path:
    d = root / folder
    d.mkdir(parents=True)
    (d / "SKILL.md").write_text(f"---\n{front}---\n{body}")
    return d


def test_front_matter_takes_plain_quoted_block_and_nested_values() -> None:
    fields = parse_front_matter(
        "---\nname: pdf-tools\ndescription: >\n  Fill forms,\n  merge files.\nlicense: 'MIT'\n"
        "metadata:\n  author: me\nnote: \"a \\\"b\\\"\"  \n---\n# Body\n",
        "SKILL.md",
    )
    assert fields["name"] == "pdf-tools"
    assert fields["description"] == "Fill forms, merge files."
    assert fields["license"] == "MIT" and fields["metadata"] == "author: me" and fields["note"] == 'a "b"'


@pytest.mark.parametrize(
    "front, rule",
    [
        ("description: x\n", "'name' is missing"),
        ("name: " + "a" * 65 + "\ndescription: x\n", "at most 64"),
        ("name: My_Skill\ndescription: x\n", "lowercase letters, digits and hyphens"),
        ("name: anthropic-tools\ndescription: x\n", "reserved word 'anthropic'"),
        ("name: my-claude\ndescription: x\n", "reserved word 'claude'"),
        ("name: ok\n", "'description' is missing"),
        ("name: ok\ndescription: ''\n", "'description' is missing"),
        ("name: ok\ndescription: " + "d" * 1025 + "\n", "at most 1024"),
        ("name: ok\ndescription: uses <tool>x</tool>\n", "XML tags"),
        ("name: ok\nname: again\ndescription: x\n", "duplicate key"),
        ("name: [a, b]\ndescription: x\n", "plain or quoted"),
        ("just text\n", "expected 'key: value'"),
    ],
)
def test_each_rule_broken_is_named_with_the_file(tmp_path: Path, front: str, rule: str) -> None:
    _skill(tmp_path, "s", front)
    with pytest.raises(SkillInvalid) as info:
        load_folders([tmp_path])
    assert str(tmp_path / "s" / "SKILL.md") in str(info.value) and rule in str(info.value)


def test_a_skill_md_without_front_matter_is_refused() -> None:
    with pytest.raises(SkillInvalid, match="must start with YAML front matter"):
        validate_front_matter(parse_front_matter("# no front matter\n", "x/SKILL.md"), "x/SKILL.md")
    with pytest.raises(SkillInvalid, match="no closing"):
        parse_front_matter("---\nname: a\n", "x/SKILL.md")


def test_a_symlink_in_a_skill_folder_is_refused(tmp_path: Path) -> None:
    d = _skill(tmp_path, "s", "name: s\ndescription: x\n")
    (d / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(SkillInvalid, match="symbolic link"):
        load_folders([tmp_path])


def test_two_folders_with_the_same_name_are_refused(tmp_path: Path) -> None:
    _skill(tmp_path / "a", "one", "name: same\ndescription: x\n")
    _skill(tmp_path / "b", "two", "name: same\ndescription: y\n")
    with pytest.raises(SkillInvalid, match="also used"):
        load_folders([tmp_path / "a", tmp_path / "b"])


def test_the_fixture_skill_loads_with_its_scripts() -> None:
    [skill] = load_folders([FIXTURES])
    assert skill.name == skill.skill_id == "chart-report" and skill.type == "custom"
    assert {p for p, _, _ in skill.load()} == {"SKILL.md", "scripts/chart.py", "scripts/sheet.py", "scripts/common.py"}
    assert {p: m for p, m, _ in skill.load()}["scripts/chart.py"] == 0o755


def test_a_bad_skill_stops_serve_with_the_file_and_the_rule(tmp_path: Path) -> None:
    _skill(tmp_path / "skills", "bad", "name: Bad\ndescription: x\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_CODEEXEC_")}
    env.update(MCP_CODEEXEC_CONFIG=str(tmp_path / "none.toml"), MCP_CODEEXEC_DATA_DIR=str(tmp_path / "data"),
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run([sys.executable, "-m", "mcp_codeexec", "serve", "--skills", str(tmp_path / "skills")],
                          env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 2
    assert f"{tmp_path / 'skills' / 'bad' / 'SKILL.md'}: 'name' 'Bad' may contain only lowercase letters" in proc.stderr


def test_create_server_refuses_a_bad_skill(tmp_path: Path) -> None:
    from mcp_codeexec.server import create_server

    _skill(tmp_path / "skills", "bad", "name: ok\ndescription: <b>bold</b>\n")
    settings = load_settings(data_dir=str(tmp_path / "data"), skills=[str(tmp_path / "skills")])
    with pytest.raises(SystemExit, match="XML tags"):
        create_server(settings)


def test_the_skills_setting_reads_a_comma_separated_env_list(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MCP_CODEEXEC_SKILLS", f"{tmp_path}/a, {tmp_path}/b")
    assert load_settings(data_dir=str(tmp_path)).skills == [tmp_path / "a", tmp_path / "b"]


def test_asking_for_an_anthropic_skill_explains_how_to_provide_it(tmp_path: Path) -> None:
    catalog = Catalog([], tmp_path / "store")
    with pytest.raises(SkillNotFound) as info:
        catalog.resolve([{"type": "anthropic", "skill_id": "xlsx", "version": "latest"}], "local")
    message = str(info.value)
    assert "not shipped" in message and "--skills DIR" in message and "name: xlsx" in message


def test_a_local_folder_named_like_an_anthropic_skill_is_used_under_that_id(tmp_path: Path) -> None:
    _skill(tmp_path, "xlsx", "name: xlsx\ndescription: Spreadsheets.\n")
    catalog = Catalog(load_folders([tmp_path]), tmp_path / "store")
    chosen = catalog.resolve([{"type": "anthropic", "skill_id": "xlsx"}], "local")
    assert chosen.entries() == [{"skill_id": "xlsx", "type": "anthropic", "version": chosen.skills[0].version}]


def test_disclosure_names_each_skill_with_its_path_and_description_only() -> None:
    catalog = Catalog(load_folders([FIXTURES]), None)
    text = catalog.describe()
    assert "- chart-report (/skills/chart-report/SKILL.md): Turn a small table" in text
    assert "Run both scripts" not in text  # the body stays in the sandbox until read
    assert catalog.resolve([], "local") == SkillSet(catalog.folder)


def test_the_skills_setting_reads_a_toml_list(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'skills = ["{tmp_path}/a", "{tmp_path}/b"]\n')
    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(config))
    monkeypatch.delenv("MCP_CODEEXEC_SKILLS", raising=False)
    assert load_settings(data_dir=str(tmp_path)).skills == [tmp_path / "a", tmp_path / "b"]


@pytest.fixture(params=["sqlite", "postgres"])
def skill_store(request: pytest.FixtureRequest, tmp_path: Path):
    """The uploaded-skills store, embedded (SQLite) and shared by replicas (PostgreSQL)."""
    if request.param == "postgres":
        from mcp_codeexec.pg_store import PgSkillStore

        return PgSkillStore(request.getfixturevalue("postgres_url"), tmp_path / "skills")
    from mcp_codeexec.skills_store import SkillStore

    return SkillStore(tmp_path / "skills")


def test_a_skill_store_round_trips_versions_by_id_epoch_and_latest(tmp_path: Path, skill_store) -> None:
    store = skill_store
    md = b"---\nname: s\ndescription: x\n---\n"
    row, v1 = store.create("alice", "s", "x", [("SKILL.md", 0o644, md)], "S")
    v2 = store.add_version("alice", row.id, "s", "y", [("SKILL.md", 0o644, md), ("run.sh", 0o755, b"echo")])
    assert store.version(row.id, "latest", "alice").id == v2.id == store.get(row.id, "alice").latest_version_id
    assert store.version(row.id, v1.epoch, "alice").id == v1.id
    assert {p: m for p, m, _ in store.resolve(row.id, "latest", "alice").load()} == {"SKILL.md": 0o644, "run.sh": 0o755}
    with pytest.raises(SkillInvalid, match="keeps the name"):
        store.add_version("alice", row.id, "other", "y", [("SKILL.md", 0o644, md)])
    with pytest.raises(SkillNotFound):
        store.get(row.id, "bob")
    store.delete_version(row.id, v2.id, "alice")
    assert store.get(row.id, "alice").latest_version_id == v1.id
    with pytest.raises(SkillInvalid, match="only version"):
        store.delete_version(row.id, v1.id, "alice")
    store.delete(row.id, "alice")
    assert store.list(None, 10, 0) == [] and list((tmp_path / "skills" / "blobs").iterdir()) == []


def test_every_skills_api_answer_validates_against_the_sdk_models(tmp_path: Path, skill_store) -> None:
    from anthropic.types.beta import BetaDeletedSkill, BetaSkill
    from anthropic.types.beta.skills import BetaDeletedSkillVersion, BetaSkillVersion
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from mcp_codeexec.skills_api import skills_routes

    store = skill_store
    md = b"---\nname: s\ndescription: x\n---\n"
    files = [("files[]", ("s/SKILL.md", md, "text/markdown"))]
    with TestClient(Starlette(routes=skills_routes(lambda: store, lambda request: "alice"))) as client:
        skill = BetaSkill.model_validate(client.post("/v1/skills", files=files, data={"display_name": "S"}).json(), strict=False)
        assert skill.display_name == "S" and skill.id.startswith("skill_01")
        version = BetaSkillVersion.model_validate(client.post(f"/v1/skills/{skill.id}/versions", files=files).json())
        assert version.id.startswith("skver_01") and version.skill_id == skill.id
        page = client.get("/v1/skills", params={"limit": 1}).json()
        assert page["has_more"] is False and page["next_page"] is None
        BetaSkill.model_validate(page["data"][0])
        versions = client.get(f"/v1/skills/{skill.id}/versions", params={"limit": 1}).json()
        assert versions["has_more"] is True and versions["next_page"]
        rest = client.get(f"/v1/skills/{skill.id}/versions", params={"limit": 1, "page": versions["next_page"]}).json()
        assert {versions["data"][0]["id"], rest["data"][0]["id"]} == {version.id, skill.latest_version_id}
        BetaSkillVersion.model_validate(client.get(f"/v1/skills/{skill.id}/versions/latest").json())
        assert BetaDeletedSkillVersion.model_validate(client.delete(f"/v1/skills/{skill.id}/versions/{version.id}").json()).id == version.id
        assert BetaDeletedSkill.model_validate(client.delete(f"/v1/skills/{skill.id}").json()).type == "skill_deleted"
        missing = client.get(f"/v1/skills/{skill.id}")
        assert missing.status_code == 404 and missing.json() == {
            "type": "error", "error": {"type": "not_found_error", "message": f"Skill not found: {skill.id}"}}
        bad = client.get("/v1/skills", params={"limit": 0})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
