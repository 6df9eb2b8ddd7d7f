"""``mcp-codeexec doctor`` on the kubernetes backend: the cluster, asked only what the server needs.

Checks, each one line (``doctor.Check``): the API server answers (its version); the namespace
exists; RBAC, by one SelfSubjectAccessReview per verb the engine uses, in that namespace only
(pods, pods/attach, networkpolicies, leases, and persistentvolumeclaims when a StorageClass is
configured); the configured RuntimeClass and StorageClass exist; with ``--start``, the network
self-check's canary pod (``k8s_netcheck``). Every call has the doctor's short deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Settings
    from ..doctor import Check

# (API group, resource, subresource, verbs): exactly what engines/kubernetes.py and k8s_lease.py call.
NEEDED: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("", "pods", "", ("create", "get", "list", "patch", "delete")),
    # The client attaches over a WebSocket (an HTTP GET: "get"); servers from 1.35 on also ask "create".
    ("", "pods", "attach", ("get", "create")),
    ("networking.k8s.io", "networkpolicies", "", ("create", "list", "delete")),
    ("coordination.k8s.io", "leases", "", ("get", "create", "update")),
)
NEEDED_WITH_CLAIMS = (("", "persistentvolumeclaims", "", ("create", "get", "list", "patch", "delete")),)


@dataclass
class ClusterApis:
    """The client objects the checks use (a fake in unit tests)."""

    version: Any
    core: Any
    authz: Any
    node: Any
    storage: Any
    client: Any = None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def connect(settings: Settings) -> ClusterApis:
    from kubernetes import client, config

    if settings.kubeconfig is None:
        config.load_incluster_config()
        api = client.ApiClient()
    else:
        api = config.new_client_from_config(config_file=settings.kubeconfig, context=settings.k8s_context)
    return ClusterApis(client.VersionApi(api), client.CoreV1Api(api), client.AuthorizationV1Api(api),
                       client.NodeV1Api(api), client.StorageV1Api(api), api)


def needed_permissions(settings: Settings) -> list[tuple[str, str, str, str]]:
    rules = NEEDED + (NEEDED_WITH_CLAIMS if settings.k8s_storage_class else ())
    return [(group, resource, sub, verb) for group, resource, sub, verbs in rules for verb in verbs]


def _status(exc: Any) -> int | None:
    return getattr(exc, "status", None)


def kubernetes_checks(settings: Settings, timeout: float, apis: ClusterApis | None = None,
                      start: bool = False) -> list[Check]:
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
    from urllib3.exceptions import HTTPError

    from ..doctor import Check

    ns = settings.k8s_namespace
    where = settings.kubeconfig or "the in-cluster service account"
    names = ("namespace", "RBAC", "RuntimeClass", "StorageClass", "network self-check")
    try:
        apis = apis or connect(settings)
    except (OSError, ValueError, ConfigException) as exc:
        return [Check("cluster", "FAIL", f"cannot load {where}: {exc}",
                      "set `kubeconfig` (MCP_CODEEXEC_KUBECONFIG, --kubeconfig) to a readable kubeconfig")] + \
               [Check(n, "SKIP", "no cluster to ask") for n in names]
    checks: list[Check] = []
    try:
        try:
            info = apis.version.get_code(_request_timeout=timeout)
        except (ApiException, HTTPError, OSError) as exc:
            return [Check("cluster", "FAIL", f"the API server of {where} does not answer: {_short(exc)}",
                          "check the kubeconfig's server address and that the cluster is up (`kubectl version`)")] + \
                   [Check(n, "SKIP", "no cluster to ask") for n in names]
        checks.append(Check("cluster", "OK", f"Kubernetes {getattr(info, 'git_version', '?')} ({where})"))
        checks.append(_namespace(apis, ns, timeout))
        checks.append(_rbac(apis, settings, timeout))
        checks.append(_runtime_class(apis, settings, timeout))
        checks.append(_storage_class(apis, settings, timeout))
        checks.append(_network(settings, start, ready=not any(c.status == "FAIL" for c in checks)))
    finally:
        apis.close()
    return checks


def _short(exc: BaseException) -> str:
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
    if status is not None:
        return f"{status} {reason}"
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _namespace(apis: ClusterApis, ns: str, timeout: float) -> Check:
    from kubernetes.client.exceptions import ApiException

    from ..doctor import Check

    try:
        apis.core.read_namespace(ns, _request_timeout=timeout)
    except ApiException as exc:
        if exc.status == 404:
            return Check("namespace", "FAIL", f"namespace {ns} does not exist", f"kubectl create namespace {ns}")
        if exc.status == 403:  # a namespaced Role cannot read the (cluster-scoped) namespace object
            return Check("namespace", "WARN", f"cannot read namespace {ns} (403: not granted, which is fine); "
                         "a missing namespace shows up as 404 on the first create")
        return Check("namespace", "FAIL", f"reading namespace {ns}: {_short(exc)}")
    return Check("namespace", "OK", f"namespace {ns} exists")


def _rbac(apis: ClusterApis, settings: Settings, timeout: float) -> Check:
    from kubernetes.client.exceptions import ApiException

    from ..doctor import Check
    from .k8s_lease import lease_namespace

    ns = settings.k8s_namespace
    missing = []
    for group, resource, sub, verb in needed_permissions(settings):
        where = lease_namespace(settings) if resource == "leases" else ns
        attrs = {"namespace": where, "verb": verb, "group": group, "resource": resource}
        if sub:
            attrs["subresource"] = sub
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": attrs}}
        try:
            review = apis.authz.create_self_subject_access_review(body, _request_timeout=timeout)
        except ApiException as exc:
            return Check("RBAC", "WARN", f"SelfSubjectAccessReview was refused ({_short(exc)}): permissions not checked")
        if not getattr(review.status, "allowed", False):
            missing.append(f"{verb} {resource}{'/' + sub if sub else ''}" + (f" (in {where})" if where != ns else ""))
    count = len(needed_permissions(settings))
    if missing:
        return Check("RBAC", "FAIL", f"in namespace {ns} this identity may not: {', '.join(missing)}",
                     "bind a Role with these rules (deploy/kubernetes/base/rbac.yaml has them): " + _role_rules(settings))
    claims = "" if settings.k8s_storage_class else " (no StorageClass: claims not needed)"
    leases = "" if lease_namespace(settings) == ns else f", leases in {lease_namespace(settings)}"
    return Check("RBAC", "OK", f"all {count} verbs the server uses are allowed in namespace {ns}{leases}{claims}")


def _role_rules(settings: Settings) -> str:
    rules = NEEDED + (NEEDED_WITH_CLAIMS if settings.k8s_storage_class else ())
    parts = []
    for group, resource, sub, verbs in rules:
        parts.append(f"{group or 'core'}/{resource}{'/' + sub if sub else ''}: {','.join(verbs)}")
    return "; ".join(parts)


def _cluster_object(read: Any, kind: str, name: str, timeout: float, fix: str) -> Check:
    from kubernetes.client.exceptions import ApiException

    from ..doctor import Check

    try:
        obj = read(name, _request_timeout=timeout)
    except ApiException as exc:
        if exc.status == 404:
            return Check(kind, "FAIL", f"{kind} {name} does not exist", fix)
        if exc.status == 403:  # cluster-scoped: a namespaced identity may not read it
            return Check(kind, "WARN", f"cannot read {kind} {name} (403, cluster-scoped); the first sandbox pod will tell")
        return Check(kind, "FAIL", f"reading {kind} {name}: {_short(exc)}")
    detail = getattr(obj, "handler", None) or getattr(obj, "provisioner", None)
    return Check(kind, "OK", f"{kind} {name} exists" + (f" ({detail})" if detail else ""))


def _runtime_class(apis: ClusterApis, settings: Settings, timeout: float) -> Check:
    from ..doctor import Check

    name = settings.k8s_runtime_class
    if not name:
        return Check("RuntimeClass", "SKIP", "none configured (k8s_runtime_class): the node's default runtime")
    return _cluster_object(apis.node.read_runtime_class, "RuntimeClass", name, timeout,
                           f"create RuntimeClass {name} (for gVisor: handler runsc) or unset k8s_runtime_class")


def _storage_class(apis: ClusterApis, settings: Settings, timeout: float) -> Check:
    from ..doctor import Check

    name = settings.k8s_storage_class
    if not name:
        return Check("StorageClass", "SKIP", "none configured (k8s_storage_class): /workspace is an emptyDir (a soft limit)")
    return _cluster_object(apis.storage.read_storage_class, "StorageClass", name, timeout,
                           "pick one of `kubectl get storageclass` for k8s_storage_class")


def _network(settings: Settings, start: bool, *, ready: bool) -> Check:
    from ..doctor import Check

    if settings.k8s_network_check == "off":
        return Check("network self-check", "SKIP", "k8s_network_check = off")
    if not start:
        return Check("network self-check", "SKIP", "starts a canary pod: run `mcp-codeexec doctor --start`")
    if not ready:
        return Check("network self-check", "SKIP", "not started: fix the failures above first")
    from ..errors import CodeExecError
    from . import build_engine
    from .k8s_netcheck import network_check

    try:
        engine = build_engine(settings)
    except CodeExecError as exc:
        return Check("network self-check", "FAIL", exc.message)
    try:
        verdict = network_check(engine)  # type: ignore[arg-type]
    except CodeExecError as exc:
        return Check("network self-check", "FAIL", f"the canary pod did not report: {exc.message}")
    finally:
        engine.close()  # type: ignore[attr-defined]
    if verdict.isolated:
        return Check("network self-check", "OK", verdict.summary)
    return Check("network self-check", "FAIL" if settings.k8s_network_check == "refuse" else "WARN", verdict.summary,
                 verdict.fix)


__all__ = ["NEEDED", "ClusterApis", "connect", "kubernetes_checks", "needed_permissions"]
