"""Shared machinery of the adversarial suite (see SECURITY.md).

Each module shares one or two sandboxes (module-scoped MCP clients over the in-memory transport,
each with its own server and container) so that the suite stays fast: a case that must leave the
container usable proves it by the next case running in the same container.

Both backends: a module whose shared sandboxes take the ``backend_name`` fixture (module-scoped,
tests/support/backends.py) runs every case on Docker, then on Kubernetes (pods; skipped without a
cluster); ``@docker_only("feature")`` marks a case whose Kubernetes run does not apply and
``@outside_kubernetes_subset("why")`` one left out of it to keep CI short.

Runtime awareness: ``GVISOR`` is true when the suite runs with ``MCP_CODEEXEC_RUNTIME=runsc``.
Where gVisor (Debian's 2022 build that CI installs) genuinely behaves differently, the assertion
says so next to it; nothing is skipped silently.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import docker
import psutil
import pytest

from mcp_codeexec.config import Settings
from mcp_codeexec.engines.docker import NAME_PREFIX
from tests.support.backends import backend_settings, on_kubernetes, remove_backend_installation
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import mcp_client

RUNTIME = os.environ.get("MCP_CODEEXEC_RUNTIME") or "runc"
GVISOR = RUNTIME == "runsc"
GiB = 1024**3
MiB = 1024**2

BASH = "bash_code_execution"
EDITOR = "text_editor_code_execution"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def adversarial_settings(data_dir: Path, backend: str = "docker", **overrides: Any) -> Settings:
    """The suite's settings: a short call limit (T = 5 s) so that time-limit cases stay cheap."""
    values: dict[str, Any] = {"call_timeout": 5.0}
    values.update(overrides)
    return backend_settings(backend, data_dir, **values)


class Sandbox:
    """One MCP client session (its own server, hence its own container) with checked helpers."""

    def __init__(self, client: Any, settings: Settings, name: str) -> None:
        self.client = client
        self.settings = settings
        self.name = name
        self.container_id: str | None = None

    async def bash(self, command: str, **extra: Any) -> Any:
        result = await self.client.call_tool(BASH, {"command": command, **extra})
        assert_hosted_shape(result.structured_content, BASH)
        container = (result.meta or {}).get("container")
        if container:
            self.container_id = container["id"]
        return result

    async def sh(self, command: str, **extra: Any) -> str:
        """Run a command that must succeed (a result with return code 0); its stdout."""
        result = await self.bash(command, **extra)
        sc = result.structured_content
        assert sc["type"] == "bash_code_execution_result", (command, result.content[0].text)
        assert sc["return_code"] == 0, (command, sc)
        return sc["stdout"]

    async def edit(self, **arguments: Any) -> Any:
        result = await self.client.call_tool(EDITOR, arguments)
        assert_hosted_shape(result.structured_content, EDITOR)
        return result

    async def usable(self, marker_file: str | None = None, content: str | None = None) -> None:
        """The definition of "usable": a follow-up call answers quickly and the files are intact."""
        started = time.monotonic()
        out = await self.sh("echo ok" + (f"; cat {marker_file}" if marker_file else ""))
        assert out == "ok\n" + (content or ""), out
        assert time.monotonic() - started < 15, "the follow-up call was slow"

    def docker_container(self) -> Any:
        assert self.container_id, "no call has run yet"
        assert not on_kubernetes(self.settings), "a Docker-only check ran on kubernetes (mark it @docker_only)"
        return docker.from_env().containers.get(NAME_PREFIX + self.container_id)


