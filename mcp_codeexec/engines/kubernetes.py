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
import secrets
import select
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.abc

from ..errors import ContainerExpired, TooManyRequests, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

GiB = 1024**3
MiB = 1024**2

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "mcp-codeexec"
L_ID = "mcp-codeexec/id"
L_INSTANCE = "mcp-codeexec/instance"
L_OWNER_HASH = "mcp-codeexec/owner-hash"
A_OWNER = "mcp-codeexec/owner"
A_CREATED = "mcp-codeexec/created-at"
A_EXPIRES = "mcp-codeexec/expires-at"
NAME_PREFIX = "mcp-codeexec-"
CONTAINER = "agent"
WORKSPACE = "/workspace"


def new_container_id() -> str:
    """Same shape as the Docker backend's ids (``container_`` + 24 hex)."""
    return "container_" + secrets.token_hex(12)


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


def pod_manifest(cid: str, owner: str, settings: PodSettings, *, now: float, expires: float) -> dict[str, Any]:
    """The hardened pod of sandbox ``cid`` (a plain dict: what is sent is what is read here)."""
    name = object_name(cid)
    resources = {"cpu": _cpu(settings.cpus), "memory": _quantity(settings.memory_bytes)}
    if settings.storage_class:
        workspace: dict[str, Any] = {"name": "workspace", "persistentVolumeClaim": {"claimName": name}}
    else:
        workspace = {"name": "workspace", "emptyDir": {"sizeLimit": _quantity(settings.disk_bytes)}}
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # like the Docker backend's restart "no": a dead agent is a dead sandbox
        "terminationGracePeriodSeconds": 2,
        "activeDeadlineSeconds": int(settings.max_lifetime_seconds),  # the backstop when no server reaps
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
                "volumeMounts": [
                    {"name": "workspace", "mountPath": WORKSPACE},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
        "volumes": [
            workspace,
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": _quantity(settings.tmp_bytes)}},
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
            "labels": {**sandbox_labels(cid, settings), L_OWNER_HASH: owner_hash(owner)},
            "annotations": {A_OWNER: owner, A_CREATED: f"{now:.3f}", A_EXPIRES: f"{expires:.3f}"},
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


def pvc_manifest(cid: str, settings: PodSettings) -> dict[str, Any]:
    assert settings.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": object_name(cid),
            "namespace": settings.namespace,
            "labels": sandbox_labels(cid, settings),
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
            raise TooManyRequests(f"{doing}: the namespace quota is used up ({exc.reason})") from None
        if exc.status == 429:
            raise TooManyRequests(f"{doing}: the Kubernetes API is throttling ({exc.reason})") from None
        raise Unavailable(f"{doing} failed: Kubernetes API {exc.status} {exc.reason}", detail=body[:2000]) from None
    except (HTTPError, OSError) as exc:
        raise Unavailable(f"{doing} failed: the Kubernetes API is unreachable: {exc}") from None


async def _thread(fn: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(fn)


class KubernetesEngine:
    """Create, find, delete sandbox pods in one namespace and open their agent streams."""

    def __init__(self, settings: PodSettings, *, kubeconfig: str | None = None, context: str | None = None) -> None:
        from kubernetes import client, config

        self.settings = settings
        if kubeconfig is None:
            config.load_incluster_config()
            self.api_client = client.ApiClient()
        else:
            self.api_client = config.new_client_from_config(config_file=kubeconfig, context=context)
        self.core = client.CoreV1Api(self.api_client)
        self.net = client.NetworkingV1Api(self.api_client)

    def close(self) -> None:
        self.api_client.close()

    # --- lifecycle ----------------------------------------------------------------------------

    async def create(self, owner: str, *, cid: str | None = None, lifetime_seconds: float | None = None) -> PodSandbox:
        """NetworkPolicy first (the pod never runs unfenced), then the PVC if any, then the pod."""
        s = self.settings
        cid = cid or new_container_id()
        now = time.time()
        expires = now + (lifetime_seconds if lifetime_seconds is not None else s.max_lifetime_seconds)

        def create() -> dict[str, Any]:
            with translate_k8s_errors("creating a sandbox"):
                self.net.create_namespaced_network_policy(s.namespace, network_policy_manifest(cid, s))
                if s.storage_class:
                    self.core.create_namespaced_persistent_volume_claim(s.namespace, pvc_manifest(cid, s))
                pod = self.core.create_namespaced_pod(
                    s.namespace, pod_manifest(cid, owner, s, now=now, expires=expires)
                )
                return self.api_client.sanitize_for_serialization(pod)

        try:
            return _record(await _thread(create))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.delete(cid, keep_workspace=False, wait=False)
            raise

    async def wait_running(self, cid: str, *, timeout: float = 120.0) -> PodSandbox:
        """Poll until the pod runs; a pod that fails or cannot be scheduled says why."""
        deadline = time.monotonic() + timeout
        while True:
            pod = await self._read(cid)
            phase = pod["status"].get("phase", "Pending")
            if phase == "Running":
                return _record(pod)
            if phase in ("Failed", "Succeeded"):
                raise Unavailable(f"the sandbox pod of {cid} ended ({phase}): {_why(pod)}")
            if time.monotonic() > deadline:
                raise Unavailable(f"the sandbox pod of {cid} is not running after {timeout:.0f} s: {_why(pod)}")
            await anyio.sleep(0.1)

    async def find(self, cid: str) -> PodSandbox:
        """The pod of ``cid`` if it is this instance's and unexpired; else ContainerExpired."""
        rec = _record(await self._read(cid))
        if rec.labels.get(MANAGED_BY) != MANAGER or rec.labels.get(L_INSTANCE) != self.settings.instance:
            raise ContainerExpired(cid)
        if rec.expired:
            raise ContainerExpired(cid, "it has expired")
        return rec

    async def list(self) -> list[PodSandbox]:
        s = self.settings
        selector = f"{MANAGED_BY}={MANAGER},{L_INSTANCE}={s.instance}"

        def list_() -> list[dict[str, Any]]:
            with translate_k8s_errors("listing sandboxes"):
                pods = self.core.list_namespaced_pod(s.namespace, label_selector=selector)
                return [self.api_client.sanitize_for_serialization(p) for p in pods.items]

        return [_record(p) for p in await _thread(list_)]

    async def delete(self, cid: str, *, keep_workspace: bool = False, wait: bool = True, timeout: float = 60.0) -> None:
        """Remove the pod, its NetworkPolicy and (unless kept) its PVC; absent objects are fine."""
        from kubernetes.client.exceptions import ApiException

        s = self.settings
        name = object_name(cid)

        def delete() -> None:
            calls: list[Callable[[], Any]] = [
                lambda: self.core.delete_namespaced_pod(name, s.namespace, grace_period_seconds=0),
                lambda: self.net.delete_namespaced_network_policy(name, s.namespace),
            ]
            if not keep_workspace:
                calls.append(lambda: self.core.delete_namespaced_persistent_volume_claim(name, s.namespace))
            with translate_k8s_errors("removing a sandbox"):
                for call in calls:
                    try:
                        call()
                    except ApiException as exc:
                        if exc.status != 404:
                            raise

        await _thread(delete)
        if wait:
            with anyio.fail_after(timeout):
                while True:
                    try:
                        await self._read(cid)
                    except ContainerExpired:
                        return
                    await anyio.sleep(0.1)

    async def _read(self, cid: str) -> dict[str, Any]:
        name = object_name(cid)

        def read() -> dict[str, Any]:
            with translate_k8s_errors("looking up a sandbox", cid):
                pod = self.core.read_namespaced_pod(name, self.settings.namespace)
                return self.api_client.sanitize_for_serialization(pod)

        return await _thread(read)

    # --- data path ----------------------------------------------------------------------------

    async def open_stream(self, cid: str) -> PodAttachStream:
        """Attach to the agent (PID 1) with stdin, stdout and stderr; binary frames."""
        from kubernetes.stream import stream
        from kubernetes.stream.ws_client import _IgnoredIO

        name = object_name(cid)

        def attach() -> Any:
            with translate_k8s_errors("attaching to a sandbox", cid):
                ws = stream(
                    self.core.connect_get_namespaced_pod_attach,
                    name,
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
                return ws

        return PodAttachStream(await _thread(attach), name=cid)


def _record(pod: dict[str, Any]) -> PodSandbox:
    meta = pod["metadata"]
    labels = meta.get("labels") or {}
    ann = meta.get("annotations") or {}
    try:
        created, expires = float(ann[A_CREATED]), float(ann[A_EXPIRES])
    except (KeyError, ValueError):
        raise ContainerExpired(labels.get(L_ID, meta["name"]), "its annotations are not a sandbox's") from None
    return PodSandbox(
        id=labels.get(L_ID, ""),
        name=meta["name"],
        namespace=meta["namespace"],
        owner=ann.get(A_OWNER, ""),
        created=created,
        expires=expires,
        phase=(pod.get("status") or {}).get("phase", "Pending"),
        labels=labels,
    )


def _why(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") == "False" and cond.get("message"):
            return f"{cond.get('reason', '')}: {cond['message']}"
    for cs in status.get("containerStatuses") or []:
        for state in (cs.get("state") or {}).values():
            if state and (state.get("reason") or state.get("message")):
                return f"{state.get('reason', '')}: {state.get('message', '')}".strip(": ")
    return status.get("reason") or status.get("message") or status.get("phase", "Pending")


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
