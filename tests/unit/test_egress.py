"""The egress allow-list's settings, pinning and proxy configuration (no Docker, no DNS)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from mcp_codeexec import egress
from mcp_codeexec.cli import _settings_from, build_parser
from mcp_codeexec.config import Settings, load_settings
from mcp_codeexec.errors import Unavailable


@pytest.fixture(autouse=True)
def no_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(tmp_path / "none.toml"))
    for name in ("NETWORK", "ALLOW_HOSTS", "MIRRORS", "RUNTIME"):
        monkeypatch.delenv(f"MCP_CODEEXEC_{name}", raising=False)


def settings(tmp_path: Path, **values: Any) -> Settings:
    return load_settings(data_dir=str(tmp_path), **values)


def test_the_default_sandbox_has_no_network_and_no_allow_list(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert s.network is False and s.allow_hosts == [] and s.mirrors == {}


def test_allowlist_comes_from_the_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "config.toml"
    toml.write_text('network = "allowlist"\nallow_hosts = ["pypi.org", "files.pythonhosted.org"]\n'
                    '[mirrors]\n"pypi.org" = "10.1.2.3:443"\n')
    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(toml))
    s = load_settings(data_dir=str(tmp_path))
    assert (s.network, s.allow_hosts, s.mirrors) == ("allowlist", ["pypi.org", "files.pythonhosted.org"], {"pypi.org": "10.1.2.3:443"})


def test_allowlist_comes_comma_separated_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_CODEEXEC_NETWORK", "allowlist")
    monkeypatch.setenv("MCP_CODEEXEC_ALLOW_HOSTS", "pypi.org, registry.npmjs.org")
    monkeypatch.setenv("MCP_CODEEXEC_MIRRORS", "pypi.org=10.1.2.3:443,registry.npmjs.org=10.1.2.4")
    s = load_settings(data_dir=str(tmp_path))
    assert s.allow_hosts == ["pypi.org", "registry.npmjs.org"]
    assert s.mirrors == {"pypi.org": "10.1.2.3:443", "registry.npmjs.org": "10.1.2.4"}


def test_the_old_boolean_network_setting_still_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_CODEEXEC_NETWORK", "true")
    assert load_settings(data_dir=str(tmp_path)).network is True
    monkeypatch.setenv("MCP_CODEEXEC_NETWORK", "false")
    assert load_settings(data_dir=str(tmp_path)).network is False


def test_allowlist_comes_from_serve_flags(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--data-dir", str(tmp_path), "--network", "allowlist", "--allow-host", "pypi.org",
                                      "--allow-host", "github.com", "--mirror", "pypi.org=10.0.0.7:443"])
    s = _settings_from(args)
    assert (s.network, s.allow_hosts, s.mirrors) == ("allowlist", ["pypi.org", "github.com"], {"pypi.org": "10.0.0.7:443"})


@pytest.mark.parametrize(("values", "message"), [
    ({"network": "allowlist"}, "needs allow_hosts"),
    ({"allow_hosts": ["pypi.org"]}, "only with network"),
    ({"network": "allowlist", "allow_hosts": ["pypi.org"], "runtime": "runsc"}, "not supported under runsc"),
    ({"network": "allowlist", "allow_hosts": ["1.2.3.4"]}, "is an IP address"),
    ({"network": "allowlist", "allow_hosts": ["[::1]"]}, "is an IP address"),
    ({"network": "allowlist", "allow_hosts": ["::ffff:127.0.0.1"]}, "is an IP address"),
    ({"network": "allowlist", "allow_hosts": ["*.pythonhosted.org"]}, "wildcards"),
    ({"network": "allowlist", "allow_hosts": [".pypi.org"]}, "wildcards"),
    ({"network": "allowlist", "allow_hosts": ["localhost"]}, "not a host name"),
    ({"network": "allowlist", "allow_hosts": ["pypi.org:8443"]}, "not a host name"),
    ({"network": "allowlist", "allow_hosts": ["pypi.org"], "mirrors": {"npmjs.org": "10.0.0.1:443"}}, "not in allow_hosts"),
    ({"network": "allowlist", "allow_hosts": ["pypi.org"], "mirrors": {"pypi.org": "10.0.0.1:70000"}}, "port must be 1-65535"),
    ({"network": "allowlist", "allow_hosts": ["pypi.org"], "mirrors": {"pypi.org": "10.0.0.1:0"}}, "port must be 1-65535"),
    ({"network": "allowlist", "allow_hosts": ["pypi.org"], "mirrors": {"pypi.org": "mirror.corp:443"}}, "IPv4 address"),
])
def test_bad_allowlist_settings_are_refused_with_a_reason(tmp_path: Path, values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings(tmp_path, **values)


def fake_resolver(answers: dict[str, list[str]], calls: list[str]) -> Any:
    def resolve(host: str, port: int, family: int, kind: int) -> list[Any]:
        calls.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(family, kind, 6, "", (addr, port)) for addr in answers[host]]
    return resolve


def test_names_are_pinned_to_their_public_addresses_and_mirrors_are_not_resolved() -> None:
    policy = egress.Policy.from_settings(["pypi.org", "mirror.example"], {"mirror.example": "10.9.8.7"})
    calls: list[str] = []
    pins = egress.pin(policy, fake_resolver({"pypi.org": ["151.101.0.223", "151.101.64.223"]}, calls))
    assert pins == {"pypi.org": ["151.101.0.223", "151.101.64.223"]} and calls == ["pypi.org"]
    assert egress.hosts_file(policy, pins).splitlines() == [
        "151.101.0.223 pypi.org", "151.101.64.223 pypi.org", "10.9.8.7 mirror.example"]


def test_a_mirror_on_another_port_than_443_is_reached_through_a_relay_on_a_proxy_loopback_address() -> None:
    # squid still checks name, port 443 and SNI; the name's address is the relay's, which forwards
    # to the one ADDRESS:PORT configured. Mirrors on 443 need no relay.
    policy = egress.Policy.from_settings(["pypi.org", "github.com", "registry.npmjs.org"],
                                         {"pypi.org": "10.9.8.7:8443", "github.com": "10.9.8.6", "registry.npmjs.org": "10.9.8.5:4873"})
    assert egress.relays(policy) == {"pypi.org": ("127.0.0.2", "10.9.8.7:8443"),
                                     "registry.npmjs.org": ("127.0.0.3", "10.9.8.5:4873")}
    assert egress.relay_lines(policy).splitlines() == ["127.0.0.2 10.9.8.7:8443", "127.0.0.3 10.9.8.5:4873"]
    assert sorted(egress.hosts_file(policy, {}).splitlines()) == [
        "10.9.8.6 github.com", "127.0.0.2 pypi.org", "127.0.0.3 registry.npmjs.org"]
    assert "acl tls_port port 443" in egress.squid_conf(policy).splitlines()
    assert egress.relays(egress.Policy.from_settings(["pypi.org"], {"pypi.org": "10.9.8.7:443"})) == {}


# Data for the pinning rule only: a fake resolver returns these strings and nothing is contacted
# (the module only raises socket.gaierror in the fake; it never opens a socket).
@pytest.mark.parametrize("answer", [["127.0.0.1"], ["169.254.169.254"], ["10.0.0.5"], ["151.101.0.223", "192.168.1.1"], ["100.64.0.1"], ["0.0.0.0"]])
def test_a_name_answering_with_any_non_public_address_is_refused_not_pinned(answer: list[str]) -> None:
    # A DNS-rebinding name, or an internal one: refused whole, so no later answer can matter.
    policy = egress.Policy.from_settings(["rebind.example"], {})
    with pytest.raises(Unavailable, match="non-public"):
        egress.pin(policy, fake_resolver({"rebind.example": answer}, []))


def test_a_name_that_does_not_resolve_is_refused_clearly() -> None:
    with pytest.raises(Unavailable, match="cannot resolve allowed host nowhere.example"):
        egress.pin(egress.Policy.from_settings(["nowhere.example"], {}), fake_resolver({}, []))


def test_the_proxy_allows_connect_to_443_of_listed_names_only_and_has_no_name_server() -> None:
    conf = egress.squid_conf(egress.Policy.from_settings(["pypi.org", "github.com"], {}))
    lines = conf.splitlines()
    rules = [line for line in lines if line.startswith("http_access")]
    assert rules == ["http_access deny !CONNECT", "http_access deny ip_literal", "http_access deny !tls_port",
                     "http_access deny !allowed", "http_access allow allowed", "http_access deny all"]
    assert "acl allowed dstdomain pypi.org github.com" in lines and "acl tls_port port 443" in lines
    assert "dns_nameservers 127.0.0.1" in lines and "hosts_file /tmp/hosts" in lines
    # SNI must equal the CONNECT name, host by host; anything else is cut off.
    assert "ssl_bump splice host0 sni0" in lines and "acl sni1 ssl::server_name github.com" in lines
    assert lines[-1] == "ssl_bump terminate all"
    assert not any(line.startswith(("cache_peer", "always_direct", "url_rewrite")) for line in lines)


def test_the_sandbox_gets_the_usual_proxy_variables() -> None:
    env = egress.proxy_environment("mcp-codeexec-egress-container_1")
    url = "http://mcp-codeexec-egress-container_1:3128"
    assert {env[k] for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "PIP_PROXY",
                             "npm_config_proxy", "npm_config_https_proxy")} == {url}
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1,::1"


def test_the_tool_description_names_the_allowed_hosts_and_no_dns(tmp_path: Path) -> None:
    from mcp_codeexec.server import _limits

    text = _limits(settings(tmp_path, network="allowlist", allow_hosts=["pypi.org", "github.com"]))
    assert "HTTPS to pypi.org, github.com through a proxy (no DNS)" in text
    assert "no network access (no internet, no DNS)" in _limits(settings(tmp_path))
