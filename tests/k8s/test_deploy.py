"""The deployment manifests on the local cluster: deploy/kubernetes (base) with overlays/local-cluster,
applied by `kubectl apply -k` (kubectl 1.20, `cluster.sh kubectl`), run the server image built from the
top-level Dockerfile as a Deployment of two replicas with the manifests' ServiceAccount and Roles, a
connection Secret to PostgreSQL (on the host's loopback: this cluster has no registry to pull one
from), and the sandbox namespace. A real MCP client talks to each replica: the tools, a bash call
whose sandbox pod the server makes in the sandbox namespace through its in-cluster service account,
and the same container used through the other replica. Everything the test made is removed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_codeexec.engines.base import installation_label
from mcp_codeexec.engines.kubernetes import L_ID, L_INSTANCE, MANAGED_BY, MANAGER
from mcp_codeexec.image import DEBIAN_BASE, find_ca_bundle
from tests.support.oracle import assert_hosted_shape
from tests.support.postgres import pg_bindir, postgres_cluster

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "kubernetes" / "overlays" / "local-cluster"
IMAGE = "mcp-codeexec:local-test"  # the overlay's `images:` entry
SERVER_NS, SANDBOX_NS = "mcp-codeexec", "mcp-codeexec-sandboxes"  # the base's namespaces
SELECTOR = "app.kubernetes.io/name=mcp-codeexec"
INSTANCE = installation_label(Path("/data"))  # the replicas' MCP_CODEEXEC_DATA_DIR: their sandboxes' label
CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "mcp_codeexec", "sandbox")


def kubectl_path() -> str:
    found = os.environ.get("MCP_CODEEXEC_KUBECTL")
    if found:
        return found
    out = subprocess.run([str(ROOT / "tests" / "k8s" / "cluster.sh"), "kubectl"], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, f"cluster.sh kubectl: {out.stderr[-2000:]}"
    return out.stdout.strip().splitlines()[-1]


class Kubectl:
    def __init__(self, kubeconfig: str) -> None:
        self.argv = [kubectl_path(), "--kubeconfig", kubeconfig]

    def __call__(self, *args: str, check: bool = True, timeout: float = 180) -> str:
        done = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if check:
            assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr[-3000:]}"
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json"))

    def namespaces(self) -> set[str]:
        return {ns["metadata"]["name"] for ns in self.json("get", "namespaces")["items"]}

    def wait_namespaces_gone(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while self.namespaces() & {SERVER_NS, SANDBOX_NS}:
            assert time.monotonic() < deadline, f"namespaces not gone: {self('get', 'all', '-A')}"
            time.sleep(0.5)


@pytest.fixture
def kubectl(kubeconfig: str) -> Kubectl:
    return Kubectl(kubeconfig)


def image_id(ref: str, fmt: str = "{{.Id}}") -> str:
    done = subprocess.run(["docker", "image", "inspect", "--format", fmt, ref], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def buildx() -> bool:
    return subprocess.run(["docker", "buildx", "version"], capture_output=True, check=False).returncode == 0


@pytest.fixture
def server_image() -> Iterator[str]:
    """The top-level Dockerfile built on the node's engine as the overlay's image; removed after, unless
    it was there. BuildKit when the CLI has buildx (its cache outlives the tag: an unchanged tree
    rebuilds in seconds), else the classic builder (Debian's docker.io; ~50 s from scratch here)."""
    if shutil.which("docker") is None:
        pytest.fail("the docker CLI is needed to build the server image")
    had = image_id(IMAGE)
    bundle = find_ca_bundle() or Path("/etc/ssl/certs/ca-certificates.crt")
    with tempfile.TemporaryDirectory(prefix="mcp-codeexec-image-") as ctx:
        for name in CONTEXT:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, Path(ctx) / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "ca-bundle.crt"))
            else:
                shutil.copy2(src, Path(ctx) / name)
        if bundle.is_file():  # builds here reach PyPI only through the machine's TLS-intercepting proxy
            shutil.copy(bundle, Path(ctx) / "ca-bundle.crt")
        t0 = time.monotonic()
        built = subprocess.run(["docker", "build", "-q", "--build-arg", f"BASE={DEBIAN_BASE}", "-t", IMAGE, ctx],
                               env={**os.environ, "DOCKER_BUILDKIT": "1" if buildx() else "0"}, capture_output=True,
                               text=True, timeout=1200,
                               check=False)
        assert built.returncode == 0, f"building {IMAGE} failed: {built.stderr[-4000:]}"
        print(f"server image built in {time.monotonic() - t0:.1f} s")
    if had and had != image_id(IMAGE) and image_id(had, "{{len .RepoTags}}") == "0":
        subprocess.run(["docker", "image", "rm", had], capture_output=True, check=False)  # the build untagged it
    try:
        yield IMAGE
    finally:
        if not had:
            subprocess.run(["docker", "image", "rm", IMAGE], capture_output=True, check=False)


