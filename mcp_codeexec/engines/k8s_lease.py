"""One leader among the servers of a Kubernetes installation: a ``coordination.k8s.io`` Lease.

The same seam as ``leader.LeaderElection`` (PostgreSQL): ``is_leader``, ``start``, ``stop``; the
backend runs its warm pool and reaper only while ``is_leader()`` is true.

How (the client-go recipe, without its library): the Lease ``mcp-codeexec-leader-<instance>``
names its holder and when it last renewed. Every write is a replace carrying the resourceVersion
read just before, so of two servers writing at once one gets 409 and stays a follower. Expiry is
judged on the follower's own monotonic clock — the holder is gone when the Lease has not changed
for ``duration`` seconds since this follower first saw it like that — so clock skew between
machines does not matter. The leader renews every ``duration / 3`` seconds and stops calling
itself leader ``duration * 2/3`` after its last confirmed renewal, before any follower can take
over. A server that stops cleanly empties the holder, and a follower takes over at its next round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .base import SERVER_TAG

log = logging.getLogger(__name__)

LEASE_PREFIX = "mcp-codeexec-leader-"


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElection:
    """``api``: a ``kubernetes.client.CoordinationV1Api`` (or a factory of one, called until it
    succeeds: the cluster may be unreachable when the server starts)."""

    def __init__(self, api: Any | Callable[[], Any], namespace: str, name: str, *, identity: str = SERVER_TAG,
                 duration: float = 15.0, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self._api_factory = api if callable(api) and not hasattr(api, "read_namespaced_lease") else None
        self._api = None if self._api_factory is not None else api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.interval = duration / 3
        self.clock = clock
        self.on_change = on_change
        self._leader = False
        self._valid_until = 0.0
        self._seen: tuple[str, str] | None = None  # (resourceVersion, holder) last read
        self._seen_at = 0.0  # when (this clock) the Lease last changed as far as we know
        self._acquired: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the LeaderElection seam ------------------------------------------------------------

    def is_leader(self) -> bool:
        return self._leader and self.clock() < self._valid_until

    def start(self) -> LeaseElection:
        self.step()  # the first server up leads at once
        self._thread = threading.Thread(target=self._run, name="mcp-codeexec-lease", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._leader:
            self._release()
        self._set(False)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.step()

    def _set(self, leader: bool) -> None:
        if leader != self._leader:
            self._leader = leader
            log.info("lease %s/%s: this server is %s", self.namespace, self.name, "the leader" if leader else "a follower")
            if self.on_change is not None:
                self.on_change(leader)

    # --- one round ----------------------------------------------------------------------------

    def _client(self) -> Any:
        if self._api is None:
            assert self._api_factory is not None
            self._api = self._api_factory()
        return self._api

    def _body(self, lease: dict[str, Any] | None, *, holder: str, transitions: int) -> dict[str, Any]:
        now = _micro_time()
        spec: dict[str, Any] = {"holderIdentity": holder, "leaseDurationSeconds": max(1, round(self.duration)),
                                "renewTime": now, "leaseTransitions": transitions}
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace,
                                "labels": {"app.kubernetes.io/managed-by": "mcp-codeexec"}}
        if lease is not None:
            meta["resourceVersion"] = lease["metadata"]["resourceVersion"]
        # Our own record of when we took it (the read-back time's format is not the API's MicroTime).
        if self._acquired is None or holder != self.identity or ((lease or {}).get("spec") or {}).get("holderIdentity") != holder:
            self._acquired = now
        spec["acquireTime"] = self._acquired
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def step(self) -> bool:
        """Read the Lease; renew it (leader), take it (free or expired) or wait. Returns whether
        this server leads. API failures make no change but let the leader's validity run out."""
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException
        from urllib3.exceptions import HTTPError

        began = self.clock()
        try:
            api = self._client()
            try:
                lease = api.api_client.sanitize_for_serialization(api.read_namespaced_lease(self.name, self.namespace))
            except ApiException as exc:
                if exc.status != 404:
                    raise
                lease = None
            if lease is None:
                api.create_namespaced_lease(self.namespace, self._body(None, holder=self.identity, transitions=0))
                self._won(began)
                return True
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            transitions = int(spec.get("leaseTransitions") or 0)
            seen = (lease["metadata"]["resourceVersion"], holder)
            if seen != self._seen:
                self._seen, self._seen_at = seen, began
            if holder == self.identity:
                api.replace_namespaced_lease(self.name, self.namespace, self._body(lease, holder=holder, transitions=transitions))
                self._won(began)
                return True
            duration = float(spec.get("leaseDurationSeconds") or self.duration)
            if holder and began - self._seen_at < duration:
                self._set(False)
                return False
            log.info("lease %s/%s: taking it over from %r", self.namespace, self.name, holder or "nobody")
            api.replace_namespaced_lease(self.name, self.namespace, self._body(lease, holder=self.identity, transitions=transitions + 1))
            self._won(began)
            return True
        except ApiException as exc:
            if exc.status == 409:  # another server wrote it between our read and our write
                self._set(False)
                return False
            log.warning("lease %s/%s: Kubernetes API %s %s", self.namespace, self.name, exc.status, exc.reason)
        except (HTTPError, OSError, ConfigException) as exc:
            log.warning("lease %s/%s: the Kubernetes API is unreachable: %s", self.namespace, self.name, exc)
        if not self.is_leader():
            self._set(False)
        return self.is_leader()

    def _won(self, began: float) -> None:
        # Valid for two thirds of the duration from when the renewal was sent: a follower waits the
        # whole duration from when it saw the last change, which was no earlier than this send.
        self._valid_until = began + self.duration * 2 / 3
        self._set(True)

    def _release(self) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            api = self._client()
            lease = api.api_client.sanitize_for_serialization(api.read_namespaced_lease(self.name, self.namespace))
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                transitions = int((lease.get("spec") or {}).get("leaseTransitions") or 0)
                api.replace_namespaced_lease(self.name, self.namespace, self._body(lease, holder="", transitions=transitions))
        except (ApiException, HTTPError, OSError) as exc:
            log.info("lease %s/%s: not released (%s); it expires by itself", self.namespace, self.name, exc)


def open_lease_election(settings: Any) -> LeaseElection:
    """The Lease election of this installation (``settings.backend == "kubernetes"``), started."""
    from . import engine_config
    from .base import installation_label

    config = engine_config(settings)

    def api() -> Any:
        from kubernetes import client
        from kubernetes import config as kconfig

        if config.kubeconfig is None:  # type: ignore[union-attr]
            kconfig.load_incluster_config()
            return client.CoordinationV1Api(client.ApiClient())
        return client.CoordinationV1Api(kconfig.new_client_from_config(config_file=config.kubeconfig,  # type: ignore[union-attr]
                                                                        context=config.context))  # type: ignore[union-attr]

    name = LEASE_PREFIX + installation_label(settings.data_dir)
    return LeaseElection(api, lease_namespace(settings), name, duration=settings.k8s_lease_seconds).start()


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def lease_namespace(settings: Any) -> str:
    """``k8s_lease_namespace``; unset: the server's own namespace when it runs in a pod (its
    service account says), else the sandboxes' namespace."""
    if settings.k8s_lease_namespace:
        return str(settings.k8s_lease_namespace)
    if settings.kubeconfig is None:
        try:
            return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or settings.k8s_namespace
        except OSError:
            pass
    return str(settings.k8s_namespace)


__all__ = ["LEASE_PREFIX", "LeaseElection", "lease_namespace", "open_lease_election"]
