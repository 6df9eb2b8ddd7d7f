"""The egress allow-list (``network = "allowlist"``): a sandbox that reaches allowed host NAMES only.

Shape, per sandbox ``cid``:

* an internal Docker network ``mcp-codeexec-egress-<cid>`` (``internal: true``; the host's bridge has
  no address on it, ``inhibit_ipv4``), on which the sandbox is the only client;
* a proxy container on that network and on ``egress_network`` (default ``bridge``): Debian's squid,
  read-only, as the unprivileged ``proxy`` user, without capabilities. It tunnels ``CONNECT name:443``
  for the listed names only, refuses IP literals, other ports and plain HTTP, and peeks at the TLS
  ClientHello so the SNI must be the CONNECT name (no fronting through an allowed host);
* after the sandbox starts, a one-shot helper in the sandbox's network namespace deletes the default
  route Docker gives even internal networks, so the sandbox has one on-link route (to its proxy) and
  no way out; its resolver forwards only to its own loopback (``dns 127.0.0.1``), so no DNS either:
  the one name it can look up is its proxy's container name, which Docker answers from its own records.

Names are resolved here, once, when the proxy is made (public addresses only) and pinned in squid's
``hosts_file``; squid itself has no name server. So a rebinding answer can never reach the proxy, and a
name not on the list has no address at all. A mirror (``mirrors = {name = "ADDRESS:PORT"}``) replaces
a name's address and port: a company mirror, and the tests' stand-in servers. A mirror on 443 is the
name's pinned address; one on another port gets a loopback address of the proxy container instead,
where a relay (Debian's socat) listening on :443 forwards to ADDRESS:PORT (squid tunnels CONNECT to
the CONNECT port and has no port rewriting of its own).

Not supported under runsc: this project registers gVisor with ``--network=none``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import docker
import requests

from .errors import Unavailable

log = logging.getLogger(__name__)

PROXY_PORT = 3128
PREFIX = "mcp-codeexec-egress-"
L_EGRESS = "io.mcp-codeexec.egress"
L_INSTALL = "io.mcp-codeexec.egress-install"  # not the sandboxes' key: these are not sandboxes
SANDBOX_PREFIX = "mcp-codeexec-"
READY_SECONDS = 20.0
SWEEP_GRACE_SECONDS = 60.0  # a create in progress has its network and proxy before its sandbox

# Debian's squid (the OpenSSL build: SslBump peek reads the SNI) on the project's debootstrap base.
PROXY_DOCKERFILE = """\
FROM {base}
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends squid-openssl openssl iproute2 socat \\
 && rm -rf /var/lib/apt/lists/* \\
 && squid -v | grep -q -- --with-openssl
USER proxy
# The config arrives in the environment (the root filesystem is read-only); the key pair only lets
# squid peek at ClientHellos (it never terminates TLS), so a throwaway one made at start is enough.
# EGRESS_RELAYS: "LOOPBACK_ADDRESS ADDRESS:PORT" lines, a relay each for mirrors on ports other than 443.
ENTRYPOINT ["/bin/sh", "-c", "umask 077 && printf '%s\\\\n' \\"$EGRESS_RELAYS\\" | while read -r at to; do [ -n \\"$to\\" ] && socat TCP-LISTEN:443,bind=$at,reuseaddr,fork,backlog=64 TCP:$to,connect-timeout=15 & done; n=$(printf '%s\\\\n' \\"$EGRESS_RELAYS\\" | grep -c .); i=0; while [ $(ss -Hltn 'sport = :443' | wc -l) -lt $n ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; printf '%s\\\\n' \\"$EGRESS_SQUID_CONF\\" > /tmp/squid.conf && printf '%s\\\\n' \\"$EGRESS_HOSTS\\" > /tmp/hosts && openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=mcp-codeexec-egress -days 3650 -keyout /tmp/key.pem -out /tmp/cert.pem 2>/dev/null && exec /usr/sbin/squid -N -f /tmp/squid.conf"]
LABEL io.mcp-codeexec.egress-image=1
"""

_LABEL_RE = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME_RE = re.compile(rf"^{_LABEL_RE}(?:\.{_LABEL_RE})+$")


class EgressError(ValueError):
    """A bad allow-list setting."""


def check_host(name: str) -> str:
    """An allowed host: an exact DNS name (no IP literal, wildcard, port or trailing dot)."""
    host = name.strip().lower()
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        raise EgressError(f"allow_hosts: {name!r} is an IP address; list host names (an address would bypass the name check)")
    if "*" in host or host.startswith("."):
        raise EgressError(f"allow_hosts: {name!r}: wildcards are not supported (each name is resolved and pinned once); list each host")
    if not _NAME_RE.match(host) or len(host) > 253 or host.replace(".", "").isdigit():
        raise EgressError(f"allow_hosts: {name!r} is not a host name (letters, digits, '-', dots; at least two labels)")
    return host


def parse_mirror(host: str, target: str) -> tuple[str, int]:
    """``ADDRESS:PORT`` (an IPv4 address and a TCP port; ``ADDRESS`` alone means :443) of a mirror
    serving TLS for ``host``. The sandbox still asks for ``host:443``; see ``relays`` for other ports."""
    addr, sep, port = target.strip().partition(":")
    try:
        ip = ipaddress.IPv4Address(addr)
        number = int(port) if sep else 443
    except ValueError:
        raise EgressError(f"mirrors: {host} = {target!r}: want ADDRESS:PORT (an IPv4 address and a port)") from None
    if not 0 < number < 65536:
        raise EgressError(f"mirrors: {host} = {target!r}: the port must be 1-65535")
    return str(ip), number


@dataclass(frozen=True)
class Policy:
    hosts: tuple[str, ...]
    mirrors: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    outside: str = "bridge"

    @classmethod
    def from_settings(cls, allow_hosts: Iterable[str], mirrors: Mapping[str, str], outside: str = "bridge") -> Policy:
        hosts = tuple(dict.fromkeys(check_host(h) for h in allow_hosts))
        parsed = {}
        for name, target in mirrors.items():
            host = check_host(name)
            if host not in hosts:
                raise EgressError(f"mirrors: {name!r} is not in allow_hosts (a mirror stands in for an allowed host)")
            parsed[host] = parse_mirror(host, target)
        return cls(hosts, parsed, outside)

    def digest(self) -> str:
        text = repr((self.hosts, sorted(self.mirrors.items()), self.outside))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def pin(policy: Policy, resolve: Any = None) -> dict[str, list[str]]:
    """Resolve each allowed, un-mirrored name once, here: its public IPv4 addresses. A name with
    any non-public answer is refused outright (a rebinding or internal name, not a partial pass)."""
    resolve = resolve or socket.getaddrinfo
    pins: dict[str, list[str]] = {}
    for host in policy.hosts:
        if host in policy.mirrors:
            continue
        try:
            infos = resolve(host, 443, socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            raise Unavailable(f"egress allow-list: cannot resolve allowed host {host}: {exc}") from exc
        addrs = list(dict.fromkeys(str(info[4][0]) for info in infos))
        bad = [a for a in addrs if not ipaddress.ip_address(a).is_global]
        if bad or not addrs:
            raise Unavailable(
                f"egress allow-list: allowed host {host} resolves to non-public address(es) {', '.join(bad) or '(none)'}; "
                "refused (map it with `mirrors` if it is an internal mirror)"
            )
        pins[host] = addrs
    return pins


def relays(policy: Policy) -> dict[str, tuple[str, str]]:
    """Mirrors on ports other than 443: host -> (loopback address in the proxy container, ADDRESS:PORT).
    squid connects to the CONNECT port (443) of the name's address and cannot rewrite the port (a
    cache_peer gets the CONNECT passed on, not tunnelled), so the name's address is a loopback one
    where a relay listens on :443 and forwards to the mirror: squid's checks (name, port 443, SNI) are
    unchanged, and the relay only ever reaches the one address and port the operator configured."""
    odd = sorted(host for host, (_, port) in policy.mirrors.items() if port != 443)
    first = ipaddress.IPv4Address("127.0.0.2")
    return {host: (str(first + i), ":".join(map(str, policy.mirrors[host]))) for i, host in enumerate(odd)}


def relay_lines(policy: Policy) -> str:
    return "\n".join(f"{at} {to}" for at, to in relays(policy).values())


def hosts_file(policy: Policy, pins: Mapping[str, list[str]]) -> str:
    """squid's only name table: the pinned public addresses, and each mirror's address for its name
    (its relay's loopback address when the mirror is on another port than 443)."""
    relayed = relays(policy)
    mirrored = {host: [relayed[host][0] if host in relayed else addr] for host, (addr, _) in policy.mirrors.items()}
    table = {**pins, **mirrored}
    return "\n".join(f"{addr} {host}" for host, addrs in table.items() for addr in addrs)


def squid_conf(policy: Policy) -> str:
    """squid.conf for ``policy``: CONNECT to :443 of listed names, SNI equal to the CONNECT name."""
    lines = [
        f"http_port {PROXY_PORT} ssl-bump tls-cert=/tmp/cert.pem tls-key=/tmp/key.pem generate-host-certificates=off",
        "pid_filename /tmp/squid.pid",
        "cache_log stdio:/dev/stderr",
        "access_log stdio:/dev/stdout",
        "cache_store_log none",
        "netdb_filename none",
        "pinger_enable off",
        "cache deny all",
        "cache_mem 4 MB",
        "coredump_dir /tmp",
        "shutdown_lifetime 1 seconds",
        "via off",
        "forwarded_for delete",
        "visible_hostname mcp-codeexec-egress",
        "client_db off",
        # No name server: the names were resolved and pinned by the server (hosts_file); anything else has no address.
        "dns_nameservers 127.0.0.1",
        "hosts_file /tmp/hosts",
        "dns_timeout 1 seconds",
        "connect_timeout 15 seconds",
        "acl CONNECT method CONNECT",
        "acl tls_port port 443",
        r"acl ip_literal dstdom_regex ^\[ ^[0-9.]+$ ^0x",
        "acl allowed dstdomain " + " ".join(policy.hosts),
        "http_access deny !CONNECT",
        "http_access deny ip_literal",
        "http_access deny !tls_port",
        "http_access deny !allowed",
        "http_access allow allowed",
        "http_access deny all",
        "acl step1 at_step SslBump1",
        # With SslBump on the port, squid confirms even a denied CONNECT ("200") and then answers
        # ERR_ACCESS_DENIED inside TLS under its throwaway certificate (a verifying client sees a
        # certificate error): nothing is sent upstream (HIER_NONE in its log).
        "ssl_bump peek step1",
    ]
    for i, host in enumerate(policy.hosts):
        lines += [
            f"acl host{i} dstdomain {host}",
            f"acl sni{i} ssl::server_name {host}",
            f"ssl_bump splice host{i} sni{i}",
        ]
    lines.append("ssl_bump terminate all")
    return "\n".join(lines)


def proxy_environment(proxy: str) -> dict[str, str]:
    """The variables pip, npm, git, curl and Python's urllib read for their proxy."""
    url = f"http://{proxy}:{PROXY_PORT}"
    local = "localhost,127.0.0.1,::1"
    env = {name: url for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "PIP_PROXY",
                                   "npm_config_proxy", "npm_config_https_proxy")}
    env.update(NO_PROXY=local, no_proxy=local)
    return env


def proxy_image_tag() -> str:
    from .image import image_tag

    # The recipe's digest in the tag: a changed Dockerfile never reuses an image built from the old one.
    recipe = hashlib.sha256(PROXY_DOCKERFILE.encode()).hexdigest()[:8]
    return f"mcp-codeexec-egress:{image_tag().rpartition(':')[2]}-{recipe}"


def ensure_proxy_image(client: docker.DockerClient, tag: str | None = None) -> str:
    """The proxy image, built (from the project's Debian base) when missing."""
    tag = tag or proxy_image_tag()
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    from .image import ImageError, ensure_base_debian

    try:
        base = ensure_base_debian(progress=False, client=client.api)
    except ImageError as exc:
        raise Unavailable(f"egress allow-list: the proxy image {tag} is missing and its base cannot be made: {exc}") from exc
    log.info("egress: building the proxy image %s from %s", tag, base)
    dockerfile = PROXY_DOCKERFILE.format(base=base).encode()
    try:
        client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True, forcerm=True, pull=False)
    except (docker.errors.BuildError, docker.errors.APIError) as exc:
        raise Unavailable(f"egress allow-list: building the proxy image {tag} failed: {exc}") from exc
    return tag


class Egress:
    """Makes, seals and removes the per-sandbox network and proxy of one allow-list policy."""

    def __init__(self, client: docker.DockerClient, policy: Policy, install: str, image: str | None = None) -> None:
        self.client = client
        self.policy = policy
        self.install = install
        self.image = image
        self._pins: dict[str, list[str]] | None = None

    def _labels(self, cid: str) -> dict[str, str]:
        return {L_EGRESS: cid, L_INSTALL: self.install}

    def prepare(self, cid: str) -> dict[str, Any]:
        """Before the sandbox is created: its network and running proxy. Returns the container
        keyword arguments that put the sandbox there (network, resolver, proxy variables)."""
        self.sweep()
        try:
            self.client.containers.get(SANDBOX_PREFIX + cid)
        except docker.errors.NotFound:  # a rebuilt sandbox: the pieces its lost container left
            self.release(cid)
        if self._pins is None:
            self._pins = pin(self.policy)
        self.image = ensure_proxy_image(self.client, self.image)
        name = PREFIX + cid
        try:
            net = self.client.networks.create(
                name, driver="bridge", internal=True, check_duplicate=True, labels=self._labels(cid),
                options={"com.docker.network.bridge.inhibit_ipv4": "true",
                         "com.docker.network.bridge.enable_icc": "true"},
            )
            proxy = self.client.containers.create(
                self.image, name=name, detach=True, user="proxy", read_only=True,
                tmpfs={"/tmp": "rw,nosuid,nodev,noexec,size=16m,mode=0700,uid=13,gid=13",
                       "/var/run/squid": "rw,nosuid,nodev,noexec,size=1m,uid=13,gid=13",
                       "/var/spool/squid": "rw,nosuid,nodev,noexec,size=1m,uid=13,gid=13"},
                cap_drop=["ALL"], security_opt=["no-new-privileges:true"], network=name, dns=["127.0.0.1"],
                mem_limit=128 * 2**20, memswap_limit=128 * 2**20, pids_limit=64, nano_cpus=int(0.5e9),
                environment={"EGRESS_SQUID_CONF": squid_conf(self.policy), "EGRESS_HOSTS": hosts_file(self.policy, self._pins),
                             "EGRESS_RELAYS": relay_lines(self.policy)},
                # The relays listen on :443 of the proxy's own loopback, as the unprivileged user.
                sysctls={"net.ipv4.ip_unprivileged_port_start": "443"} if relays(self.policy) else None,
                labels=self._labels(cid), restart_policy={"Name": "no"}, hostname="egress",
                log_config={"type": "json-file", "config": {"max-size": "1m", "max-file": "1"}},
            )
            self.client.networks.get(self.policy.outside).connect(proxy)
            proxy.start()
            self._ready(proxy, name)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            self.release(cid)
            raise Unavailable(f"egress allow-list: starting the proxy of sandbox {cid}: {exc}") from exc
        except BaseException:
            self.release(cid)
            raise
        del net
        # The proxy by its container name, which Docker's resolver answers from its own records on this
        # network (no forwarding): the address may change when the two are stopped and started again.
        return {"network_mode": name, "dns": ["127.0.0.1"], "dns_opt": ["timeout:1", "attempts:1"],
                "environment": proxy_environment(name)}

    @staticmethod
    def _starts(proxy: Any) -> int:
        """How many times squid has said it accepts connections (the log outlives restarts)."""
        return proxy.logs(stdout=False, stderr=True).decode(errors="replace").count("Accepting ")

    def _ready(self, proxy: Any, network: str, seen: int = 0) -> str:
        """Wait until squid accepts connections (once more than ``seen`` times); its address on ``network``."""
        deadline = time.monotonic() + READY_SECONDS
        while True:
            proxy.reload()
            logs = proxy.logs(stdout=False, stderr=True).decode(errors="replace")
            if logs.count("Accepting ") > seen:
                return str(proxy.attrs["NetworkSettings"]["Networks"][network]["IPAddress"])
            if proxy.status not in ("created", "running") or time.monotonic() > deadline:
                raise Unavailable(f"egress allow-list: the proxy did not start ({proxy.status}): {logs[-2000:]}")
            time.sleep(0.1)

    def seal(self, sandbox: Any) -> None:
        """After the sandbox (re)starts: delete the default route Docker adds even on internal
        networks, from a one-shot helper in the sandbox's network namespace (the sandbox itself has
        no CAP_NET_ADMIN). Refuses the sandbox if that did not leave it routeless."""
        script = "ip route del default 2>/dev/null; ip -6 route flush default 2>/dev/null; ip route show default | grep -q . && exit 3; exit 0"
        try:
            out = self.client.containers.run(
                self.image or proxy_image_tag(), ["-c", script], entrypoint="/bin/sh", user="0:0", remove=True,
                network_mode=f"container:{sandbox.id}", cap_drop=["ALL"], cap_add=["NET_ADMIN"],
                security_opt=["no-new-privileges:true"], read_only=True, pids_limit=16, mem_limit=32 * 2**20,
                labels={L_EGRESS: "seal", L_INSTALL: self.install}, log_config={"type": "none"}, stderr=True,
            )
        except (docker.errors.ContainerError, docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise Unavailable(f"egress allow-list: removing the sandbox's default route failed: {exc}") from exc
        del out

    def resume(self, cid: str, sandbox: Any) -> None:
        """A stopped sandbox started again: its proxy too, and its fresh namespace sealed again."""
        try:
            proxy = self.client.containers.get(PREFIX + cid)
            if proxy.status != "running":
                seen = self._starts(proxy)
                proxy.start()
                self._ready(proxy, PREFIX + cid, seen)
        except docker.errors.NotFound:
            log.warning("sandbox %s: its allow-list proxy is gone; it has no network until it is made again", cid)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise Unavailable(f"egress allow-list: starting the proxy of sandbox {cid}: {exc}") from exc
        self.seal(sandbox)

    def release(self, cid: str) -> None:
        """Remove the proxy and network of ``cid`` (idempotent)."""
        _release(self.client, cid)

    def sweep(self) -> list[str]:
        """Release the proxies and networks of this installation whose sandbox is gone (a pool
        container the engine auto-removed, a sandbox removed behind the server's back)."""
        return sweep_leftovers(self.client, self.install)

    @staticmethod
    def _older_than(net: Any, seconds: float) -> bool:
        from datetime import datetime

        created = str(net.attrs.get("Created", ""))[:26].rstrip("Z")
        try:
            when = datetime.fromisoformat(created).replace(tzinfo=UTC)
        except ValueError:
            return True
        return (datetime.now(UTC) - when).total_seconds() > seconds


def sweep_leftovers(client: docker.DockerClient, install: str) -> list[str]:
    """What ``Egress.sweep`` does, without a policy: every server of an installation runs it from
    its reaper, so proxies an allow-list server left are released by any later server."""
    released = []
    with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
        for net in client.networks.list(filters={"label": [f"{L_INSTALL}={install}", L_EGRESS]}):
            cid = net.attrs.get("Labels", {}).get(L_EGRESS, "")
            if not cid:
                continue
            try:
                client.containers.get(SANDBOX_PREFIX + cid)
            except docker.errors.NotFound:
                if Egress._older_than(net, SWEEP_GRACE_SECONDS):
                    _release(client, cid)
                    released.append(cid)
    return released


def _release(client: docker.DockerClient, cid: str) -> None:
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError, requests.exceptions.RequestException):
        client.containers.get(PREFIX + cid).remove(force=True)
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError, requests.exceptions.RequestException):
        client.networks.get(PREFIX + cid).remove()
