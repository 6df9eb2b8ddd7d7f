"""Kubernetes API failures become the hosted error family, naming the cause."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("kubernetes")

from kubernetes.client.exceptions import ApiException

from mcp_codeexec.engines.kubernetes import translate_k8s_errors
from mcp_codeexec.errors import ContainerExpired, TooManyRequests, Unavailable


def api_error(status: int, reason: str, message: str) -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps({"kind": "Status", "status": "Failure", "message": message, "reason": reason}).encode()
    return exc


def test_a_quota_refusal_is_too_many_requests_naming_the_quota() -> None:
    msg = 'pods "mcp-codeexec-ab" is forbidden: exceeded quota: no-more-pods, requested: pods=1, used: pods=0, limited: pods=0'
    with pytest.raises(TooManyRequests) as caught, translate_k8s_errors("creating a sandbox"):
        raise api_error(403, "Forbidden", msg)
    assert "exceeded quota: no-more-pods" in caught.value.message and "limited: pods=0" in caught.value.message


def test_other_refusals_are_unavailable_and_a_missing_sandbox_is_expired() -> None:
    with pytest.raises(Unavailable, match="403 Forbidden"), translate_k8s_errors("creating a sandbox"):
        raise api_error(403, "Forbidden", 'pods is forbidden: User "x" cannot create resource "pods"')
    with pytest.raises(ContainerExpired), translate_k8s_errors("looking up", "container_" + "0" * 24):
        raise api_error(404, "NotFound", "not found")
    with pytest.raises(TooManyRequests, match="throttling"), translate_k8s_errors("listing"):
        raise api_error(429, "TooManyRequests", "slow down")
