"""Derived images: `image build --name NAME` (--extra-requirements / --from) on the sandbox image.

The extra requirement is a wheel this test makes itself (no index is asked); the builds add one
small layer each. Every image made here is removed at the end.
"""

from __future__ import annotations

import io
import secrets
import zipfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from mcp_codeexec import Sandbox
from mcp_codeexec.image import ImageError, build_derived, check_image, derived_tag, image_exists, list_images, main
from tests.integration.conftest import make_settings
from tests.support.servers import remove_installation

pytestmark = pytest.mark.anyio


def make_wheel(folder: Path) -> str:
    """A pure-Python wheel `codeexec_tiny` (module `codeexec_tiny`, VALUE = 42)."""
    name = "codeexec_tiny-0.1-py3-none-any.whl"
    dist = "codeexec_tiny-0.1.dist-info"
    files = {
        "codeexec_tiny/__init__.py": "VALUE = 42\n",
        f"{dist}/METADATA": "Metadata-Version: 2.1\nName: codeexec-tiny\nVersion: 0.1\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{p},,\n" for p in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(folder / name, "w") as whl:
        for path, text in files.items():
            whl.writestr(path, text)
    return name


@pytest.fixture
def names(docker_engine: None) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    client = docker.from_env()
    for name in made:
        try:
            client.images.remove(derived_tag(name), force=True)
        except docker.errors.ImageNotFound:
            pass
    client.close()


def new_name(names: list[str]) -> str:
    names.append(f"t{secrets.token_hex(4)}")
    return names[-1]


async def test_extra_requirements_make_a_named_image_that_passes_the_check_and_runs_sandboxes(
    tmp_path: Path, names: list[str]
) -> None:
    ctx = tmp_path / "extra"
    ctx.mkdir()
    wheel = make_wheel(ctx)
    (ctx / "requirements.txt").write_text(f"--no-index\n./{wheel}\n")
    name = new_name(names)
    tag = build_derived(name, requirements=ctx / "requirements.txt", progress=False)
    assert tag == derived_tag(name) and tag.endswith(f"-{name}")
    row = next(r for r in list_images() if r["tag"] == tag)
    assert row["name"] == name and row["from"] == "mcp-codeexec-sandbox:" + tag.split(":")[1].rsplit("-", 1)[0]

    out = io.StringIO()
    assert check_image(tag, out=out), out.getvalue()[-2000:]

    settings = make_settings(tmp_path, image=name, images=[name])
    try:
        async with Sandbox(settings) as sb:
            ran = await sb.bash("id -u; python3 -c 'import codeexec_tiny; print(codeexec_tiny.VALUE)'")
            assert (ran.stdout, ran.return_code) == ("1000\n42\n", 0), ran  # type: ignore[union-attr]
    finally:
        remove_installation(settings)


@pytest.mark.parametrize(
    ("tail", "why"),
    [
        ("USER root\n", "USER is 'root'"),
        ('ENTRYPOINT ["bash"]\n', "ENTRYPOINT is"),
        ("USER 0\nRUN echo '# changed' >> /opt/codeexec/agent.py\nUSER 1000:1000\n", "agent.py differs"),
    ],
    ids=["user", "entrypoint", "agent"],
)
def test_a_dockerfile_that_changes_what_the_sandbox_relies_on_is_refused_and_removed(
    tmp_path: Path, names: list[str], tail: str, why: str
) -> None:
    (tmp_path / "Dockerfile").write_text("ARG SANDBOX_IMAGE\nFROM ${SANDBOX_IMAGE}\n" + tail)
    name = new_name(names)
    with pytest.raises(ImageError, match=why):
        build_derived(name, dockerfile=tmp_path / "Dockerfile", progress=False)
    assert not image_exists(derived_tag(name))


def test_the_cli_builds_from_a_dockerfile_and_says_why_one_is_refused(
    tmp_path: Path, names: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "hello.txt").write_text("hi\n")
    (good / "Dockerfile").write_text("ARG SANDBOX_IMAGE\nFROM ${SANDBOX_IMAGE}\nCOPY hello.txt /opt/hello.txt\n")
    name = new_name(names)
    assert main(["build", "--name", name, "--from", str(good / "Dockerfile")]) == 0
    assert capsys.readouterr().out.strip() == derived_tag(name)
    assert main(["ls"]) == 0
    assert name in capsys.readouterr().out

    (tmp_path / "Dockerfile").write_text("FROM mcp-codeexec-sandbox:0.1.0\n")
    assert main(["build", "--name", new_name(names), "--from", str(tmp_path / "Dockerfile")]) == 1
    assert "FROM ${SANDBOX_IMAGE}" in capsys.readouterr().err
    assert main(["check", "--name", "nosuchimage"]) == 1
