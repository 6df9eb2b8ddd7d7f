"""The start-up network self-check of the kubernetes backend: can a sandbox pod reach anything?

A canary pod — the sandbox pod's own manifest (same image, hardening, DNS setting, runtime class)
behind its own deny-all NetworkPolicy, with a shell script instead of the agent — reports its
network namespace: the interfaces (``/proc/net/dev``) and the IPv4 and IPv6 routes
(``/proc/net/route``, ``/proc/net/ipv6_route``). It sends nothing, to nobody: the report comes
back as the container's termination message (no ``pods/log`` permission needed).

The verdict: **isolated** when the pod has no interface but ``lo`` and no route but ``lo``'s — then
no packet can leave it, whatever the NetworkPolicy. Otherwise the pod has a network and only the
deny-all policy (enforced by the CNI, if it enforces policies at all) stands between its code and
the cluster. Proving that would mean sending traffic to a pod, Service or node address, which are
private-range addresses, and this project never addresses those (nor public or metadata ones),
not even to show that it fails. So a routed pod is **not proven isolated**: ``k8s_network_check``
``refuse`` (the default) refuses to serve, ``warn`` logs it and serves, ``off`` skips the canary.
An operator who has checked enforcement (docs/KUBERNETES.md) sets ``warn``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import TooManyRequests, Unavailable
from .base import new_container_id

if TYPE_CHECKING:
    from .kubernetes import KubernetesEngine

log = logging.getLogger(__name__)

L_CANARY = "mcp-codeexec/canary"
CANARY_SECONDS = 120
END = "== end"
# Reads three files and writes them to the termination log; nothing here opens a socket.
SCRIPT = (
    "out=$(echo '== dev'; cat /proc/net/dev; echo '== route'; cat /proc/net/route; "
    "echo '== route6'; cat /proc/net/ipv6_route 2>/dev/null; echo '" + END + "'); "
    "printf '%s\\n' \"$out\" > /dev/termination-log 2>/dev/null && exit 0; printf '%s\\n' \"$out\"; exit 3"
)
FIX = ("make sure the cluster's CNI enforces NetworkPolicy (Calico, Cilium, k3s's policy controller, GKE Dataplane V2; "
       "docs/KUBERNETES.md shows how to check it), then set k8s_network_check = \"warn\"")


@dataclass(frozen=True)
class Verdict:
    isolated: bool
    interfaces: tuple[str, ...] = ()
    """Interfaces other than lo."""
    routes: tuple[str, ...] = ()
    """Routes other than lo's (IPv4 ``dev dest``, IPv6 ``dev dest``)."""
    complete: bool = True
    report: str = field(default="", repr=False)

    @property
    def summary(self) -> str:
        if self.isolated:
            return "a canary sandbox pod has no network interface but lo and no route: nothing can leave a sandbox pod"
        if not self.complete:
            return "the canary sandbox pod's report was cut short: isolation not shown"
        what = []
        if self.interfaces:
            what.append("interfaces " + ", ".join(self.interfaces))
        if self.routes:
            what.append(f"{len(self.routes)} route(s) (" + "; ".join(self.routes[:3]) + ")")
        return ("a canary sandbox pod has " + " and ".join(what) + ": only the deny-all NetworkPolicy keeps sandbox "
                "code off the cluster network, and this check does not send traffic to cluster addresses to prove it")

    @property
    def fix(self) -> str:
        return FIX


def judge(report: str) -> Verdict:
    """The verdict on a canary's report (the three /proc files between ``== name`` lines)."""
    sections: dict[str, list[str]] = {}
    current = None
    complete = False
    for line in report.splitlines():
        if line.startswith("== "):
            current = line[3:].strip()
            complete = complete or line.strip() == END
            sections.setdefault(current, [])
        elif current is not None and line.strip():
            sections[current].append(line)
    interfaces = []
    for line in sections.get("dev", []):
        name, colon, _ = line.partition(":")
        if colon and "|" not in name and name.strip() != "lo":
            interfaces.append(name.strip())
    routes = []
    for line in sections.get("route", [])[1:]:  # after the header line
        fields = line.split()
        if fields and fields[0] != "lo":
            routes.append(f"{fields[0]} {fields[1] if len(fields) > 1 else '?'}")
    for line in sections.get("route6", []):
        fields = line.split()
        if len(fields) >= 10 and fields[-1] != "lo":
            routes.append(f"{fields[-1]} {fields[0]}/{int(fields[1], 16) if _hex(fields[1]) else fields[1]}")
    if "dev" not in sections or "route" not in sections:
        complete = False
    isolated = complete and not interfaces and not routes
    return Verdict(isolated, tuple(interfaces), tuple(routes), complete, report)


