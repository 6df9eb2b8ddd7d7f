"""Kubernetes engine (prototype): sandboxes as hardened pods, the agent reached by attaching to PID 1.

What it does: render the pod (and its deny-all NetworkPolicy, and optionally a workspace PVC), create,
find by labels and delete them, and open the long-lived byte stream to the agent as an
``anyio.abc.ByteStream`` that ``agent_client.AgentConnection`` drives (``docker_mux=False``: the
Kubernetes stream protocol already separates stdout from stderr).

The data path goes kube-apiserver -> kubelet -> CRI attach, never over the pod network, so the pod
can be deny-all in both directions and sandbox code cannot reach the channel (it is PID 1's stdin).
Attach is single-owner: every attached client receives PID 1's stdout, so one server per pod.

Uses the official ``kubernetes`` client (optional extra ``kubernetes``). Its calls block, so every
one runs off the event loop. Pod labels and annotations are the only ownership state.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import select
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc

from ..errors import ContainerExpired, TooManyRequests, Unavailable
from .base import (
    POOL_OWNER,
    POOL_SILENCE_SECONDS,
    SERVER_TAG,
    CreateTicket,
    SandboxRecord,
    new_container_id,
    server_alive,
)
from .k8s_holds import PodHolds
from .k8s_holds import last_used as pod_last_used

if TYPE_CHECKING:
    from ..config import Settings
    from ..skills import SkillSet
    from . import KubernetesEngineConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

GiB = 1024**3
MiB = 1024**2

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "mcp-codeexec"
L_ID = "mcp-codeexec/id"
L_INSTANCE = "mcp-codeexec/instance"
L_OWNER_HASH = "mcp-codeexec/owner-hash"
L_POOL = "mcp-codeexec/pool"
A_SERVER = "mcp-codeexec/server"
A_OWNER = "mcp-codeexec/owner"
A_CREATED = "mcp-codeexec/created-at"
A_EXPIRES = "mcp-codeexec/expires-at"
NAME_PREFIX = "mcp-codeexec-"
CONTAINER = "agent"
MASKED_SYS_PATHS = ("/sys/block", "/sys/devices/virtual/block")
"""Covered by empty read-only mounts, as on Docker: the node's block devices are none of the sandbox's
business (``/sys/block/loopN/loop/backing_file`` names host paths, e.g. loop-backed volumes of other pods)."""
WORKSPACE = "/workspace"


def object_name(cid: str) -> str:
    """The pod / NetworkPolicy / PVC name of sandbox ``cid`` (DNS-1123: no underscore)."""
    if not (cid.startswith("container_") and len(cid) == 34 and all(c in "0123456789abcdef" for c in cid[10:])):
        raise ContainerExpired(cid, "it is not a container id issued by this server")
    return NAME_PREFIX + cid[len("container_") :]


def owner_hash(owner: str) -> str:
    """A label-safe stand-in for the principal (labels are <= 63 chars of [A-Za-z0-9_.-])."""
    return hashlib.sha256(owner.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class PodSettings:
    """What a sandbox pod looks like; the defaults match the Docker backend's limits."""

    namespace: str = "default"
    image: str = "mcp-codeexec-sandbox:0.1.0"
    image_pull_policy: str = "Never"
    cpus: float = 1.0
    memory_bytes: int = 5 * GiB
    disk_bytes: int = 5 * GiB
    tmp_bytes: int = 512 * MiB
    max_lifetime_seconds: int = 30 * 24 * 3600
    runtime_class: str | None = None
    storage_class: str | None = None
    """When set, /workspace is a PVC of this StorageClass (a hard limit on a block-backed class, and
    it survives pod loss); otherwise an emptyDir with sizeLimit (soft: the kubelet evicts after the fact)."""
    instance: str = "default"
    """Several installations may share a namespace; each only sees its own pods."""


def sandbox_labels(cid: str, settings: PodSettings) -> dict[str, str]:
    return {MANAGED_BY: MANAGER, L_INSTANCE: settings.instance, L_ID: cid}


def _quantity(nbytes: int) -> str:
    if nbytes % GiB == 0:
        return f"{nbytes // GiB}Gi"
    return f"{nbytes // MiB}Mi" if nbytes % MiB == 0 else str(nbytes)


def _cpu(cpus: float) -> str:
    return str(int(cpus)) if cpus == int(cpus) else f"{round(cpus * 1000)}m"


