"""Release metadata agrees with itself: package version, server.json, CHANGELOG, Dockerfile."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from mcp_codeexec import __version__

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_is_the_same_everywhere_it_is_written() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    server = json.loads((ROOT / "server.json").read_text())
    assert project["version"] == __version__ == server["version"]
    assert [p["version"] for p in server["packages"]] == [__version__]
    assert f"## [{__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def test_server_json_follows_the_registry_rules() -> None:
    server = json.loads((ROOT / "server.json").read_text())
    assert re.fullmatch(r"[a-zA-Z0-9.-]+/[a-zA-Z0-9._-]+", server["name"])
    assert 1 <= len(server["description"]) <= 100
    [package] = server["packages"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert package["registryType"] == "pypi" and package["identifier"] == project["name"]
    assert package["transport"] == {"type": "stdio"} and package["runtimeHint"] == "uvx"
    assert [a["value"] for a in package["packageArguments"]] == ["serve"]
    assert "mcp-codeexec" in project["scripts"]
    for variable in package["environmentVariables"]:
        assert variable["name"] and variable["description"]


def test_the_server_dockerfile_serves_http_on_all_interfaces_without_the_loop_quota() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=", dockerfile, re.M) and "FROM ${BASE}" in dockerfile
    assert 'CMD ["serve", "--transport", "http", "--host", "0.0.0.0"]' in dockerfile
    assert "MCP_CODEEXEC_QUOTA=none" in dockerfile


def _commands(section: str) -> list[str]:
    """The lines of the fenced bash blocks in one README section."""
    readme = (ROOT / "README.md").read_text()
    body = readme.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", body, re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_the_readme_gives_one_set_up_command_and_one_test_command_which_ci_runs() -> None:
    assert _commands("Set up and run") == ["pip install . && mcp-codeexec serve"]
    assert _commands("Test") == ['pip install -e ".[test]" && python -m pytest']
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert 'pip install -e ".[test]" && python -m pytest' in ci
