"""`mcp-codeexec serve` builds the sandbox image on first use, on a base found without any registry."""

from __future__ import annotations

from typing import Any

import docker
import pytest

from mcp_codeexec import image
from mcp_codeexec.image import DEBIAN_BASE, PYTHON_BASE, ImageError, ensure_image, image_tag, resolve_base


class FakeEngine:
    """The slice of docker.APIClient these functions use: which images exist. It has no pull."""

    def __init__(self, *present: str) -> None:
        self.present = set(present)

    def inspect_image(self, tag: str) -> dict[str, Any]:
        if tag not in self.present:
            raise docker.errors.ImageNotFound(tag)
        return {"Id": "sha256:" + "0" * 64}


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []

    def fake_build(target: str, base: str, ca: object, progress: bool, **kw: Any) -> str:
        calls.append((target, base))
        return image_tag(target)

    monkeypatch.setattr(image, "build_image", fake_build)
    return calls


def test_the_auto_base_is_the_python_image_only_when_it_is_already_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "ensure_base_debian", lambda progress=None, client=None: DEBIAN_BASE)
    assert resolve_base("auto", client=FakeEngine(PYTHON_BASE)) == PYTHON_BASE
    assert resolve_base("auto", client=FakeEngine()) == DEBIAN_BASE  # no registry asked: debootstrap instead
    assert resolve_base("python", client=FakeEngine()) == PYTHON_BASE


def test_a_missing_image_is_built_once_on_the_auto_base(builds: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]) -> None:
    assert ensure_image(None, client=FakeEngine()) == image_tag("full")
    assert builds == [("full", "auto")]
    assert "is not built yet; building it now" in capsys.readouterr().err


def test_a_present_image_a_custom_image_or_no_engine_builds_nothing(builds: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    assert ensure_image(None, client=FakeEngine(image_tag("full"))) is None
    assert ensure_image(None, client=FakeEngine(image_tag("minimal"))) is None  # the server uses the minimal one
    assert ensure_image("my-own-sandbox:1", client=FakeEngine()) is None

    def no_engine(client: object = None) -> object:
        raise ImageError("cannot reach the Docker engine")

    monkeypatch.setattr(image, "_api", no_engine)
    assert ensure_image(None) is None  # the server starts and says per call what is missing
    assert builds == []


def test_serve_stops_with_the_reason_when_the_first_use_build_fails(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys) -> None:
    from mcp_codeexec import cli

    def failing(image_name: str | None, *, base: str) -> None:
        raise ImageError("debootstrap is not installed")

    monkeypatch.setattr(image, "ensure_image", failing)
    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(tmp_path / "none.toml"))
    assert cli.main(["serve", "--data-dir", str(tmp_path)]) == 1
    assert "building the sandbox image failed: debootstrap is not installed" in capsys.readouterr().err