@pytest.fixture
def host_postgres() -> Iterator[str]:
    """PostgreSQL on the host's 127.0.0.1 (initdb + pg_ctl as the postgres user), which the replicas
    reach through the host network; stopped and removed after."""
    if pg_bindir() is None:
        pytest.fail("PostgreSQL is not installed (apt-get install -y postgresql)")
    with postgres_cluster() as url:
        yield url


@contextlib.contextmanager
def deployed(kubectl: Kubectl, database_url: str, tokens: str) -> Iterator[None]:
    if kubectl.namespaces() & {SERVER_NS, SANDBOX_NS}:  # an interrupted run's: the namespaces are this test's
        kubectl("delete", "namespace", "--ignore-not-found", "--wait=false", SERVER_NS, SANDBOX_NS)
        kubectl.wait_namespaces_gone()
    try:
        # The operator's order (docs/KUBERNETES.md): the namespaces, the Secret, then everything; the pods
        # never start without their Secret.
        kubectl("apply", "-f", str(OVERLAY.parents[1] / "base" / "namespace.yaml"))
        kubectl("-n", SERVER_NS, "create", "secret", "generic", "mcp-codeexec",
                f"--from-literal=database-url={database_url}", f"--from-literal=auth-tokens={tokens}")
        kubectl("apply", "-k", str(OVERLAY))
        yield
    except BaseException:
        print(diagnostics(kubectl))
        raise
    finally:
        kubectl("delete", "-k", str(OVERLAY), "--ignore-not-found", "--wait=false", check=False)
        kubectl("delete", "namespace", "--ignore-not-found", "--wait=false", SERVER_NS, SANDBOX_NS, check=False)
        kubectl.wait_namespaces_gone()


def diagnostics(kubectl: Kubectl) -> str:
    """What a failure leaves to read before the namespaces go: the objects and each replica's log tail."""
    out = [kubectl("get", "pods,deployments,leases", "-n", SERVER_NS, "-o", "wide", check=False),
           kubectl("get", "pods", "-n", SANDBOX_NS, "-o", "wide", check=False)]
    for name in kubectl("-n", SERVER_NS, "get", "pods", "-l", SELECTOR, "-o", "name", check=False).split():
        out.append(f"--- {name}\n" + kubectl("-n", SERVER_NS, "logs", "--tail=60", name, check=False))
    return "\n".join(out)


def replica_ports(kubectl: Kubectl) -> dict[str, int]:
    """Each ready replica's port, from its first log line (hostNetwork: each takes its own)."""
    pods = kubectl.json("-n", SERVER_NS, "get", "pods", "-l", SELECTOR)["items"]
    ports = {}
    for pod in pods:
        assert pod["spec"]["hostNetwork"] is True and pod["spec"]["serviceAccountName"] == "mcp-codeexec"
        [status] = pod["status"]["containerStatuses"]
        assert status["ready"] and status["image"].endswith(IMAGE), status
        logs = kubectl("-n", SERVER_NS, "logs", pod["metadata"]["name"])
        found = re.search(r"^mcp-codeexec listening on 127\.0\.0\.1:(\d+)$", logs, re.MULTILINE)
        assert found, logs[-2000:]
        ports[pod["metadata"]["name"]] = int(found.group(1))
    return ports