def pod_manifest(cid: str, owner: str, settings: PodSettings, *, now: float, expires: float, pool: bool = False,
                 server: str = "", started: float | None = None) -> dict[str, Any]:
    """The hardened pod of sandbox ``cid`` (a plain dict: what is sent is what is read here). A pool
    pod has no owner yet; its agent exits (and the pod ends) when its server falls silent. ``now``
    is the sandbox's creation; ``started`` (default ``now``) when this pod starts: a pod rebuilt
    around a claim gets only the lifetime that is left."""
    name = object_name(cid)
    resources = {"cpu": _cpu(settings.cpus), "memory": _quantity(settings.memory_bytes)}
    if settings.storage_class:
        workspace: dict[str, Any] = {"name": "workspace", "persistentVolumeClaim": {"claimName": name}}
    else:
        workspace = {"name": "workspace", "emptyDir": {"sizeLimit": _quantity(settings.disk_bytes)}}
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # like the Docker backend's restart "no": a dead agent is a dead sandbox
        "terminationGracePeriodSeconds": 2,
        # The backstop when no server reaps: the pod ends at the sandbox's expiry (a rebuilt pod gets what is left).
        "activeDeadlineSeconds": max(1, int(min(settings.max_lifetime_seconds, expires - (now if started is None else started)))),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # No DNS: dnsPolicy None needs at least one nameserver (422 otherwise), so the only one is the
        # pod's own loopback, where nothing listens.
        "dnsPolicy": "None",
        "dnsConfig": {"nameservers": ["127.0.0.1"], "searches": [], "options": []},
        "hostname": "sandbox",
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "securityContext": {
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": settings.image,
                "imagePullPolicy": settings.image_pull_policy,
                # The image's entrypoint is the agent; it reads frames from PID 1's stdin.
                "stdin": True,
                "stdinOnce": False,
                "tty": False,
                "workingDir": WORKSPACE,
                "securityContext": {
                    "runAsUser": 1000,
                    "runAsGroup": 1000,
                    "runAsNonRoot": True,
                    "privileged": False,
                    "readOnlyRootFilesystem": True,
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "resources": {"requests": dict(resources), "limits": dict(resources)},  # Guaranteed QoS
                "env": [{"name": "CODEEXEC_POOL", "value": "1"}, {"name": "CODEEXEC_POOL_SILENCE", "value": f"{POOL_SILENCE_SECONDS:g}"}]
                if pool else [],
                "volumeMounts": [
                    {"name": "workspace", "mountPath": WORKSPACE},
                    {"name": "tmp", "mountPath": "/tmp"},
                    *({"name": f"mask-{i}", "mountPath": path, "readOnly": True} for i, path in enumerate(MASKED_SYS_PATHS)),
                ],
            }
        ],
        "volumes": [
            workspace,
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": _quantity(settings.tmp_bytes)}},
            *({"name": f"mask-{i}", "emptyDir": {"medium": "Memory", "sizeLimit": "4Ki"}} for i in range(len(MASKED_SYS_PATHS))),
        ],
    }
    if settings.runtime_class:
        spec["runtimeClassName"] = settings.runtime_class
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": {**sandbox_labels(cid, settings), L_OWNER_HASH: owner_hash(owner), L_POOL: "1" if pool else "0"},
            "annotations": {A_OWNER: owner, A_CREATED: f"{now:.3f}", A_EXPIRES: f"{expires:.3f}", A_SERVER: server},
        },
        "spec": spec,
    }


def network_policy_manifest(cid: str, settings: PodSettings) -> dict[str, Any]:
    """Deny all ingress and egress of sandbox ``cid`` (enforced only by a policy-capable CNI)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": object_name(cid),
            "namespace": settings.namespace,
            "labels": sandbox_labels(cid, settings),
        },
        "spec": {"podSelector": {"matchLabels": {L_ID: cid}}, "policyTypes": ["Ingress", "Egress"]},
    }


def pvc_manifest(cid: str, settings: PodSettings, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """The workspace claim; it carries the sandbox's owner and lifetime, since it outlives the pod."""
    assert settings.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": object_name(cid),
            "namespace": settings.namespace,
            "labels": sandbox_labels(cid, settings),
            "annotations": annotations or {},
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": settings.storage_class,
            "resources": {"requests": {"storage": _quantity(settings.disk_bytes)}},
        },
    }


@dataclass
class PodSandbox:
    """What the API says about one sandbox pod."""

    id: str
    name: str
    namespace: str
    owner: str
    created: float
    expires: float
    phase: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def expired(self) -> bool:
        return time.time() >= self.expires


