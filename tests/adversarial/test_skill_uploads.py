"""Hostile Skills API uploads: each kind is refused with a 400 in Anthropic's error shape, and
nothing is stored. (No Docker needed: the routes run in-process over the store.)"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from mcp_codeexec.skills import MAX_SKILL_BYTES
from mcp_codeexec.skills_api import skills_routes
from mcp_codeexec.skills_store import SkillStore

GOOD_MD = b"---\nname: good\ndescription: A fine skill.\n---\nbody\n"


@pytest.fixture
def api(tmp_path: Path):
    store = SkillStore(tmp_path / "skills")
    app = Starlette(routes=skills_routes(lambda: store, lambda request: "alice"))
    with TestClient(app) as client:
        yield client, store


def _files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files[]", (name, data, "application/octet-stream")) for name, data in items]


def _zip(*members: tuple[zipfile.ZipInfo | str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for info, data in members:
            z.writestr(info, data)
    return out.getvalue()


def _member(name: str, kind: int, perm: int = 0o644) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (kind | perm) << 16
    return info


def _refused(client: TestClient, store: SkillStore, files: list, needle: str) -> None:
    response = client.post("/v1/skills", files=files)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert needle in body["error"]["message"], body["error"]["message"]
    assert store.list(None, 10, 0) == []
    assert list((store.root / "blobs").iterdir()) == []


def test_a_valid_upload_is_accepted(api) -> None:
    client, _ = api
    response = client.post("/v1/skills", files=_files(("good/SKILL.md", GOOD_MD), ("good/a/b.txt", b"x")))
    assert response.status_code == 200, response.text
    assert response.json()["display_name"] == "good"


def test_a_zip_of_the_folder_is_accepted_and_downloads_with_the_same_files(api) -> None:
    client, _ = api
    archive = _zip(("good/SKILL.md", GOOD_MD), ("good/scripts/run.sh", b"echo hi\n"))
    response = client.post("/v1/skills", files=_files(("good.zip", archive)))
    assert response.status_code == 200, response.text
    skill = response.json()
    content = client.get(f"/v1/skills/{skill['id']}/versions/{skill['latest_version_id']}/content")
    assert content.headers["content-type"] == "application/zip"
    assert sorted(zipfile.ZipFile(io.BytesIO(content.content)).namelist()) == ["good/SKILL.md", "good/scripts/run.sh"]


@pytest.mark.parametrize(
    "files, needle",
    [
        (_files(("/etc/good/SKILL.md", GOOD_MD)), "absolute path"),
        (_files(("good/SKILL.md", GOOD_MD), ("good/../../evil.sh", b"x")), "'..'"),
        (_files(("good/SKILL.md", GOOD_MD), ("other/x.txt", b"x")), "one top-level folder"),
        (_files(("SKILL.md", GOOD_MD)), "one top-level folder"),
        (_files(("good/README.md", b"hi")), "no SKILL.md"),
        (_files(("good/SKILL.md", b"---\nname: Good\ndescription: x\n---\n")), "lowercase letters"),
        (_files(("good/SKILL.md", b"---\nname: claude-helper\ndescription: x\n---\n")), "reserved word 'claude'"),
        (_files(("good/SKILL.md", b"---\nname: good\ndescription: <script>x</script>\n---\n")), "XML tags"),
        (_files(("good/SKILL.md", GOOD_MD), ("good/big.bin", b"\0" * (MAX_SKILL_BYTES + 1))), "bytes"),
        (_files(("good/SKILL.md", GOOD_MD), ("good/c:\\x", b"x")), "not a valid file path"),
    ],
    ids=["absolute", "dotdot", "two-tops", "no-folder", "no-skill-md", "bad-name", "reserved", "xml", "too-big", "backslash"],
)
def test_hostile_file_uploads_are_refused(api, files, needle) -> None:
    _refused(*api, files, needle)


@pytest.mark.parametrize(
    "archive, needle",
    [
        (_zip(("good/SKILL.md", GOOD_MD), (_member("good/link", stat.S_IFLNK, 0o777), b"/etc/passwd")), "symbolic link"),
        (_zip(("good/SKILL.md", GOOD_MD), (_member("good/dev", stat.S_IFCHR), b"")), "device or special file"),
        (_zip(("good/SKILL.md", GOOD_MD), (_member("good/fifo", stat.S_IFIFO), b"")), "device or special file"),
        (_zip(("good/SKILL.md", GOOD_MD), ("/abs/x", b"x")), "absolute path"),
        (_zip(("good/SKILL.md", GOOD_MD), ("good/../../x", b"x")), "'..'"),
        (_zip(("good/SKILL.md", GOOD_MD), ("good/bomb.bin", b"\0" * (64 * 1024 * 1024))), "zip bomb"),
        (b"PK\x03\x04 not really a zip", "not a valid zip"),
    ],
    ids=["symlink", "char-device", "fifo", "absolute", "dotdot", "bomb", "corrupt"],
)
def test_hostile_zip_uploads_are_refused(api, archive, needle) -> None:
    _refused(*api, _files(("good.zip", archive)), needle)


def test_an_archive_over_the_size_cap_across_many_members_is_stopped_while_inflating(api) -> None:
    members = [("good/SKILL.md", GOOD_MD)] + [(f"good/part{i}.bin", os.urandom(40_000) + b"\0" * (4 * 1024 * 1024)) for i in range(9)]
    _refused(*api, _files(("good.zip", _zip(*members))), "inflates past")


def test_another_principals_skill_is_not_found(tmp_path: Path) -> None:
    store = SkillStore(tmp_path / "skills")
    row, _ = store.create("alice", "good", "A fine skill.", [("SKILL.md", 0o644, GOOD_MD)], None)
    app = Starlette(routes=skills_routes(lambda: store, lambda request: "mallory"))
    with TestClient(app) as client:
        for method, path in [("GET", f"/v1/skills/{row.id}"), ("DELETE", f"/v1/skills/{row.id}"),
                             ("GET", f"/v1/skills/{row.id}/versions"),
                             ("GET", f"/v1/skills/{row.id}/versions/{row.latest_version_id}/content")]:
            response = client.request(method, path)
            assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
        assert client.get("/v1/skills").json()["data"] == []
    assert store.get(row.id, "alice").id == row.id
