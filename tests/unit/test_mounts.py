"""Mount specs and their host-side checks (no Docker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_codeexec.config import load_settings
from mcp_codeexec.mounts import MountError, MountSpec, check_mount, decode, encode, parse_spec, resolve_all


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("/a/b", MountSpec("/a/b", None, False)),
        ("/a/b:ro", MountSpec("/a/b", None, False)),
        ("/a/b:rw", MountSpec("/a/b", None, True)),
        ("/a/b:/workspace/x", MountSpec("/a/b", "/workspace/x", False)),
        ("/a/b:/mnt/x:rw", MountSpec("/a/b", "/mnt/x", True)),
    ],
)
def test_a_spec_is_host_then_optional_sandbox_path_then_optional_mode(text: str, spec: MountSpec) -> None:
    assert parse_spec(text) == spec


@pytest.mark.parametrize("text", ["", ":rw", "/a:", "/a:/b:/c", "/a:/b:xx"])
def test_malformed_specs_are_refused(text: str) -> None:
    with pytest.raises(MountError):
        parse_spec(text)


def test_the_default_sandbox_path_is_workspace_and_the_folder_name(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    m = check_mount(parse_spec(str(tmp_path / "proj")), [tmp_path])
    assert (m.target, m.rw, m.host) == ("/workspace/proj", False, str(tmp_path / "proj"))
    assert decode(encode([m])) == [m]


@pytest.mark.parametrize("target", ["/etc/x", "/workspace", "/workspace/../etc", "relative", "/opt/codeexec/a"])
def test_sandbox_paths_outside_workspace_or_mnt_are_refused(tmp_path: Path, target: str) -> None:
    (tmp_path / "proj").mkdir()
    with pytest.raises(MountError, match="sandbox path"):
        check_mount(MountSpec(str(tmp_path / "proj"), target, False), [tmp_path])


def test_overlapping_sandbox_paths_and_relative_hosts_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(MountError, match="overlap"):
        resolve_all([f"{tmp_path / 'a'}:/mnt/x", f"{tmp_path / 'b'}:/mnt/x/y"], [tmp_path], None, None)
    with pytest.raises(MountError, match="absolute"):
        check_mount(parse_spec("a"), [tmp_path])


def test_roots_and_mounts_come_comma_separated_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "r1" / "x").mkdir(parents=True)
    (tmp_path / "r2").mkdir()
    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("MCP_CODEEXEC_ALLOWED_MOUNT_ROOTS", f"{tmp_path / 'r1'},{tmp_path / 'r2'}")
    monkeypatch.setenv("MCP_CODEEXEC_MOUNTS", f"{tmp_path / 'r1' / 'x'}:/mnt/x:rw")
    s = load_settings(data_dir=str(tmp_path / "data"))
    assert s.allowed_mount_roots == [tmp_path / "r1", tmp_path / "r2"]
    assert s.mounts == [f"{tmp_path / 'r1' / 'x'}:/mnt/x:rw"]


def test_mounts_and_images_come_as_lists_from_the_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "r" / "x").mkdir(parents=True)
    toml = tmp_path / "config.toml"
    toml.write_text(f'allowed_mount_roots = ["{tmp_path / "r"}"]\nmounts = ["{tmp_path / "r" / "x"}"]\n'
                    'images = ["data"]\nimage = "data"\n')
    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(toml))
    s = load_settings(data_dir=str(tmp_path / "data"))
    assert s.mounts == [str(tmp_path / "r" / "x")] and s.image == "data"
    with pytest.raises(ValueError, match="not one of the allowed derived images"):
        load_settings(data_dir=str(tmp_path / "data"), image="other")
