"""What the cluster refuses, as the caller sees it: a namespace ResourceQuota that forbids another pod
answers too_many_requests naming the quota; an image the node cannot have answers unavailable naming
the image. Nothing is left behind."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from mcp_codeexec import Sandbox
from mcp_codeexec.config import Settings
from mcp_codeexec.errors import TooManyRequests, Unavailable
from tests.support.backends import backend_settings

from .test_faults import engine_of, no_leftovers

pytestmark = pytest.mark.anyio


@pytest.fixture
def quota_namespace(kubeconfig: str) -> Iterator[str]:
    """A namespace of this test's own whose ResourceQuota allows no pod at all."""
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    name = "mcp-codeexec-quota-" + secrets.token_hex(4)
    api.create_namespace({"metadata": {"name": name}})
    api.create_namespaced_resource_quota(name, {"metadata": {"name": "no-more-pods"}, "spec": {"hard": {"pods": "0"}}})
    try:
        # Until the quota controller has filled in its status, admission answers "status unknown".
        deadline = time.monotonic() + 60
        while not (api.read_namespaced_resource_quota("no-more-pods", name).status or client.V1ResourceQuotaStatus()).hard:
            assert time.monotonic() < deadline, "the quota controller did not fill in the quota's status"
            time.sleep(0.2)
        yield name
    finally:
        api.delete_namespace(name)


async def test_a_resource_quota_that_forbids_another_pod_answers_too_many_requests_naming_it(
        tmp_path: Path, quota_namespace: str) -> None:
    settings = backend_settings("kubernetes", tmp_path, k8s_namespace=quota_namespace, k8s_network_check="off")
    engine = engine_of(settings)
    with pytest.raises(TooManyRequests) as caught:
        await anyio.to_thread.run_sync(lambda: engine.create("tester"))
    assert "exceeded quota: no-more-pods" in caught.value.message and "pods=0" in caught.value.message, caught.value.message
    # Through the lifecycle too (a Sandbox makes its pod at ``async with``): the same hosted error.
    with pytest.raises(TooManyRequests, match="exceeded quota"):
        async with Sandbox(settings):
            pass
    await no_leftovers(engine)  # the NetworkPolicy made before the refused pod is gone too


async def test_an_image_the_node_cannot_have_answers_unavailable_naming_it(tmp_path: Path, kubeconfig: str) -> None:
    missing = "mcp-codeexec-sandbox:no-such-tag-" + secrets.token_hex(3)
    settings: Settings = backend_settings("kubernetes", tmp_path, image=missing)
    engine = engine_of(settings)
    with anyio.fail_after(60), pytest.raises(Unavailable) as caught:
        await anyio.to_thread.run_sync(lambda: engine.create("tester"))
    assert missing in caught.value.message and "ErrImageNeverPull" in caught.value.message, caught.value.message
    await no_leftovers(engine)
