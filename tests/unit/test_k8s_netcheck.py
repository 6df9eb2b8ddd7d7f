"""The network self-check's verdict on a canary pod's report (its /proc/net files), and the canary's
manifest: the sandbox pod's own hardening, a script that reads files instead of the agent."""

from __future__ import annotations

import pytest

pytest.importorskip("kubernetes")

from mcp_codeexec.engines.k8s_netcheck import END, SCRIPT, canary_manifest, judge
from mcp_codeexec.engines.kubernetes import PodSettings, pod_manifest

DEV_HEADER = ("Inter-|   Receive                                                |  Transmit\n"
              " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n")
LO = "    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n"
ETH0 = "  eth0:    1234      10    0    0    0     0          0         0     5678      12    0    0    0     0       0          0\n"
ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
DEFAULT_ROUTE = "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
LO6 = ("00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 "
       "00000000 00000001 00000000 80200001       lo\n")
ETH6 = ("fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 "
        "00000100 00000001 00000000 00000001     eth0\n")


def report(dev: str, route: str, route6: str, *, end: bool = True) -> str:
    return f"== dev\n{DEV_HEADER}{dev}== route\n{ROUTE_HEADER}{route}== route6\n{route6}" + (f"{END}\n" if end else "")


def test_a_pod_with_only_lo_and_no_route_is_isolated() -> None:
    verdict = judge(report(LO, "", LO6))
    assert verdict.isolated and verdict.interfaces == () and verdict.routes == ()
    assert "nothing can leave" in verdict.summary


def test_a_pod_with_an_interface_and_a_default_route_is_not_proven_isolated() -> None:
    verdict = judge(report(LO + ETH0, DEFAULT_ROUTE, LO6 + ETH6))
    assert not verdict.isolated
    assert verdict.interfaces == ("eth0",)
    assert "eth0 00000000" in verdict.routes and any(r.startswith("eth0 fe80") for r in verdict.routes)
    assert "NetworkPolicy" in verdict.summary and "k8s_network_check" in verdict.fix


def test_an_interface_without_routes_is_still_not_isolated() -> None:
    assert not judge(report(LO + ETH0, "", LO6)).isolated


def test_a_report_cut_short_or_missing_is_not_isolated() -> None:
    assert not judge(report(LO, "", LO6, end=False)).isolated
    assert not judge("").isolated
    assert not judge("== end\n").isolated


def test_the_canary_is_a_sandbox_pod_that_runs_a_file_reading_script_and_needs_no_claim() -> None:
    settings = PodSettings(storage_class="fast", runtime_class="gvisor")

    class Engine:
        pass

    engine = Engine()
    engine.settings = settings  # type: ignore[attr-defined]
    cid = "container_" + "ab" * 12
    canary = canary_manifest(engine, cid, now=1000.0)  # type: ignore[arg-type]
    sandbox = pod_manifest(cid, "", settings, now=1000.0, expires=1120.0, server="network-check")
    (c,), (s,) = canary["spec"]["containers"], sandbox["spec"]["containers"]
    assert c["securityContext"] == s["securityContext"] and c["image"] == s["image"]
    assert "resources" not in c  # it reserves nothing: a node full of sandboxes still runs it
    small = canary_manifest(engine, cid, now=1000.0, requests=True)["spec"]["containers"][0]["resources"]  # type: ignore[arg-type]
    assert small["requests"] == small["limits"] == {"cpu": "50m", "memory": "32Mi"}
    for key in ("securityContext", "dnsPolicy", "dnsConfig", "automountServiceAccountToken", "enableServiceLinks", "runtimeClassName"):
        assert canary["spec"][key] == sandbox["spec"][key]
    assert c["command"][:2] == ["/bin/sh", "-c"] and c["stdin"] is False
    assert all("persistentVolumeClaim" not in v and "hostPath" not in v for v in canary["spec"]["volumes"])
    assert canary["metadata"]["labels"]["mcp-codeexec/canary"] == "1"
    # It only reads: no tool in the script can open a socket.
    for word in ("curl", "wget", "nc ", "/dev/tcp", "ping", "getent", "python"):
        assert word not in SCRIPT


def _engine(mode: str, verdict: object, monkeypatch: pytest.MonkeyPatch) -> object:
    from types import SimpleNamespace

    from mcp_codeexec.engines import k8s_netcheck, kubernetes

    engine = kubernetes.KubernetesEngine.__new__(kubernetes.KubernetesEngine)
    engine.settings = PodSettings(namespace="ns-" + mode)
    engine.network_check = mode
    engine.api_client = SimpleNamespace(configuration=SimpleNamespace(host="https://127.0.0.1:6443"))
    calls: list[int] = []
    monkeypatch.setattr(k8s_netcheck, "network_check", lambda e: calls.append(1) or verdict)
    monkeypatch.setattr(kubernetes, "_NETWORK_VERDICTS", {})
    engine.calls = calls  # type: ignore[attr-defined]
    return engine


def test_refuse_makes_a_routed_canary_refuse_to_serve_and_warn_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    from mcp_codeexec.errors import Unavailable

    routed = judge(report(LO + ETH0, DEFAULT_ROUTE, LO6))
    refusing = _engine("refuse", routed, monkeypatch)
    with pytest.raises(Unavailable, match="refusing to serve"):
        refusing._check_network()  # type: ignore[attr-defined]
    warning = _engine("warn", routed, monkeypatch)
    warning._check_network()  # type: ignore[attr-defined]
    off = _engine("off", routed, monkeypatch)
    off._check_network()  # type: ignore[attr-defined]
    assert off.calls == []  # type: ignore[attr-defined]


def test_the_canary_runs_once_per_process_and_pod_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine("refuse", judge(report(LO, "", LO6)), monkeypatch)
    engine._check_network()  # type: ignore[attr-defined]
    engine._check_network()  # type: ignore[attr-defined]
    assert engine.calls == [1]  # type: ignore[attr-defined]


def test_a_canary_that_cannot_run_refuses_with_unavailable_or_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    from mcp_codeexec.engines import k8s_netcheck
    from mcp_codeexec.errors import TooManyRequests, Unavailable

    def full(engine: object) -> object:
        raise TooManyRequests("the cluster has no room for the network self-check's canary pod: Insufficient cpu")

    refusing = _engine("refuse", None, monkeypatch)
    monkeypatch.setattr(k8s_netcheck, "network_check", full)
    with pytest.raises(Unavailable, match="until the network self-check runs.*Insufficient cpu"):
        refusing._check_network()  # type: ignore[attr-defined]
    warning = _engine("warn", None, monkeypatch)
    monkeypatch.setattr(k8s_netcheck, "network_check", full)
    warning._check_network()  # type: ignore[attr-defined]