def _hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


CANARY_RESOURCES = {"cpu": "50m", "memory": "32Mi"}


def canary_manifest(engine: KubernetesEngine, cid: str, now: float, *, requests: bool = False) -> dict[str, Any]:
    from .kubernetes import pod_manifest

    pod = pod_manifest(cid, "", engine.settings, now=now, expires=now + CANARY_SECONDS, server="network-check")
    pod["metadata"]["labels"][L_CANARY] = "1"
    spec = pod["spec"]
    spec["activeDeadlineSeconds"] = CANARY_SECONDS
    # Its /workspace is scratch: a canary never needs (or leaves) a claim.
    spec["volumes"] = [v if v["name"] != "workspace" else {"name": "workspace", "emptyDir": {"sizeLimit": "16Mi"}}
                       for v in spec["volumes"]]
    (container,) = spec["containers"]
    container.update({"command": ["/bin/sh", "-c", SCRIPT], "args": [], "stdin": False,
                      "terminationMessagePolicy": "FallbackToLogsOnError"})
    # It reads three files and exits: it reserves nothing, so a node full of sandboxes (a server
    # restarting beside its old ones) still runs it. A namespace whose quota demands requests gets
    # the small ones of ``CANARY_RESOURCES`` (``network_check`` retries with them).
    if requests:
        container["resources"] = {"requests": dict(CANARY_RESOURCES), "limits": dict(CANARY_RESOURCES)}
    else:
        container.pop("resources", None)
    return pod


def network_check(engine: KubernetesEngine, *, timeout: float = CANARY_SECONDS) -> Verdict:
    """Run the canary (behind its deny-all policy) and judge its report; removes both. Blocking."""
    from .kubernetes import (
        _IMAGE_FAILURES,
        _UNSCHEDULABLE,
        POLL_SECONDS,
        _why,
        network_policy_manifest,
        translate_k8s_errors,
    )

    s = engine.settings
    cid = new_container_id()
    now = time.time()
    from kubernetes.client.exceptions import ApiException

    try:
        with translate_k8s_errors("starting the network self-check's canary pod"):
            engine.net.create_namespaced_network_policy(s.namespace, network_policy_manifest(cid, s))
            try:
                engine.core.create_namespaced_pod(s.namespace, canary_manifest(engine, cid, now))
            except ApiException as exc:
                if exc.status != 403 or "must specify" not in str(exc.body or ""):
                    raise
                # A ResourceQuota on cpu/memory wants requests and limits: the small ones.
                engine.core.create_namespaced_pod(s.namespace, canary_manifest(engine, cid, now, requests=True))
        deadline = time.monotonic() + timeout
        while True:
            pod = engine._read_pod(cid)
            if pod is None:
                raise Unavailable("the network self-check's canary pod was deleted before it reported")
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                done = (cs.get("state") or {}).get("terminated")
                if done:
                    verdict = judge(done.get("message") or "")
                    log.info("network self-check: %s", verdict.summary)
                    return verdict
            why = _why(pod)
            if any(reason in why for reason in _UNSCHEDULABLE):
                raise TooManyRequests(f"the cluster has no room for the network self-check's canary pod: {why}")
            if any(reason in why for reason in _IMAGE_FAILURES):
                raise Unavailable(f"the network self-check's canary pod cannot start its image {s.image}: {why}")
            if (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded"):
                raise Unavailable(f"the network self-check's canary pod ended without a report: {why}")
            if time.monotonic() > deadline:
                raise Unavailable(f"the network self-check's canary pod did not report within {timeout:.0f} s: {why}")
            time.sleep(POLL_SECONDS)
    finally:
        try:
            engine.remove(cid)
        except Unavailable as exc:
            log.warning("network self-check: removing canary %s: %s (the reaper removes it)", cid, exc.message)


__all__ = ["L_CANARY", "Verdict", "canary_manifest", "judge", "network_check"]
