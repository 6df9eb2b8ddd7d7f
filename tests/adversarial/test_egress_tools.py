"""`npm install` and `git clone https://…` under the egress allow-list (issue 17 item 2).

The default sandbox image has neither tool (it stays the hosted box), so this module derives one with
the project's own mechanism (`image build --from`, tests/fixtures/images/egress-tools/Dockerfile:
Debian's git, nodejs and npm), once, and removes it when the module ends. The stand-in (on an
internal network, as in test_egress.py: nothing leaves this machine, not even from the proxy) plays
an npm registry (a package document and its .tgz) and a git host over smart HTTP (`git http-backend`),
both over TLS under the stand-in's own CA, which the clients are given the way an operator gives a
company CA: NODE_EXTRA_CA_CERTS for npm, GIT_SSL_CAINFO for git. The clients find the proxy through
the usual variables the sandbox has (npm_config_https_proxy / HTTPS_PROXY, https_proxy).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from mcp_codeexec import egress
from mcp_codeexec.image import build_derived, derived_tag
from tests.adversarial.conftest import GVISOR, Sandbox, adversarial_settings, open_sandbox
from tests.support.egress_standin import StandIn, standin, tiny_npm_package
from tests.support.servers import remove_installation

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(GVISOR, reason='network = "allowlist" is refused under runsc (gVisor runs with --network=none)'),
]

NPM = "registry.npmjs.org"
GIT = "github.com"
REPO = "acme/tiny"
ALLOWED = [NPM, GIT]
DOCKERFILE = Path(__file__).parents[1] / "fixtures" / "images" / "egress-tools" / "Dockerfile"
NPM_FLAGS = "--no-audit --no-fund --no-update-notifier --fetch-retries=0"


@pytest.fixture(scope="module")
def tools_image(docker_engine: None) -> Iterator[str]:
    # Once per session (only this module uses it), and gone before later modules run: `doctor` and
    # `image ls` tests elsewhere see every derived image on the engine.
    name = f"egtools{secrets.token_hex(3)}"
    try:
        yield build_derived(name, dockerfile=DOCKERFILE, progress=False)
    finally:
        try:
            docker.from_env().images.remove(derived_tag(name), force=True)
        except docker.errors.ImageNotFound:
            pass


@pytest.fixture(scope="module")
def stand_in(tools_image: str) -> Iterator[StandIn]:
    with standin(tools_image, ALLOWED, files=tiny_npm_package(NPM), git_repo=REPO) as server:
        yield server


@pytest.fixture(scope="module")
async def box(tmp_path_factory: pytest.TempPathFactory, stand_in: StandIn, tools_image: str) -> AsyncIterator[Sandbox]:
    settings = adversarial_settings(
        tmp_path_factory.mktemp("egress-tools"), call_timeout=120.0, image=tools_image, network="allowlist",
        allow_hosts=ALLOWED, mirrors={name: stand_in.tls for name in ALLOWED}, egress_network=stand_in.network,
    )
    try:
        async with open_sandbox(settings, "egress-tools") as sandbox:
            await sandbox.edit(command="create", path="/workspace/ca.pem", file_text=stand_in.ca_pem())
            yield sandbox
    finally:
        remove_installation(settings)


def seen(stand_in: StandIn) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stand_in.requests()]


def proxy_log(box: Sandbox) -> list[str]:
    proxy = docker.from_env().containers.get(egress.PREFIX + str(box.container_id))
    return proxy.logs(stdout=True, stderr=False).decode().splitlines()


async def run(box: Sandbox, command: str) -> tuple[str, int]:
    result = await box.bash(command)
    content = result.structured_content
    return content["stdout"] + content["stderr"], content["return_code"]


async def test_npm_install_of_an_allowed_package_works_through_the_proxy(box: Sandbox, stand_in: StandIn) -> None:
    out, code = await run(box, f"mkdir -p /workspace/app && cd /workspace/app && "
                               f"NODE_EXTRA_CA_CERTS=/workspace/ca.pem npm install {NPM_FLAGS} tinynpm 2>&1 && "
                               "node -e 'console.log(require(\"tinynpm\"))'")
    assert code == 0 and out.strip().endswith("hello from tinynpm"), out
    requests = seen(stand_in)
    assert {"path": "/tinynpm", "host": NPM, "sni": NPM} in requests
    assert {"path": "/tinynpm/-/tinynpm-1.0.0.tgz", "host": NPM, "sni": NPM} in requests


async def test_git_clone_over_smart_https_of_an_allowed_host_works_through_the_proxy(box: Sandbox, stand_in: StandIn) -> None:
    out, code = await run(box, f"GIT_SSL_CAINFO=/workspace/ca.pem git clone -q https://{GIT}/{REPO}.git /workspace/tiny 2>&1 && "
                               "cat /workspace/tiny/README && git -C /workspace/tiny log --format=%s")
    assert code == 0 and out.split("\n")[-3:] == [f"hello from {REPO}", "first", ""], out
    requests = seen(stand_in)
    assert {"path": f"/{REPO}.git/info/refs?service=git-upload-pack", "host": GIT, "sni": GIT} in requests
    assert {"path": f"/{REPO}.git/git-upload-pack", "host": GIT, "sni": GIT, "method": "POST"} in requests  # smart, not dumb


async def test_without_the_servers_ca_npm_and_git_refuse_it_the_proxy_does_not_break_tls(box: Sandbox) -> None:
    # The proxy only tunnels (splices) TLS: the clients check the server's own certificate.
    out, code = await run(box, f"mkdir -p /tmp/noca && cd /tmp/noca && npm install {NPM_FLAGS} --cache /tmp/noca/.npm tinynpm 2>&1; "
                               "echo npm=$?; "
                               f"git clone -q https://{GIT}/{REPO}.git /tmp/noca/tiny 2>&1; echo git=$?")
    assert "npm=0" not in out and "git=0" not in out and code == 0, out
    assert "certificate" in out.lower(), out


async def test_npm_install_from_a_registry_not_on_the_list_fails_and_reaches_nothing(box: Sandbox, stand_in: StandIn) -> None:
    before, logged = len(seen(stand_in)), len(proxy_log(box))
    out, code = await run(box, f"mkdir -p /tmp/other && cd /tmp/other && NODE_EXTRA_CA_CERTS=/workspace/ca.pem "
                               f"npm install {NPM_FLAGS} --cache /tmp/other/.npm --registry https://registry.yarnpkg.com/ tinynpm 2>&1")
    assert code != 0 and "ERR!" in out, out
    lines = proxy_log(box)[logged:]
    assert any("TCP_DENIED" in line and "registry.yarnpkg.com" in line for line in lines), lines
    assert not any("HIER_DIRECT" in line for line in lines), lines
    assert len(seen(stand_in)) == before


async def test_git_clone_from_a_host_not_on_the_list_fails_and_reaches_nothing(box: Sandbox, stand_in: StandIn) -> None:
    before, logged = len(seen(stand_in)), len(proxy_log(box))
    out, code = await run(box, f"GIT_SSL_CAINFO=/workspace/ca.pem git clone -q https://gitlab.com/{REPO}.git /tmp/denied 2>&1")
    assert code != 0 and "fatal" in out, out
    lines = proxy_log(box)[logged:]
    assert any("TCP_DENIED" in line and "gitlab.com" in line for line in lines), lines
    assert not any("HIER_DIRECT" in line for line in lines), lines
    assert len(seen(stand_in)) == before


async def test_npm_and_git_told_to_skip_the_proxy_reach_nothing(box: Sandbox, stand_in: StandIn) -> None:
    # Proxy-bypass settings: with no route and no DNS there is no direct way, for either client.
    before = len(seen(stand_in))
    out, _ = await run(box, "cd /tmp && env -u npm_config_https_proxy -u npm_config_proxy -u HTTPS_PROXY -u https_proxy "
                            f"NO_PROXY='*' no_proxy='*' NODE_EXTRA_CA_CERTS=/workspace/ca.pem timeout 60 npm view {NPM_FLAGS} --cache /tmp/bypass-npm tinynpm version 2>&1; "
                            "echo npm=$?; env NO_PROXY='*' no_proxy='*' GIT_SSL_CAINFO=/workspace/ca.pem "
                            f"timeout 60 git -c http.proxy= clone -q https://{GIT}/{REPO}.git /tmp/bypass 2>&1; echo git=$?")
    assert "npm=0" not in out and "git=0" not in out, out
    assert len(seen(stand_in)) == before