async def pod_pids_limit(sandbox: Sandbox) -> int:
    """The pids limit of ``sandbox``'s pod (Kubernetes), read on the node (this machine) from the pod's
    cgroup: the kubelet's ``podPidsLimit``, the only pids bound a pod has. Without one a fork bomb
    would take the node's PIDs (every other sandbox's and the host's), so such a case refuses to run."""
    from mcp_codeexec.engines import build_engine
    from mcp_codeexec.engines.kubernetes import KubernetesEngine, object_name
    from tests.support.backends import K8S_REQUIRED

    assert sandbox.container_id, "no call has run yet"
    engine = build_engine(sandbox.settings)
    assert isinstance(engine, KubernetesEngine)
    try:
        pod = await anyio.to_thread.run_sync(engine.core.read_namespaced_pod, object_name(sandbox.container_id), engine.settings.namespace)
    finally:
        engine.close()
    uid = pod.metadata.uid
    # cgroupfs: kubepods/pod<uid> (Guaranteed pods sit right under kubepods); systemd: kubepods-pod<uid_>.slice.
    found = [p for pattern in (f"*/pod{uid}/pids.max", f"*/kubepods-pod{uid.replace('-', '_')}.slice/pids.max")
             for root in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")) for p in root.glob(pattern)]
    if not found:
        pytest.skip(f"the cgroup of pod {pod.metadata.name} is not on this machine (a remote node): its pids limit is unknown")
    limit = found[0].read_text().strip()
    if limit == "max":
        why = "the node's kubelet sets no podPidsLimit: a fork bomb in a pod would take the node's PIDs (docs/KUBERNETES.md)"
        if K8S_REQUIRED:
            pytest.fail(why)
        pytest.skip(why)
    return int(limit)


@asynccontextmanager
async def open_sandbox(settings: Settings, name: str) -> AsyncIterator[Sandbox]:
    async with mcp_client("memory", settings) as client:
        sandbox = Sandbox(client, settings, name)
        await sandbox.sh("true")  # create the container now, not inside the first timed case
        yield sandbox


@asynccontextmanager
async def sandboxes(tmp_path_factory: pytest.TempPathFactory, name: str, count: int, backend: str = "docker",
                    **overrides: Any) -> AsyncIterator[list[Sandbox]]:
    """``count`` sandboxes (separate servers and containers, or pods) sharing one data directory."""
    from contextlib import AsyncExitStack

    settings = adversarial_settings(tmp_path_factory.mktemp(name if backend == "docker" else f"{name}-{backend}"), backend, **overrides)
    try:
        async with AsyncExitStack() as stack:
            boxes = [await stack.enter_async_context(open_sandbox(settings, f"{name}-{i}")) for i in range(count)]
            yield boxes
    finally:
        remove_backend_installation(settings)


# --- the host --------------------------------------------------------------------------------------


@dataclass
class HostSample:
    mem_available: int
    disk_free: int
    pids: int

    @classmethod
    def take(cls, path: Path) -> HostSample:
        return cls(psutil.virtual_memory().available, psutil.disk_usage(str(path)).free, len(psutil.pids()))


@dataclass
class HostWatch:
    """Samples the host every 0.2 s while a case runs: free memory, free disk, process count."""

    path: Path
    before: HostSample = field(init=False)
    low_mem: int = field(init=False)
    low_disk: int = field(init=False)
    high_pids: int = field(init=False)
    after: HostSample | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.before = HostSample.take(self.path)
        self.low_mem, self.low_disk, self.high_pids = self.before.mem_available, self.before.disk_free, self.before.pids

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            s = HostSample.take(self.path)
            self.low_mem = min(self.low_mem, s.mem_available)
            self.low_disk = min(self.low_disk, s.disk_free)
            self.high_pids = max(self.high_pids, s.pids)

    @contextmanager
    def running(self) -> Iterator[HostWatch]:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self.after = self._settled()

    def _settled(self, *, within: float = 3.0) -> HostSample:
        """The host after the case, once a burst of exiting processes is gone: the kernel tears down
        and reaps hundreds of killed processes over tens of milliseconds, so the first sample may
        still count them. A leak stays up the whole ``within`` and still fails the bound."""
        end = time.monotonic() + within
        sample = HostSample.take(self.path)
        while sample.pids > self.before.pids + 50 and time.monotonic() < end:
            time.sleep(0.1)
            sample = HostSample.take(self.path)
        return sample

    def assert_bounded(
        self, *, mem_during: int = 1 * GiB, mem_after: int = 1 * GiB, disk_during: int = 1 * GiB,
        disk_after: int = 1 * GiB, pids_during: int = 300, pids_after: int = 150,
    ) -> None:
        """The host stayed within bounds. The slack absorbs other work on a shared CI machine; each
        case passes bounds that a failed limit (a runaway bomb) would clearly break."""
        assert self.after is not None
        b, a = self.before, self.after
        assert self.low_mem >= b.mem_available - mem_during, f"host free memory fell by {(b.mem_available - self.low_mem) / MiB:.0f} MiB"
        assert a.mem_available >= b.mem_available - mem_after, f"host free memory is down {(b.mem_available - a.mem_available) / MiB:.0f} MiB after"
        assert self.low_disk >= b.disk_free - disk_during, f"host free disk fell by {(b.disk_free - self.low_disk) / MiB:.0f} MiB"
        assert a.disk_free >= b.disk_free - disk_after, f"host free disk is down {(b.disk_free - a.disk_free) / MiB:.0f} MiB after"
        assert self.high_pids <= b.pids + pids_during, f"host process count rose by {self.high_pids - b.pids}"
        assert a.pids <= b.pids + pids_after, f"host process count is up {a.pids - b.pids} after"


@pytest.fixture
def host(tmp_path: Path) -> HostWatch:
    return HostWatch(tmp_path)


# --- another session keeps answering ---------------------------------------------------------------


@dataclass
class Pinger:
    answers: list[tuple[float, str]] = field(default_factory=list)


@asynccontextmanager
async def keeps_answering(other: Sandbox, *, interval: float = 0.5, max_latency: float = 10.0) -> AsyncIterator[Pinger]:
    """While the body runs, ``other`` answers ``echo ok`` again and again, each within ``max_latency``."""
    pinger = Pinger()
    done = anyio.Event()

    async def loop() -> None:
        while not done.is_set():
            started = time.monotonic()
            with anyio.fail_after(max_latency + 20):
                result = await other.bash("echo ok")
            took = time.monotonic() - started
            text = result.structured_content.get("stdout", result.content[0].text)
            pinger.answers.append((took, text))
            with anyio.move_on_after(interval):
                await done.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(loop)
        try:
            yield pinger
        finally:
            done.set()
    assert pinger.answers, "the other session was never asked"
    bad = [(round(t, 2), text) for t, text in pinger.answers if text != "ok\n" or t > max_latency]
    assert not bad, f"another session stopped answering promptly: {bad}"
