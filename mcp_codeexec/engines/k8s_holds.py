"""Which sandboxes a server is using, across machines: a hold on the pod itself.

On one machine the lifecycle's ``Leases`` (a ``flock`` per sandbox) says which sandboxes a live
server is using, and the kernel drops a dead server's lock at once. Servers on other machines
(replicas of a Deployment, a laptop and a CI runner on one cluster) cannot see those locks. So a
``PodHolds`` also writes the holding machine and a deadline on the pod's annotations, renewed while
held: another machine neither resumes nor takes a sandbox whose hold is live. On the holder's own
machine the flock stays the authority, so a server killed and started again there resumes at once;
elsewhere a dead machine's hold lapses after ``ttl`` seconds.

Every write carries the resourceVersion just read: two machines taking one idle pod at the same
moment get one 200 and one 409, and the loser lets go.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CodeExecError
from .base import Leases

if TYPE_CHECKING:
    from .kubernetes import KubernetesEngine

log = logging.getLogger(__name__)

A_HELD_BY = "mcp-codeexec/held-by"
A_HELD_UNTIL = "mcp-codeexec/held-until"
A_LAST_USED = "mcp-codeexec/last-used"
HOLD_SECONDS = 30.0


def machine_id() -> str:
    """This machine, as other machines' servers see it (a pod's hostname is its name)."""
    try:
        with open("/etc/machine-id", encoding="ascii") as fh:
            mid = fh.read().strip()[:32]
    except OSError:
        mid = ""
    return f"{socket.gethostname()[:63]}/{mid}" if mid else socket.gethostname()[:63]


def held_elsewhere(pod: dict[str, Any], machine: str, now: float | None = None) -> bool:
    """The pod carries a live hold of another machine."""
    ann = pod.get("metadata", {}).get("annotations") or {}
    holder = ann.get(A_HELD_BY)
    if not holder or holder == machine:
        return False
    try:
        until = float(ann.get(A_HELD_UNTIL, "0"))
    except ValueError:
        return False
    return until > (time.time() if now is None else now)


def last_used(pod: dict[str, Any]) -> float | None:
    try:
        return float((pod.get("metadata", {}).get("annotations") or {})[A_LAST_USED])
    except (KeyError, ValueError):
        return None


class PodHolds(Leases):
    """``Leases`` plus a renewed hold on the pod for servers on other machines."""

    def __init__(self, root: Path, engine: KubernetesEngine, *, machine: str | None = None,
                 ttl: float = HOLD_SECONDS) -> None:
        super().__init__(root)
        self.engine = engine
        self.machine = machine or machine_id()
        self.ttl = ttl
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._mutex = threading.Lock()

    # -- Leases ----------------------------------------------------------------------------------

    def acquire(self, cid: str) -> bool:
        if self.holds(cid):
            return True
        if not super().acquire(cid):
            return False  # a server on this machine has it
        if not self._take(cid):
            super().release(cid)
            return False
        self._start_renewing()
        return True

    def in_use(self, cid: str, pod: dict[str, Any] | None = None) -> bool:
        if super().in_use(cid):
            return True
        if pod is None:
            pod = self.engine._read_pod(cid)
        return pod is not None and held_elsewhere(pod, self.machine)

    def release(self, cid: str) -> None:
        held = self.holds(cid)
        super().release(cid)
        if held:
            self._let_go(cid)

    def stop(self) -> None:
        """Stop renewing (the engine closes); holds lapse after ``ttl`` unless released."""
        self._stop.set()

    # -- the annotations -------------------------------------------------------------------------

    def _patch(self, cid: str, annotations: dict[str, str | None], *, version: str | None) -> None:
        from .kubernetes import object_name

        meta: dict[str, Any] = {"annotations": annotations}
        if version is not None:
            meta["resourceVersion"] = version
        self.engine.core.patch_namespaced_pod(object_name(cid), self.engine.settings.namespace, {"metadata": meta})

    def _take(self, cid: str) -> bool:
        """Write our hold unless another machine's is live; False: someone else has the pod."""
        from kubernetes.client.exceptions import ApiException

        from .kubernetes import translate_k8s_errors

        for _ in range(10):  # a 409 is usually the kubelet writing status, not a rival: read again
            pod = self.engine._read_pod(cid)
            if pod is None:
                return True  # no pod (yet): rebuilt around its claim by whoever uses it next
            if held_elsewhere(pod, self.machine):
                return False
            until = f"{time.time() + self.ttl:.3f}"
            try:
                with translate_k8s_errors("holding a sandbox"):
                    try:
                        self._patch(cid, {A_HELD_BY: self.machine, A_HELD_UNTIL: until},
                                    version=pod["metadata"]["resourceVersion"])
                        return True
                    except ApiException as exc:
                        if exc.status == 404:
                            return True
                        if exc.status != 409:
                            raise
            except CodeExecError as exc:  # the API refused or is away: this machine's lock still holds
                log.warning("sandbox %s: cannot write its hold (%s); only this machine's lock guards it", cid, exc)
                return True
        return False  # ten writes lost to other writers: let them have it

    def _let_go(self, cid: str) -> None:
        from .kubernetes import translate_k8s_errors

        pod = self.engine._read_pod(cid)
        if pod is None or (pod["metadata"].get("annotations") or {}).get(A_HELD_BY) != self.machine:
            return
        try:
            with translate_k8s_errors("releasing a sandbox", cid):
                self._patch(cid, {A_HELD_BY: None, A_HELD_UNTIL: None, A_LAST_USED: f"{time.time():.3f}"},
                            version=pod["metadata"]["resourceVersion"])
        except CodeExecError as exc:  # the hold lapses by itself after ttl
            log.info("sandbox %s: hold not released (%s); it lapses in %.0f s", cid, exc, self.ttl)

    def _start_renewing(self) -> None:
        with self._mutex:
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(target=self._renew, name="k8s-holds", daemon=True)
                self._renewer.start()

    def _renew(self) -> None:
        from kubernetes.client.exceptions import ApiException

        from .kubernetes import translate_k8s_errors

        while not self._stop.wait(self.ttl / 3):
            held = list(self._held)
            if not held:
                return
            for cid in held:
                try:
                    with translate_k8s_errors("renewing a sandbox's hold", cid):
                        pod = self.engine._read_pod(cid)
                        if pod is None or held_elsewhere(pod, self.machine):
                            continue  # gone, or taken after our hold lapsed (an API outage): theirs now
                        try:
                            self._patch(cid, {A_HELD_BY: self.machine, A_HELD_UNTIL: f"{time.time() + self.ttl:.3f}"},
                                        version=pod["metadata"]["resourceVersion"])
                        except ApiException as exc:
                            if exc.status != 409:  # 409: written meanwhile; the next round tries again
                                raise
                except CodeExecError as exc:  # retried at the next round; the hold lapses only after ttl
                    log.debug("sandbox %s: hold not renewed: %s", cid, exc.message)