async def test_the_manifests_deploy_two_replicas_that_serve_an_mcp_client_with_sandboxes_in_the_cluster(
        kubectl: Kubectl, server_image: str, host_postgres: str) -> None:
    token = secrets.token_urlsafe(24)
    t0 = time.monotonic()
    with deployed(kubectl, host_postgres, f"alice:{token}"):
        kubectl("-n", SERVER_NS, "rollout", "status", "deployment/mcp-codeexec", "--timeout=240s", timeout=260)
        ready = time.monotonic() - t0
        ports = replica_ports(kubectl)
        assert len(ports) == 2 and len(set(ports.values())) == 2, ports
        (first, port_a), (second, port_b) = sorted(ports.items())

        async with httpx2.AsyncClient(timeout=httpx2.Timeout(30)) as anonymous:
            for port in (port_a, port_b):
                assert (await anonymous.post(f"http://127.0.0.1:{port}/mcp", json={})).status_code == 401

        headers = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(120)) as http:
            async with Client(streamable_http_client(f"http://127.0.0.1:{port_a}/mcp", http_client=http)) as mcp:
                tools = [tool.name for tool in (await mcp.list_tools()).tools]
                assert tools == ["bash_code_execution", "text_editor_code_execution", "code_execution"]
                made = await mcp.call_tool("bash_code_execution", {
                    "command": "echo made-through-a > /workspace/mark; id -u; ls /var/run/secrets 2>&1 | head -1"})
                assert_hosted_shape(made.structured_content, "bash_code_execution")
                assert made.structured_content["return_code"] == 0, made.structured_content
                # the sandbox runs as its own user and has no service account token (automount off)
                assert made.structured_content["stdout"].startswith("1000\n"), made.structured_content
                assert "No such file" in made.structured_content["stdout"], made.structured_content
                cid = made.meta["container"]["id"]

            # the server made the sandbox pod in the sandbox namespace, with the installation's label
            pods = kubectl.json("-n", SANDBOX_NS, "get", "pods", "-l", f"{L_ID}={cid}")["items"]
            assert len(pods) == 1 and pods[0]["metadata"]["labels"][L_INSTANCE] == INSTANCE, pods
            assert pods[0]["status"]["phase"] == "Running" and not pods[0]["spec"].get("hostNetwork"), pods[0]["status"]

            async with Client(streamable_http_client(f"http://127.0.0.1:{port_b}/mcp", http_client=http)) as mcp:
                used = await mcp.call_tool("bash_code_execution", {"command": "cat /workspace/mark", "container_id": cid})
                assert_hosted_shape(used.structured_content, "bash_code_execution")
                assert used.structured_content["stdout"] == "made-through-a\n", used.structured_content
                assert used.meta["container"]["id"] == cid
                edited = await mcp.call_tool("text_editor_code_execution", {
                    "command": "view", "path": "/workspace/mark", "container_id": cid})
                assert_hosted_shape(edited.structured_content, "text_editor_code_execution")

        # one leader among the replicas: the Lease in the server's namespace names one holder
        leases = kubectl.json("-n", SERVER_NS, "get", "leases")["items"]
        assert len(leases) == 1 and leases[0]["spec"].get("holderIdentity"), leases
        served = time.monotonic() - t0
    gone = time.monotonic() - t0
    print(f"replicas ready after {ready:.1f} s ({first}, {second}); served by {served:.1f} s; removed by {gone:.1f} s")

    left = kubectl.json("get", "pods,pvc,networkpolicies", "-A", "-l", f"{MANAGED_BY}={MANAGER},{L_INSTANCE}={INSTANCE}")
    assert left["items"] == [], left
