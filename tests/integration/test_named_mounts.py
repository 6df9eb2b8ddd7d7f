"""Named mounts (issue 17 item 1): MCP clients choose, by name, among host folders the operator
declared; never a host path, fixed per sandbox, unknown names and late changes refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mcp_codeexec.config import load_settings
from tests.integration.conftest import make_settings
from tests.support.servers import http_server, mcp_client, remove_installation

pytestmark = pytest.mark.anyio
KEY = "io.mcp-codeexec/mounts"
GVISOR = (os.environ.get("MCP_CODEEXEC_RUNTIME") or "runc") == "runsc"


@pytest.fixture
def declared(tmp_path: Path, docker_engine: None):
    root = tmp_path / "host"
    for name in ("src", "data"):
        (root / name).mkdir(parents=True)
        (root / name / "hello.txt").write_text(f"from {name}\n")
    s = make_settings(tmp_path, allowed_mount_roots=[str(root)],
                      named_mounts=[f"src={root / 'src'}", f"data={root / 'data'}:/mnt/data"])
    yield s
    remove_installation(s)


async def bash(client, command: str, meta=None, **extra):
    return await client.call_tool("bash_code_execution", {"command": command, **extra}, meta=meta)


@pytest.mark.skipif(GVISOR, reason="gVisor 2022 build: host-folder binds fail with EINVAL on this host (see test_mounts.py)")
async def test_a_session_gets_the_named_mounts_its_first_call_selects_and_keeps_them(declared):
    async with mcp_client("memory", declared) as client:
        first = await bash(client, "cat /workspace/src/hello.txt; test -e /mnt/data; echo $?", meta={KEY: ["src"]})
        assert first.structured_content["stdout"] == "from src\n1\n", first.structured_content
        again = await bash(client, "cat /workspace/src/hello.txt", meta={KEY: ["src"]})  # same selection: fine
        assert again.structured_content["stdout"] == "from src\n"
        later = await bash(client, "true", meta={KEY: ["data"]})  # not what the sandbox was made with
        assert later.is_error and later.structured_content["error_code"] == "invalid_tool_input"
        assert "fixed when it is created" in later.content[0].text
        ro = await bash(client, "echo x > /workspace/src/new.txt")
        assert ro.structured_content["return_code"] != 0  # read-only unless the operator said rw
        made = first.meta["container"]["id"]
    async with mcp_client("memory", declared) as other:  # a new stdio session would resume `made`: not without data
        both = await bash(other, "cat /workspace/src/hello.txt /mnt/data/hello.txt", meta={KEY: ["src", "data"]})
        assert both.structured_content["stdout"] == "from src\nfrom data\n"
        assert both.meta["container"]["id"] != made
    async with mcp_client("memory", declared.model_copy(update={"resume_sandbox": False})) as plain:
        none = await bash(plain, "test -e /workspace/src || test -e /mnt/data; echo $?")
        assert none.structured_content["stdout"] == "1\n"  # nothing selected: no host folder


async def test_unknown_names_and_host_paths_in_the_selection_are_refused_naming_the_declared_ones(declared):
    async with mcp_client("memory", declared) as client:
        for value in (["nope"], ["/etc"], [str(declared.allowed_mount_roots[0])], "src", [1]):
            result = await bash(client, "true", meta={KEY: value})
            assert result.is_error and result.structured_content["error_code"] == "invalid_tool_input", value
            text = result.content[0].text
            assert ("declared data, src" in text) or ("list of mount names" in text), text


def test_named_mounts_are_checked_at_start_up_like_mounts(tmp_path: Path):
    root, outside = tmp_path / "r", tmp_path / "o"
    root.mkdir()
    outside.mkdir()
    for bad, words in (([f"x={outside}"], "outside"), (["=/tmp"], "NAME="), ([f"a={root}", f"a={root}"], "twice"),
                       (["x=/"], "root")):
        with pytest.raises(ValueError, match=words):
            load_settings(data_dir=str(tmp_path / "d"), allowed_mount_roots=[str(root)], named_mounts=bad, config_file=None)


def test_per_principal_limits_name_declared_mounts_and_principals(tmp_path: Path):
    root = tmp_path / "r"
    (root / "src").mkdir(parents=True)
    base = {"data_dir": str(tmp_path / "d"), "allowed_mount_roots": [str(root)],
            "named_mounts": [f"src={root / 'src'}"], "config_file": None}
    for limits, words in (({"nope": ["alice"]}, "not one of the named_mounts"), ({"src": [" "]}, "non-empty")):
        with pytest.raises(ValueError, match=words):
            load_settings(**base, named_mount_principals=limits)


@pytest.fixture
def per_principal(tmp_path: Path, docker_engine: None):
    root = tmp_path / "host"
    for name in ("src", "data", "shared"):
        (root / name).mkdir(parents=True)
        (root / name / "hello.txt").write_text(f"from {name}\n")
    s = make_settings(tmp_path, allowed_mount_roots=[str(root)],
                      named_mounts=[f"src={root / 'src'}", f"data={root / 'data'}:/mnt/data", f"shared={root / 'shared'}"],
                      named_mount_principals={"src": ["alice"], "data": ["bob"]})
    yield s, root
    remove_installation(s)


@pytest.mark.skipif(GVISOR, reason="gVisor 2022 build: host-folder binds fail with EINVAL on this host (see test_mounts.py)")
async def test_each_http_principal_chooses_only_the_named_mounts_allowed_to_it(per_principal):
    settings, root = per_principal
    tokens = {"alice": "tok-alice-0123456789abcdef", "bob": "tok-bob-0123456789abcdef00"}
    with http_server(settings, token=",".join(f"{p}:{t}" for p, t in tokens.items())) as url:
        async with mcp_client("http", settings, base_url=url, token=tokens["bob"]) as bob:
            refused = await bash(bob, "true", meta={KEY: ["src"]})  # alice's
            assert refused.is_error and refused.structured_content["error_code"] == "invalid_tool_input"
            text = refused.content[0].text
            assert "declared data, shared for principal 'bob'" in text, text
            assert str(root) not in text
            mixed = await bash(bob, "true", meta={KEY: ["shared", "nope"]})  # unknown and not-allowed read alike
            assert mixed.content[0].text == text.replace("'src'", "'nope'")
            ok = await bash(bob, "cat /mnt/data/hello.txt /workspace/shared/hello.txt", meta={KEY: ["data", "shared"]})
            assert ok.structured_content["stdout"] == "from data\nfrom shared\n", ok.structured_content
        async with mcp_client("http", settings, base_url=url, token=tokens["alice"]) as alice:
            refused = await bash(alice, "true", meta={KEY: ["src", "data"]})  # bob's
            text = refused.content[0].text
            assert refused.is_error and "declared shared, src for principal 'alice'" in text, text
            assert str(root) not in text
            ok = await bash(alice, "cat /workspace/src/hello.txt; test -e /mnt/data; echo $?", meta={KEY: ["src"]})
            assert ok.structured_content["stdout"] == "from src\n1\n", ok.structured_content
    async with mcp_client("memory", settings.model_copy(update={"resume_sandbox": False})) as local:
        every = await bash(local, "cat /workspace/src/hello.txt /mnt/data/hello.txt", meta={KEY: ["src", "data"]})
        assert every.structured_content["stdout"] == "from src\nfrom data\n"  # the local user may choose all
