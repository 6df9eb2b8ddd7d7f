"""Sandbox pods on a real cluster: hardening read back from the API, the agent over the attach
stream, limits and network as seen inside the pod, and removal without leftovers."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from mcp_codeexec.agent_client import AgentGone
from mcp_codeexec.engines.kubernetes import L_ID, L_INSTANCE, MANAGED_BY, MANAGER, object_name
from mcp_codeexec.errors import ContainerExpired

from .conftest import Running, running_sandbox

pytestmark = pytest.mark.anyio

GiB = 1024**3


async def bash(sandbox: Running, command: str) -> dict[str, Any]:
    reply = await sandbox.conn.request({"op": "bash", "command": command, "timeout": 30}, timeout=60)
    assert reply["type"] == "result", reply
    return reply["result"]


async def test_a_sandbox_pod_runs_with_the_hardening_fields_set(engine) -> None:
    async with running_sandbox(engine) as sandbox:
        ns = engine.settings.namespace
        pod = engine.api_client.sanitize_for_serialization(engine.core.read_namespaced_pod(object_name(sandbox.id), ns))
        spec, meta = pod["spec"], pod["metadata"]
        assert meta["labels"][MANAGED_BY] == MANAGER and meta["labels"][L_ID] == sandbox.id
        assert {"mcp-codeexec/owner", "mcp-codeexec/created-at", "mcp-codeexec/expires-at"} <= set(meta["annotations"])
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False
        assert spec["dnsPolicy"] == "None" and spec["dnsConfig"]["nameservers"] == ["127.0.0.1"]
        assert spec["activeDeadlineSeconds"] > 0
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 1000
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert all("hostPath" not in v for v in spec["volumes"])
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["workspace"]["emptyDir"]["sizeLimit"] == "5Gi"
        assert volumes["tmp"]["emptyDir"]["medium"] == "Memory"
        (container,) = spec["containers"]
        assert container["image"] == engine.settings.image and container["imagePullPolicy"] == "Never"
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsUser"] == 1000 and sc["runAsNonRoot"] is True
        limits = {"cpu": "1", "memory": "5Gi"}
        assert container["resources"]["limits"] == limits and container["resources"]["requests"] == limits
        assert pod["status"]["qosClass"] == "Guaranteed"

        policy = engine.api_client.sanitize_for_serialization(
            engine.net.read_namespaced_network_policy(object_name(sandbox.id), ns)
        )
        assert policy["spec"]["podSelector"] == {"matchLabels": {L_ID: sandbox.id}}
        assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
        assert not policy["spec"].get("ingress") and not policy["spec"].get("egress")


async def test_the_agent_answers_hello_and_bash_over_the_attach_stream(engine) -> None:
    async with running_sandbox(engine) as sandbox:
        hello = (await sandbox.conn.request({"op": "hello"}, timeout=30))["result"]
        assert hello["uid"] == 1000 and hello["workspace"] == "/workspace"
        reply = await bash(sandbox, "echo hi from $(id -u) in $PWD; echo oops >&2; exit 3")
        assert reply["stdout"].strip() == "hi from 1000 in /workspace"
        assert "oops" in reply["stderr"] and reply["return_code"] == 3
        # state carries between calls, as in the Docker backend's one long-lived shell
        await bash(sandbox, "export KEEP=kept; cd /tmp")
        assert (await bash(sandbox, "echo $KEEP $PWD"))["stdout"].strip() == "kept /tmp"
        # binary-safe both ways: every byte value survives the stream
        reply = await bash(sandbox, "python3 -c 'import sys; sys.stdout.write(bytes(range(256)).hex())'")
        assert reply["stdout"] == bytes(range(256)).hex()
        print(f"create -> agent hello: {sandbox.started:.2f} s")


async def test_a_large_upload_arrives_intact_over_the_attach_stream(engine) -> None:
    payload = os.urandom(3 * 1024 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 256 * 1024):
            yield payload[i : i + 256 * 1024]

    async with running_sandbox(engine) as sandbox:
        reply = await sandbox.conn.put_file("/workspace/blob.bin", chunks(), timeout=120)
        assert reply["type"] == "result", reply
        digest = (await bash(sandbox, "sha256sum /workspace/blob.bin"))["stdout"].split()[0]
        assert digest == hashlib.sha256(payload).hexdigest()


async def test_limits_are_read_inside_the_pod(engine) -> None:
    async with running_sandbox(engine) as sandbox:
        out = (
            await bash(
                sandbox,
                "if [ -f /sys/fs/cgroup/cpu.max ]; then cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max;"
                " else cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us"
                " /sys/fs/cgroup/cpu/cpu.cfs_period_us; fi",
            )
        )["stdout"].split()
        assert int(out[0]) == 5 * GiB
        quota, period = int(out[1]), int(out[2])
        assert quota == period  # one CPU
        status = (await bash(sandbox, "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status"))["stdout"]
        fields = dict(line.split(":\t") for line in status.strip().splitlines())
        assert int(fields["CapEff"], 16) == 0 and fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"
        reply = await bash(sandbox, "touch /rootfs-probe; echo rc=$?; touch /workspace/w /tmp/t && echo ok")
        assert "rc=1" in reply["stdout"] and "ok" in reply["stdout"]
        reply = await bash(sandbox, "ls /var/run/secrets/kubernetes.io 2>&1; echo rc=$?")
        assert "rc=2" in reply["stdout"]  # no service-account token mounted


async def test_the_pod_has_no_network_interface_but_lo(engine) -> None:
    # Read only: nothing here connects anywhere.
    async with running_sandbox(engine) as sandbox:
        dev = (await bash(sandbox, "cat /proc/net/dev"))["stdout"].splitlines()[2:]
        assert [line.split(":")[0].strip() for line in dev] == ["lo"]
        route = (await bash(sandbox, "cat /proc/net/route"))["stdout"].splitlines()
        assert route[1:] == []  # the header only: no route anywhere
        resolv = (await bash(sandbox, "cat /etc/resolv.conf"))["stdout"]
        assert [line.split()[1] for line in resolv.splitlines() if line.startswith("nameserver")] == ["127.0.0.1"]


async def test_delete_leaves_no_pod_or_network_policy(engine) -> None:
    ns = engine.settings.namespace
    selector = f"{MANAGED_BY}={MANAGER},{L_INSTANCE}={engine.settings.instance}"
    async with running_sandbox(engine) as sandbox:
        assert [r.id for r, _ in await anyio.to_thread.run_sync(engine.list)] == [sandbox.id]
        found, _ = await anyio.to_thread.run_sync(engine.find, sandbox.id)
        assert found.owner == "tester" and found.status == "running" and not found.expired
        assert len(engine.net.list_namespaced_network_policy(ns, label_selector=selector).items) == 1
    assert await anyio.to_thread.run_sync(engine.list) == []
    with pytest.raises(ContainerExpired):
        await anyio.to_thread.run_sync(engine.find, sandbox.id)
    assert engine.net.list_namespaced_network_policy(ns, label_selector=selector).items == []
    assert engine.core.list_namespaced_persistent_volume_claim(ns, label_selector=selector).items == []


async def test_a_call_in_flight_fails_promptly_when_its_pod_is_deleted(engine) -> None:
    async with running_sandbox(engine) as sandbox:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, engine.remove, sandbox.id)
            started = anyio.current_time()
            with pytest.raises(AgentGone):
                await sandbox.conn.request({"op": "bash", "command": "sleep 60"}, timeout=60)
            assert anyio.current_time() - started < 20
        assert sandbox.conn.closed.is_set()