@contextlib.contextmanager
def translate_k8s_errors(doing: str, cid: str | None = None) -> Iterator[None]:
    """Map client failures to the hosted error family (one place for this engine)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        body = (exc.body or b"").decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body or "")
        if exc.status == 404 and cid is not None:
            raise ContainerExpired(cid) from None
        if exc.status == 403 and "exceeded quota" in body:
            # The API's message names the quota and what it limits ("exceeded quota: q, requested:
            # pods=1, used: pods=4, limited: pods=4"): the caller sees the cause.
            raise TooManyRequests(f"{doing}: the namespace's ResourceQuota is used up: {_api_message(body)}") from None
        if exc.status == 429:
            raise TooManyRequests(f"{doing}: the Kubernetes API is throttling ({exc.reason})") from None
        raise Unavailable(f"{doing} failed: Kubernetes API {exc.status} {exc.reason}", detail=body[:2000]) from None
    except (HTTPError, OSError) as exc:
        raise Unavailable(f"{doing} failed: the Kubernetes API is unreachable: {exc}") from None


def _api_message(body: str) -> str:
    """The ``message`` of a Kubernetes Status body (or the body itself, shortened)."""
    import json

    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or body)[:500]


_NETWORK_VERDICTS: dict[tuple[Any, ...], Any] = {}
"""The network self-check's verdict per cluster and pod configuration, once per process."""
POLL_SECONDS = 0.1
START_TIMEOUT = 120.0
ORPHAN_GRACE_SECONDS = 120.0
"""A NetworkPolicy or claim without its pod is left alone this long (a create may be between them)."""
_UNSCHEDULABLE = ("Insufficient cpu", "Insufficient memory", "Insufficient ephemeral-storage", "Too many pods")
_IMAGE_FAILURES = ("ErrImageNeverPull", "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                   "CreateContainerError")


class KubernetesEngine:
    """Sandboxes as pods in one namespace (``engines.base.Engine``). Blocking, like the Docker engine:
    the lifecycle calls every method but ``open_stream`` through ``anyio.to_thread``.

    The pod's labels and annotations (and, with a StorageClass, its claim's) are the only record of
    a sandbox's owner and lifetime; ``leases`` (which sandboxes this machine's servers are using) is
    the same per-machine ``flock`` as on Docker."""

    name = "kubernetes"
    # The attach stream crosses the API server: when it restarts (an upgrade, a blip) the pods run
    # on, and running requests are resumed over a new attach within this window.
    stream_resume_seconds = 60.0

    def __init__(self, settings: PodSettings, *, kubeconfig: str | None = None, context: str | None = None,
                 data_dir: Path | None = None) -> None:
        from kubernetes import client, config

        self.settings = settings
        if kubeconfig is None:
            config.load_incluster_config()
            self.api_client = client.ApiClient()
        else:
            self.api_client = config.new_client_from_config(config_file=kubeconfig, context=context)
        self.core = client.CoreV1Api(self.api_client)
        self.net = client.NetworkingV1Api(self.api_client)
        self.install = settings.instance
        # This machine's locks, and a hold on the pod for servers on other machines (k8s_holds.py).
        self.leases = PodHolds((data_dir or Path(tempfile.gettempdir()) / f"mcp-codeexec-k8s-{settings.instance}") / "leases",
                               self)
        self.closing = threading.Event()
        self._creates = threading.Condition()
        self._active_creates = 0
        self.orphan_grace = ORPHAN_GRACE_SECONDS
        self.network_check = "off"  # from_settings sets k8s_network_check (engines built by hand skip it)
        self.lease_namespace = settings.namespace

    @classmethod
    def from_settings(cls, settings: Settings, config: KubernetesEngineConfig) -> KubernetesEngine:
        from ..image import image_tag
        from .base import installation_label

        if settings.mounts:
            raise Unavailable("host folder mounts (`mounts`) are not available on the kubernetes backend")
        pods = PodSettings(
            namespace=config.namespace,
            image=settings.image or image_tag("full"),
            image_pull_policy=config.image_pull_policy,
            cpus=settings.cpus,
            memory_bytes=settings.memory_bytes,
            disk_bytes=settings.disk_bytes,
            tmp_bytes=settings.tmp_bytes,
            max_lifetime_seconds=int(settings.container_ttl_seconds),
            runtime_class=config.runtime_class,
            storage_class=config.storage_class,
            instance=installation_label(settings.data_dir),
        )
        from kubernetes.config.config_exception import ConfigException

        try:
            engine = cls(pods, kubeconfig=config.kubeconfig, context=config.context, data_dir=settings.data_dir)
        except (OSError, ValueError, ConfigException) as exc:  # kubeconfig unreadable, or not inside a cluster
            raise Unavailable(f"connecting to Kubernetes: {exc}") from None
        engine.network_check = config.network_check
        from .k8s_lease import lease_namespace

        engine.lease_namespace = lease_namespace(settings)
        return engine

    @property
    def stoppable(self) -> bool:
        """An idle pod is deleted only when its workspace is a claim that outlives it."""
        return bool(self.settings.storage_class)

    def close(self) -> None:
        self.leases.stop()
        self.api_client.close()

    def resolve_image(self) -> str:
        """The image is the nodes' business (pulled or preloaded): checked when a pod starts. Here:
        the API answers, and (once per process and pod configuration) the network self-check."""
        from kubernetes.client.exceptions import ApiException

        with translate_k8s_errors("reaching the Kubernetes API"):
            try:
                self.core.read_namespace(self.settings.namespace)
            except ApiException as exc:
                if exc.status != 403:  # a namespaced Role may not read the namespace object
                    raise
                self.core.list_namespaced_pod(self.settings.namespace, limit=1)
        self._check_network()
        return self.settings.image

    def _check_network(self) -> None:
        """``k8s_network_check``: refuse (Unavailable) or warn unless a canary pod shows no route out."""
        if self.network_check == "off":
            return
        from .k8s_netcheck import network_check

        s = self.settings
        key = (self.api_client.configuration.host, s.namespace, s.image, s.runtime_class)
        verdict = _NETWORK_VERDICTS.get(key)
        if verdict is None:
            try:
                verdict = _NETWORK_VERDICTS[key] = network_check(self)
            except (TooManyRequests, Unavailable) as exc:
                if self.network_check == "warn":
                    log.warning("network self-check did not run (k8s_network_check = warn: serving anyway): %s", exc.message)
                    return
                # Unavailable, not too_many_requests: the server retries at the next call.
                raise Unavailable(f"refusing to serve sandboxes until the network self-check runs "
                                  f"(k8s_network_check = refuse): {exc.message}") from None
        if verdict.isolated:
            return
        if self.network_check == "refuse":
            raise Unavailable(f"refusing to serve sandboxes (k8s_network_check = refuse): {verdict.summary}; {verdict.fix}")
        log.warning("network self-check: %s (k8s_network_check = warn: serving anyway)", verdict.summary)

    def drain_creates(self, timeout: float) -> bool:
        with self._creates:
            return self._creates.wait_for(lambda: self._active_creates == 0, timeout)

    # --- records ------------------------------------------------------------------------------

    def _serialize(self, obj: Any) -> dict[str, Any]:
        return self.api_client.sanitize_for_serialization(obj)

    def _read_pod(self, cid: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        with translate_k8s_errors("looking up a sandbox"):
            try:
                return self._serialize(self.core.read_namespaced_pod(object_name(cid), self.settings.namespace))
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    def _read_pvc(self, cid: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        if not self.settings.storage_class:
            return None
        with translate_k8s_errors("looking up a workspace claim"):
            try:
                return self._serialize(self.core.read_namespaced_persistent_volume_claim(object_name(cid), self.settings.namespace))
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    def _mine(self, obj: dict[str, Any], cid: str) -> bool:
        labels = obj["metadata"].get("labels") or {}
        return labels.get(MANAGED_BY) == MANAGER and labels.get(L_INSTANCE) == self.install and labels.get(L_ID) == cid

    def list(self, *, all_: bool = True, all_instances: bool = False) -> list[tuple[SandboxRecord, dict[str, Any]]]:
        """This instance's sandbox pods (``all_instances``: every installation's in the namespace);
        ``all_=False``: only those not ended (the Docker engine's running-only listing, which the
        replicas' per-principal quota counts)."""
        s = self.settings
        selector = f"{MANAGED_BY}={MANAGER}" if all_instances else f"{MANAGED_BY}={MANAGER},{L_INSTANCE}={s.instance}"
        with translate_k8s_errors("listing sandboxes"):
            pods = [self._serialize(p) for p in self.core.list_namespaced_pod(s.namespace, label_selector=selector).items]
        found = []
        for pod in pods:
            try:
                record = sandbox_record(pod, self.settings)
            except ContainerExpired:
                continue  # our label key on something that is not a sandbox's pod: not ours to judge
            if all_ or (record.status not in ("succeeded", "failed") and not pod["metadata"].get("deletionTimestamp")):
                found.append((record, pod))
        return found

    def detached(self, present: set[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Sandboxes stopped idle (or whose pod was lost) that ``find`` would rebuild around their
        claim: (id, {owner, created, expires}) of each unexpired, owned claim without a pod.
        ``present``: the ids of the pods that exist, when the caller has just listed them."""
        s = self.settings
        if not s.storage_class:
            return []
        if present is None:
            present = {record.id for record, _ in self.list()}
        selector = f"{MANAGED_BY}={MANAGER},{L_INSTANCE}={s.instance}"
        with translate_k8s_errors("listing workspace claims"):
            claims = [self._serialize(c) for c in self.core.list_namespaced_persistent_volume_claim(s.namespace, label_selector=selector).items]
        found = []
        for claim in claims:
            cid = (claim["metadata"].get("labels") or {}).get(L_ID, "")
            data = _claim_data(claim)
            if cid and cid not in present and data is not None and data["owner"] and time.time() < data["expires"] \
                    and not claim["metadata"].get("deletionTimestamp"):
                found.append((cid, data))
        return found

    # --- lifecycle ----------------------------------------------------------------------------

    def create(self, owner: str, *, pool: bool = False, ticket: CreateTicket | None = None,
               skills: SkillSet | None = None) -> tuple[SandboxRecord, dict[str, Any]]:
        """NetworkPolicy first (the pod never runs unfenced), then the claim if any, then the pod;
        returns once the pod runs. A create whose caller gave up or whose server is closing removes
        what it made."""
        if skills is not None and skills.skills:
            raise Unavailable("skills are not available on the kubernetes backend yet")
        s = self.settings
        cid = new_container_id()
        now = time.time()
        expires = now + s.max_lifetime_seconds
        with self._creates:
            self._active_creates += 1
        try:
            if self.closing.is_set():
                raise Unavailable("the server is shutting down")
            try:
                with translate_k8s_errors("creating a sandbox"):
                    self.net.create_namespaced_network_policy(s.namespace, network_policy_manifest(cid, s))
                    if s.storage_class:
                        annotations = {A_OWNER: "" if pool else owner, A_CREATED: f"{now:.3f}", A_EXPIRES: f"{expires:.3f}"}
                        self.core.create_namespaced_persistent_volume_claim(s.namespace, pvc_manifest(cid, s, annotations))
                    self.core.create_namespaced_pod(
                        s.namespace, pod_manifest(cid, POOL_OWNER if pool else owner, s, now=now, expires=expires, pool=pool, server=SERVER_TAG)
                    )
                pod = self.wait_running(cid)
                if self.closing.is_set() or (ticket is not None and not ticket.deliver(cid)):
                    raise Unavailable("the server is shutting down" if self.closing.is_set() else "the call was cancelled")
            except BaseException:
                with contextlib.suppress(Unavailable, ContainerExpired):
                    self.remove(cid)
                raise
        finally:
            with self._creates:
                self._active_creates -= 1
                self._creates.notify_all()
        return sandbox_record(pod, s), pod

    def wait_running(self, cid: str, *, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Poll until the pod runs. A pod that cannot be scheduled (no room: ``too_many_requests``),
        whose image cannot be had, or that ended says why at once instead of timing out."""
        deadline = time.monotonic() + timeout
        while True:
            pod = self._read_pod(cid)
            if pod is None:
                raise ContainerExpired(cid, "its pod was deleted while starting")
            status = pod.get("status") or {}
            phase = status.get("phase", "Pending")
            if phase == "Running" and all(c.get("ready") or (c.get("state") or {}).get("running")
                                          for c in status.get("containerStatuses") or [{}]):
                return pod
            if phase in ("Failed", "Succeeded"):
                raise Unavailable(f"the sandbox pod of {cid} ended ({phase}): {_why(pod)}")
            why = _why(pod)
            if any(reason in why for reason in _UNSCHEDULABLE):
                raise TooManyRequests(f"the cluster has no room for another sandbox: {why}")
            if any(reason in why for reason in _IMAGE_FAILURES):
                raise Unavailable(f"the sandbox pod of {cid} cannot start its image {self.settings.image}: {why}")
            if time.monotonic() > deadline:
                raise Unavailable(f"the sandbox pod of {cid} is not running after {timeout:.0f} s: {why}")
            if self.closing.is_set():
                raise Unavailable("the server is shutting down")
            time.sleep(POLL_SECONDS)

    def find(self, cid: str) -> tuple[SandboxRecord, dict[str, Any]]:
        """The running pod of ``cid``; rebuilt around its claim when the pod is gone, ended or was
        stopped idle (the claim says who owns it and until when). Raises ContainerExpired."""
        object_name(cid)  # not an id of ours: ContainerExpired
        pod = self._read_pod(cid)
        if pod is not None:
            if not self._mine(pod, cid):
                raise ContainerExpired(cid)
            record = sandbox_record(pod, self.settings)
            if record.expired:
                raise ContainerExpired(cid, "it expired at " + record.expires.isoformat())
            phase = (pod.get("status") or {}).get("phase", "Pending")
            if pod["metadata"].get("deletionTimestamp"):
                self.wait_gone(cid)  # being deleted: as good as gone (only its claim can bring it back)
            elif phase in ("Running", "Pending"):
                return record, (pod if phase == "Running" else self.wait_running(cid))
            else:
                # Ended (evicted, its agent exited, the node went away): only a claim brings the files back.
                log.warning("sandbox %s: its pod ended (%s: %s)", cid, phase, _why(pod))
                self._delete_pod(cid, wait=True)
        return self._revive(cid)

    def _revive(self, cid: str) -> tuple[SandboxRecord, dict[str, Any]]:
        s = self.settings
        pvc = self._read_pvc(cid)
        if pvc is None or not self._mine(pvc, cid) or pvc["metadata"].get("deletionTimestamp"):
            raise ContainerExpired(cid)  # (a claim being deleted would keep a new pod Pending for good)
        ann = pvc["metadata"].get("annotations") or {}
        try:
            created, expires, owner = float(ann[A_CREATED]), float(ann[A_EXPIRES]), ann[A_OWNER]
        except (KeyError, ValueError):
            raise ContainerExpired(cid, "its workspace claim's annotations are not a sandbox's") from None
        if time.time() >= expires or not owner:
            raise ContainerExpired(cid)
        from kubernetes.client.exceptions import ApiException

        with translate_k8s_errors("rebuilding a sandbox"):
            try:
                self.net.create_namespaced_network_policy(s.namespace, network_policy_manifest(cid, s))
            except ApiException as exc:
                if exc.status != 409:  # 409: it is there already
                    raise
            try:
                self.core.create_namespaced_pod(
                    s.namespace, pod_manifest(cid, owner, s, now=created, expires=expires, server=SERVER_TAG, started=time.time())
                )
            except ApiException as exc:
                if exc.status != 409:  # another server rebuilt it at the same moment: use theirs
                    raise
        pod = self.wait_running(cid)
        log.warning("sandbox %s: rebuilt its pod around its workspace claim", cid)
        return sandbox_record(pod, s), pod

    def claim(self, record: SandboxRecord, owner: str) -> None:
        """Hand a pool pod to ``owner``: one patch with the pod's resourceVersion as precondition,
        so two servers never both claim it (409: someone else did; the caller takes another)."""
        s = self.settings
        pod = self._read_pod(record.id)
        if pod is None or (pod["metadata"].get("annotations") or {}).get(A_OWNER, ""):
            raise Unavailable(f"pool sandbox {record.id} was taken or removed")
        patch = {"metadata": {"resourceVersion": pod["metadata"]["resourceVersion"],
                              "labels": {L_OWNER_HASH: owner_hash(owner), L_POOL: "0"},
                              "annotations": {A_OWNER: owner}}}
        with translate_k8s_errors("claiming a pool sandbox"):
            self.core.patch_namespaced_pod(object_name(record.id), s.namespace, patch)
            if s.storage_class:
                self.core.patch_namespaced_persistent_volume_claim(
                    object_name(record.id), s.namespace, {"metadata": {"annotations": {A_OWNER: owner}}})

    def stop(self, cid: str) -> None:
        """Idle: delete the pod and keep its claim (``find`` rebuilds it, files intact). Without a
        claim the files live only as long as the pod, so it keeps running."""
        if self.stoppable:
            self._delete_pod(cid, wait=True)

    def remove(self, cid: str) -> None:
        """The pod, its NetworkPolicy and its claim; absent objects are fine."""
        self._delete(cid, keep_workspace=False)

    def _delete_pod(self, cid: str, *, wait: bool) -> None:
        from kubernetes.client.exceptions import ApiException

        with translate_k8s_errors("removing a sandbox pod"):
            try:
                self.core.delete_namespaced_pod(object_name(cid), self.settings.namespace, grace_period_seconds=0)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        if wait:
            self.wait_gone(cid)

    def _delete(self, cid: str, *, keep_workspace: bool) -> None:
        from kubernetes.client.exceptions import ApiException

        s = self.settings
        name = object_name(cid)
        calls: list[Callable[[], Any]] = [
            lambda: self.core.delete_namespaced_pod(name, s.namespace, grace_period_seconds=0),
            lambda: self.net.delete_namespaced_network_policy(name, s.namespace),
        ]
        if not keep_workspace and s.storage_class:
            calls.append(lambda: self.core.delete_namespaced_persistent_volume_claim(name, s.namespace))
        with translate_k8s_errors("removing a sandbox"):
            for call in calls:
                try:
                    call()
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        self.leases.forget(cid)

    def wait_gone(self, cid: str, timeout: float = 60.0) -> bool:
        """Until the pod is deleted for good (False after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self._read_pod(cid) is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    def remove_installation(self) -> list[str]:
        """Every sandbox of this instance, expired or not (tests)."""
        s = self.settings
        selector = f"{MANAGED_BY}={MANAGER},{L_INSTANCE}={s.instance}"
        ids: set[str] = set()
        with translate_k8s_errors("listing sandboxes"):
            for items in (self.core.list_namespaced_pod(s.namespace, label_selector=selector).items,
                          self.net.list_namespaced_network_policy(s.namespace, label_selector=selector).items,
                          self.core.list_namespaced_persistent_volume_claim(s.namespace, label_selector=selector).items):
                ids |= {(i.metadata.labels or {}).get(L_ID, "") for i in items}
        for cid in sorted(ids - {""}):
            with contextlib.suppress(ContainerExpired):
                self.remove(cid)
        self._delete_lease()
        return sorted(ids - {""})

    def _delete_lease(self) -> None:
        """The installation's leader Lease (``k8s_lease``), when it is in ``lease_namespace``."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        from .k8s_lease import LEASE_PREFIX

        with translate_k8s_errors("removing the leader lease"):
            try:
                client.CoordinationV1Api(self.api_client).delete_namespaced_lease(LEASE_PREFIX + self.install, self.lease_namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def reap(self) -> list[str]:
        """Remove this instance's expired sandboxes, ended pool pods (their agent exits when its
        server falls silent), ended pods whose files died with them, and policies or claims whose
        sandbox is gone for good."""
        s = self.settings
        removed = []
        now = time.time()
        present = set()
        for record, pod in self.list():
            present.add(record.id)
            phase = (pod.get("status") or {}).get("phase", "Pending")
            ended = phase in ("Succeeded", "Failed")
            # A pool pod whose server process (on this host) is gone: only that server could have
            # handed it out, so nobody will; do not wait for its agent's pool-silence exit.
            orphan = record.pool and not server_alive(record.server)
            if record.expired or orphan or (ended and (record.pool or not s.storage_class)):
                self.remove(record.id)
                removed.append(record.id)
        selector = f"{MANAGED_BY}={MANAGER},{L_INSTANCE}={s.instance}"
        with translate_k8s_errors("reaping sandboxes"):
            policies = [self._serialize(p) for p in self.net.list_namespaced_network_policy(s.namespace, label_selector=selector).items]
            claims = ([self._serialize(c) for c in self.core.list_namespaced_persistent_volume_claim(s.namespace, label_selector=selector).items]
                      if s.storage_class else [])
        kept_claims = set()
        for claim in claims:
            cid = (claim["metadata"].get("labels") or {}).get(L_ID, "")
            data = _claim_data(claim)
            expired = data is not None and now >= data["expires"]
            if data is not None and not expired and data["owner"]:
                kept_claims.add(cid)
            # An expired claim goes at once (no create is between its claim and its pod); one
            # without an owner (a pool create's, or malformed) only after the grace.
            elif cid not in present and (expired or _age(claim) > self.orphan_grace):
                self.remove(cid)
                removed.append(cid)
        for policy in policies:
            cid = (policy["metadata"].get("labels") or {}).get(L_ID, "")
            if cid and cid not in present and cid not in kept_claims and cid not in removed and _age(policy) > self.orphan_grace:
                self.remove(cid)
                removed.append(cid)
        return removed

    def resumable(self, owner: str) -> list[str]:
        """``owner``'s unexpired sandboxes of this instance that no server is using (here: its lock;
        elsewhere: its hold on the pod), most recently used first."""
        s = self.settings
        selector = f"{MANAGED_BY}={MANAGER},{L_INSTANCE}={s.instance},{L_OWNER_HASH}={owner_hash(owner)},{L_POOL}=0"
        with translate_k8s_errors("listing sandboxes"):
            pods = [self._serialize(p) for p in self.core.list_namespaced_pod(s.namespace, label_selector=selector).items]
        candidates = []
        for pod in pods:
            try:
                record = sandbox_record(pod, s)
            except ContainerExpired:
                continue
            phase = (pod.get("status") or {}).get("phase", "Pending")
            if (record.owner != owner or record.expired or phase not in ("Running", "Pending")
                    or self.leases.in_use(record.id, pod)):
                continue
            used = max(self.leases.last_used(record.id) or 0.0, pod_last_used(pod) or 0.0, record.created.timestamp())
            candidates.append((used, record.id))
        # Stopped idle (the pod deleted, the claim kept): as resumable as on Docker; find rebuilds the pod.
        for cid, data in self.detached():
            if data["owner"] == owner and not self.leases.in_use(cid):
                candidates.append((max(self.leases.last_used(cid) or 0.0, data["created"]), cid))
        return [cid for _, cid in sorted(candidates, reverse=True)]

    # --- data path ----------------------------------------------------------------------------

    def attach(self, cid: str) -> PodAttachStream:
        """Attach to the agent (PID 1) with stdin, stdout and stderr; binary frames. Blocking."""
        from kubernetes.stream import stream
        from kubernetes.stream.ws_client import _IgnoredIO

        with translate_k8s_errors("attaching to a sandbox", cid):
            ws = stream(
                self.core.connect_get_namespaced_pod_attach,
                object_name(cid),
                self.settings.namespace,
                container=CONTAINER,
                stdin=True,
                stdout=True,
                stderr=True,
                tty=False,
                binary=True,  # text mode decodes frames as UTF-8 and corrupts binary payloads
                _preload_content=False,
            )
            # stream() cannot pass capture_all=False: without this, every stdout byte of a
            # long-lived stream would also pile up in the client's read_all() buffer.
            ws._all = _IgnoredIO()
        return PodAttachStream(ws, name=cid)

    async def open_stream(self, record: SandboxRecord, handle: Any = None) -> tuple[anyio.abc.ByteStream, bool]:
        # The Kubernetes stream protocol separates stdout from stderr itself: no Docker multiplexing.
        return await anyio.to_thread.run_sync(self.attach, record.id, abandon_on_cancel=True), False


def sandbox_record(pod: dict[str, Any], settings: PodSettings) -> SandboxRecord:
    """What a pod's labels and annotations say about its sandbox."""
    meta = pod["metadata"]
    labels = meta.get("labels") or {}
    ann = meta.get("annotations") or {}
    cid = labels.get(L_ID, meta["name"])
    try:
        created, expires = float(ann[A_CREATED]), float(ann[A_EXPIRES])
    except (KeyError, ValueError):
        raise ContainerExpired(cid, "its annotations are not a sandbox's") from None
    owner = ann.get(A_OWNER, "")
    return SandboxRecord(
        id=cid,
        ref=meta["name"],
        created=datetime.fromtimestamp(created, timezone.utc),
        expires=datetime.fromtimestamp(expires, timezone.utc),
        owner=owner,
        pool=labels.get(L_POOL) == "1" and owner == POOL_OWNER,
        quota="pvc" if settings.storage_class else "emptydir",
        status=((pod.get("status") or {}).get("phase") or "Pending").lower(),
        install=labels.get(L_INSTANCE, ""),
        server=ann.get(A_SERVER, ""),
    )


def _claim_data(claim: dict[str, Any]) -> dict[str, Any] | None:
    """What a workspace claim's annotations say: {owner, created, expires}; None when malformed."""
    ann = claim["metadata"].get("annotations") or {}
    try:
        return {"owner": ann.get(A_OWNER, ""), "created": float(ann[A_CREATED]), "expires": float(ann[A_EXPIRES])}
    except (KeyError, ValueError):
        return None


def _why(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    conditions = [c for c in status.get("conditions") or [] if c.get("status") == "False" and c.get("message")]
    # Not scheduled says why first; then the container's own state (ErrImageNeverPull, ...), which
    # says more than the Ready condition's "containers with unready status".
    for cond in conditions:
        if cond.get("type") == "PodScheduled":
            return f"{cond.get('reason', '')}: {cond['message']}"
    for cs in status.get("containerStatuses") or []:
        for state in (cs.get("state") or {}).values():
            if state and (state.get("reason") or state.get("message")):
                return f"{state.get('reason', '')}: {state.get('message', '')}".strip(": ")
    for cond in conditions:
        return f"{cond.get('reason', '')}: {cond['message']}"
    return status.get("reason") or status.get("message") or status.get("phase", "Pending")


def _age(obj: dict[str, Any]) -> float:
    stamp = obj["metadata"].get("creationTimestamp")
    if not stamp:
        return 0.0
    return time.time() - datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()

class PodAttachStream(anyio.abc.ByteStream):
    """The kubernetes client's (blocking) attach websocket as an anyio byte stream.

    One lock guards the TLS socket: OpenSSL objects must not be read and written from two threads at
    once. ``receive`` polls the socket without the lock and only takes it to read what is there, so a
    ``send`` waits at most for one frame read. stdout is the agent's frames; stderr (its log) is kept
    as a short tail for diagnostics.
    """

    POLL_SECONDS = 0.25

    def __init__(self, ws: Any, *, name: str) -> None:
        self._ws = ws
        self.name = name
        self._lock = threading.Lock()
        self._closed = False
        self.stderr_tail = b""
        # Our own limiters: a receive blocks a worker thread for as long as the agent is quiet, and
        # must not eat the default limiter's tokens the rest of the server needs.
        self._rx_limiter = anyio.CapacityLimiter(1)
        self._tx_limiter = anyio.CapacityLimiter(1)

    @property
    def subprotocol(self) -> str | None:
        return self._ws.subprotocol

    def _receive_blocking(self) -> bytes:
        from kubernetes.stream.ws_client import STDERR_CHANNEL, STDOUT_CHANNEL
        from websocket import WebSocketException

        ws = self._ws
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            sock = ws.sock.sock if ws.sock is not None else None
            if sock is None or not ws.is_open():
                raise anyio.EndOfStream
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                try:
                    readable, _, _ = select.select([sock], [], [], self.POLL_SECONDS)
                except (OSError, ValueError):  # closed under us
                    raise anyio.EndOfStream from None
                if not readable:
                    continue
            with self._lock:
                if self._closed:
                    raise anyio.ClosedResourceError
                try:
                    ws.update(timeout=0)
                except (WebSocketException, OSError) as exc:
                    log.debug("sandbox %s: attach stream broke: %s", self.name, exc)
                    raise anyio.BrokenResourceError from exc
                err = ws.read_channel(STDERR_CHANNEL)
                out = ws.read_channel(STDOUT_CHANNEL)
            if err:
                self.stderr_tail = (self.stderr_tail + err)[-8192:]
            if out:
                return bytes(out)
            if not ws.is_open():
                raise anyio.EndOfStream

    async def receive(self, max_bytes: int = 65536) -> bytes:
        # abandon_on_cancel: the poll returns within POLL_SECONDS of aclose(), so an abandoned
        # thread ends by itself.
        return await anyio.to_thread.run_sync(self._receive_blocking, abandon_on_cancel=True, limiter=self._rx_limiter)

    def _send_blocking(self, data: bytes) -> None:
        from websocket import WebSocketException

        with self._lock:
            if self._closed:
                raise anyio.ClosedResourceError
            if not self._ws.is_open():
                raise anyio.BrokenResourceError
            try:
                self._ws.write_stdin(bytes(data))
            except (WebSocketException, OSError) as exc:
                raise anyio.BrokenResourceError from exc

    async def send(self, item: bytes) -> None:
        await anyio.to_thread.run_sync(self._send_blocking, item, limiter=self._tx_limiter)

    async def send_eof(self) -> None:
        # Protocol v4 (all servers before 1.30) cannot half-close stdin; the agent's framing never
        # needs EOF, so there is nothing to send.
        return None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True

        from websocket import WebSocketException

        def close() -> None:
            with self._lock, contextlib.suppress(OSError, WebSocketException):
                self._ws.close(timeout=1)  # the close handshake; the kubelet answers at once

        await anyio.to_thread.run_sync(close, limiter=self._tx_limiter)
