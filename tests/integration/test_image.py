"""The full sandbox image: every SPEC §1 library and CLI tool imported/found and used, by
sandbox/check_image.py run inside the image under the server's constraints.

Builds are slow (minutes cold), so the image already tagged for this version is used when present
and built otherwise (base from $MCP_CODEEXEC_IMAGE_BASE, else the official Python image when it
is present locally, else `debian`, i.e. debootstrap). Runs alone with
`python -m pytest tests/integration/test_image.py`.
"""

from __future__ import annotations

import ast
import io
import os

import docker
import pytest

from mcp_codeexec import __version__, image

# A cold build takes minutes: the fixture that may build runs under the module's timeout.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def api(docker_engine: None):
    client = docker.from_env(timeout=600)
    try:
        yield client.api
    finally:
        client.close()


def _base_for_build(api) -> str:
    chosen = os.environ.get("MCP_CODEEXEC_IMAGE_BASE")
    if chosen:
        return chosen
    return "python" if image.image_exists(image.PYTHON_BASE, api) else "debian"


@pytest.fixture(scope="module")
def full_image(api) -> str:
    tag = image.image_tag("full")
    if not image.image_exists(tag, api):
        image.build_image("full", base=_base_for_build(api), progress=True, client=api)
    return tag


def test_full_image_passes_the_image_check(full_image: str, api) -> None:
    out = io.StringIO()
    ok = image.check_image(full_image, out=out, client=api)
    report = out.getvalue()
    print(report)
    failures = [line for line in report.splitlines() if line.startswith("FAIL ")]
    assert ok, "image check failed:\n" + "\n".join(failures or report.splitlines()[-5:])
    assert "OK python 3.11." in report
    for dist, _module in _libraries():
        assert f"OK import:{dist} " in report


def test_full_image_is_labelled_and_runs_as_the_sandbox_user(full_image: str, api) -> None:
    config = api.inspect_image(full_image)["Config"]
    assert config["Labels"]["io.mcp-codeexec.version"] == __version__
    assert config["Labels"]["io.mcp-codeexec.target"] == "full"
    assert config["User"] == "1000:1000"
    assert config["WorkingDir"] == "/workspace"
    assert config["Entrypoint"] == ["python3", "-I", "/opt/codeexec/agent.py"]
    assert any(e.startswith("PATH=/opt/venv/bin:") for e in config["Env"])


def test_full_image_ships_no_compiler(full_image: str, api) -> None:
    out = _run(
        api,
        full_image,
        "for t in gcc cc pkg-config; do command -v $t || true; done; ls /usr/include/cairo 2>/dev/null || true",
    )
    assert out.strip() == ""


def test_image_tags_follow_the_package_version() -> None:
    assert image.image_tag() == f"{image.IMAGE_REPO}:{__version__}"
    assert image.image_tag("minimal") == f"{image.IMAGE_REPO}:{__version__}-minimal"


def _run(api, tag: str, script: str) -> str:
    container = api.create_container(
        tag,
        entrypoint=["bash", "-c", script],
        network_disabled=True,
        host_config=api.create_host_config(network_mode="none", read_only=True, tmpfs={"/tmp": ""}),
        labels={image.CHECK_LABEL: "test"},
    )
    try:
        api.start(container)
        api.wait(container, timeout=120)
        return api.logs(container, stdout=True, stderr=True).decode("utf-8", "replace")
    finally:
        api.remove_container(container, force=True)


def _libraries() -> list[tuple[str, str]]:
    """check_image.py's LIBRARIES list, read without running the script."""
    tree = ast.parse((image.sandbox_dir() / "check_image.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "LIBRARIES" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("LIBRARIES not found in check_image.py")
