"""Resource exhaustion and process lifecycle (ADVERSARIAL.md 1-4, 7-11, 29-31; security.md §8 A, B).

Two sandboxes share this module: ``victim`` takes every attack, in order, and must stay usable
(each case starts by checking the files an earlier case left); ``neighbour`` is another session
that must keep answering ``echo ok`` during the attacks. T (the call limit) is 5 s; the victim has
a 1 GiB memory limit so that a memory bomb is killed in about a second (the default 5 GiB limit is
exercised once, in ``test_memory_bomb_at_the_default_limit``).

Both backends (``backend_name``): on Kubernetes the pair are pods, and the subset that runs there is
the one whose outcome depends on the engine — the fork bomb against the pod's pids limit, memory
bombs against its memory limit, the time limit, PID 1's protection — each followed by the next call
answering; ``@docker_only`` and ``@outside_kubernetes_subset`` say why each other case is not run there.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from tests.adversarial.conftest import GVISOR, GiB, HostWatch, MiB, Sandbox, keeps_answering, pod_pids_limit, sandboxes
from tests.support.backends import docker_only, on_kubernetes, outside_kubernetes_subset

pytestmark = pytest.mark.anyio

T = 5.0
GRACE = 5.0  # TERM grace, sweep, drain and the round trip, generously

LEFTOVERS = "ps -eo pid=,ppid=,comm= | awk -v me=$$ '$1 != 1 && $1 != me && $2 != me'"
"""Every process in the container except the agent (PID 1) and this probe (its shell and the
shell's children: ``ps`` and ``awk``, which may still be a forked ``bash`` when ps looks)."""


@pytest.fixture(scope="module")
async def pair(tmp_path_factory: pytest.TempPathFactory, docker_engine: None, backend_name: str) -> AsyncIterator[tuple[Sandbox, Sandbox]]:
    # /tmp is 64 MiB here (512 MiB by default) so that filling it stays well inside T under gVisor,
    # whose tmpfs writes can be as slow as ~40 MB/s on a busy machine.
    async with sandboxes(tmp_path_factory, "resources", 2, backend_name, memory_bytes=1 * GiB, tmp_bytes=64 * MiB) as (victim, neighbour):
        await victim.sh("echo precious > /workspace/keep.txt")
        yield victim, neighbour


@pytest.fixture
def victim(pair: tuple[Sandbox, Sandbox]) -> Sandbox:
    return pair[0]


@pytest.fixture
def neighbour(pair: tuple[Sandbox, Sandbox]) -> Sandbox:
    return pair[1]


async def leftovers(sandbox: Sandbox) -> str:
    return await sandbox.sh(LEFTOVERS)


async def recover(victim: Sandbox, result) -> None:
    """After a case: the victim answers, its files are intact and nothing of the case survives."""
    await victim.usable("/workspace/keep.txt", "precious\n")
    assert await leftovers(victim) == ""


def ended_by_gvisor_crash(result) -> bool:
    """gVisor (runsc 2022-12-19, the Debian build CI installs) does not survive hitting the pids
    cgroup limit or the memory limit: the whole sandbox exits (``urpc ... WaitPID failed: EOF``,
    or OOMKilled). The server then reports ``unavailable`` for the call in flight and the next call
    starts the container again with its workspace intact. runc never takes this path."""
    sc = result.structured_content
    return GVISOR and sc["type"].endswith("_error") and sc["error_code"] == "unavailable"


# --- 1. fork bomb ----------------------------------------------------------------------------------


async def test_fork_bomb_ends_within_the_limit_and_the_container_works_after(victim: Sandbox, neighbour: Sandbox, host: HostWatch) -> None:
    # On Kubernetes the bound is the node's (the kubelet's podPidsLimit): refused where there is none.
    pids_limit = await pod_pids_limit(victim) if on_kubernetes(victim.settings) else victim.settings.pids_limit
    with host.running():
        async with keeps_answering(neighbour):
            started = time.monotonic()
            literal = await victim.bash(":(){ :|:& };:")
            # The literal bomb backgrounds itself and returns; a sustained one keeps the call open
            # against the pids limit until the deadline.
            sustained = await victim.bash("bomb(){ bomb | bomb & }; bomb; sleep 3; echo survived")
            took = time.monotonic() - started
    for result in (literal, sustained):
        sc = result.structured_content
        if not ended_by_gvisor_crash(result):
            assert sc["type"] == "bash_code_execution_result" or sc["error_code"] == "execution_time_exceeded", sc
        if sc["type"] == "bash_code_execution_result" and sc["stderr"]:
            assert "fork" in sc["stderr"] and "Resource temporarily unavailable" in sc["stderr"]
    assert took < 2 * (T + GRACE)
    await recover(victim, sustained)
    # Host processes: at most the pids limit of the bomb (plus slack for the CI machine).
    host.assert_bounded(pids_during=pids_limit + 300)


def _pids_in_cgroup(sandbox: Sandbox) -> int:
    """Tasks (processes and threads) the container's pids cgroup counts now, read on the host."""
    full_id = sandbox.docker_container().id
    for path in (Path(f"/sys/fs/cgroup/pids/docker/{full_id}/pids.current"), Path(f"/sys/fs/cgroup/system.slice/docker-{full_id}.scope/pids.current")):
        if path.exists():
            return int(path.read_text())
    pytest.skip("the container's pids cgroup is not where runc on cgroupfs puts it")


@pytest.mark.skipif(GVISOR, reason="gVisor's tasks live in its Sentry; the host cgroup does not count them one by one")
@docker_only("reads the container's pids cgroup on the host by its Docker id")
async def test_a_result_finds_the_container_quiet(victim: Sandbox) -> None:
    """The sweep waits until the killed processes are gone (torn down and reaped) before the call
    answers, so the moment a result arrives nothing of the call is left, not even exiting."""
    await victim.sh("true")
    baseline = _pids_in_cgroup(victim)
    out = await victim.sh("for i in $(seq 300); do sleep 1000 & done; echo started")
    after = _pids_in_cgroup(victim)
    assert out == "started\n"
    assert after <= baseline + 2, (baseline, after)  # + the next call's bash, started ahead of time
    await recover(victim, None)


@outside_kubernetes_subset("the pod's pids limit is shown by the fork bomb")
async def test_thread_bomb_hits_the_pids_limit(victim: Sandbox, host: HostWatch) -> None:
    with host.running():
        result = await victim.bash(
            "python3 -c $'import threading,time\\nn=0\\ntry:\\n while True:\\n  "
            "threading.Thread(target=time.sleep,args=(1e6,),daemon=True).start(); n+=1\\n"
            "except RuntimeError as e:\\n print(\"stopped\", n, e)'"
        )
    sc = result.structured_content
    if GVISOR:
        # gVisor does not fail thread creation at the pids limit: its threads are goroutines of the
        # Sentry; the host-side pids cgroup then stops the Sentry (the sandbox exits: unavailable)
        # or the bomb runs to the time limit. Either way the host stays bounded and the next call works.
        assert sc["type"] == "bash_code_execution_result" or sc["error_code"] in ("unavailable", "execution_time_exceeded"), sc
    else:
        assert sc["type"] == "bash_code_execution_result", sc
        assert sc["stdout"].startswith("stopped") and "can't start new thread" in sc["stdout"]
        assert int(sc["stdout"].split()[1]) < victim.settings.pids_limit  # the pids cgroup counts threads
    await recover(victim, result)
    host.assert_bounded(pids_during=victim.settings.pids_limit + 300)


# --- 2. memory bomb --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    ['python3 -c "b=bytearray(8*2**30)"', "python3 -c $'l=[]\\nwhile True: l.append(bytearray(10**7))'"],
    ids=["bytearray-8g", "slow-leak"],
)
async def test_memory_bomb_is_killed_inside_the_sandbox(victim: Sandbox, neighbour: Sandbox, host: HostWatch, command: str) -> None:
    limit = victim.settings.memory_bytes
    with host.running():
        async with keeps_answering(neighbour):
            result = await victim.bash(command)
    sc = result.structured_content
    if not ended_by_gvisor_crash(result):
        assert sc["type"] == "bash_code_execution_result", sc
        assert sc["return_code"] == 137 or (sc["return_code"] != 0 and "MemoryError" in sc["stderr"]), sc
    await recover(victim, result)
    assert int((await victim.sh("cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || echo " + str(limit))).strip()) == limit
    # The 8 GiB request never reached the host: free memory fell by at most the limit (plus slack).
    host.assert_bounded(mem_during=limit + 1 * GiB, mem_after=1 * GiB)


@outside_kubernetes_subset("a memory bomb is shown at 1 GiB; the 5 GiB limit is read inside the pod (test_backends.py)")
async def test_memory_bomb_at_the_default_limit(tmp_path_factory: pytest.TempPathFactory, docker_engine: None, host: HostWatch,
                                                backend_name: str) -> None:
    """The hosted limit (5 GiB) with a call limit long enough to reach it (~15 s on a small VM)."""
    async with sandboxes(tmp_path_factory, "membomb", 1, backend_name, call_timeout=60.0) as (box,):
        assert box.settings.memory_bytes == 5 * GiB
        await box.sh("echo kept > k.txt")
        with host.running():
            result = await box.bash('python3 -c "b=bytearray(8*2**30)"')
        sc = result.structured_content
        if not ended_by_gvisor_crash(result):
            assert sc["type"] == "bash_code_execution_result", sc
            assert sc["return_code"] == 137 or "MemoryError" in sc["stderr"], sc
        await box.usable("k.txt", "kept\n")
    host.assert_bounded(mem_during=6 * GiB, mem_after=1 * GiB)


# --- 3. disk fill ----------------------------------------------------------------------------------


@docker_only("the workspace's hard 5 GiB is a loop-device quota; a pod's emptyDir sizeLimit is soft (the kubelet evicts after the fact)")
async def test_disk_fill_stops_near_5_gib_and_deleting_frees_it(victim: Sandbox, host: HostWatch) -> None:
    quota = victim.settings.disk_bytes
    with host.running():
        # fallocate reserves most of the quota at once; dd then writes real blocks until ENOSPC;
        # a second fallocate finds nothing left.
        filled = await victim.bash(
            f"fallocate -l {quota - 200 * MiB} /workspace/big; echo fallocate=$?; "
            "dd if=/dev/zero of=/workspace/big2 bs=1M count=8000 2>&1 | grep -q 'No space left' && echo dd=ENOSPC; "
            "fallocate -l 6G /workspace/big3; echo again=$?; "
            "sync; df -B1 --output=used,avail /workspace | tail -1"
        )
        sc = filled.structured_content
        assert sc["type"] == "bash_code_execution_result", sc
        assert "fallocate=0" in sc["stdout"] and "dd=ENOSPC" in sc["stdout"] and "again=1" in sc["stdout"], sc
        assert "No space left on device" in sc["stderr"], sc
        used, avail = map(int, sc["stdout"].split()[-2:])
        assert 0.95 * quota <= used <= 1.05 * quota and avail < 64 * MiB, (used, avail)
        # The container still works with a full disk (the agent's own state lives elsewhere).
        await victim.usable("/workspace/keep.txt", "precious\n")
        freed = await victim.sh("rm -f /workspace/big /workspace/big2 /workspace/big3; sync; df -B1 --output=used /workspace | tail -1")
        assert int(freed) < 64 * MiB
    await victim.usable("/workspace/keep.txt", "precious\n")
    # The host never lost more than the quota and got (nearly) all of it back after the delete.
    host.assert_bounded(disk_during=quota + 1 * GiB, disk_after=1 * GiB)


@docker_only("the loop-device workspace image on the host")
async def test_disk_fill_releases_the_host_blocks_of_the_workspace_image(victim: Sandbox) -> None:
    """Writes that were deleted inside the sandbox must not stay allocated in the host-side
    workspace image (the loop mount discards freed blocks)."""
    if victim.docker_container().labels.get("io.mcp-codeexec.quota") != "loop":
        pytest.skip("workspaces are plain Docker volumes here (no root or no mkfs.ext4): no image file")
    image = Path(victim.settings.volumes_dir) / f"{victim.container_id}.img"
    size = (100 if GVISOR else 300) * MiB  # gVisor writes through its gofer at ~50 MB/s: stay well inside T
    await victim.sh(f"head -c {size} /dev/zero > /workspace/w.bin; sync")
    grown = image.stat().st_blocks * 512
    assert grown >= size  # the blocks are real on the host (the image is sparse otherwise)
    await victim.sh("rm /workspace/w.bin; sync")
    deadline = time.monotonic() + 10
    while image.stat().st_blocks * 512 > grown - 0.8 * size and time.monotonic() < deadline:
        await anyio.sleep(0.2)
    assert image.stat().st_blocks * 512 <= grown - 0.8 * size, "deleted blocks stayed allocated on the host"


@docker_only("the workspace's own inode table (a loop-device ext4); an emptyDir's inodes are the node's filesystem's")
async def test_inode_exhaustion_is_bounded_by_the_workspace_filesystem(victim: Sandbox, host: HostWatch) -> None:
    with host.running():
        result = await victim.bash(
            "python3 -c $'import os\\nos.makedirs(\"/workspace/i\",exist_ok=True)\\nn=0\\ntry:\\n"
            " while True: open(f\"/workspace/i/{n}\",\"w\").close(); n+=1\\nexcept OSError as e: print(n, e.errno)'"
        )
    sc = result.structured_content
    # Either the inode table (ENOSPC, errno 28) ends it, or the time limit does: both are bounded.
    if sc["type"] == "bash_code_execution_result":
        assert sc["stdout"].split()[1] == "28", sc
    else:
        assert sc["error_code"] == "execution_time_exceeded", sc
    cleaned = await victim.bash("rm -rf /workspace/i; echo cleaned")
    if cleaned.structured_content["type"].endswith("_error"):  # a huge directory may take more than T
        assert cleaned.structured_content["error_code"] == "execution_time_exceeded"
        cleaned = await victim.bash("rm -rf /workspace/i; echo cleaned")
    assert cleaned.structured_content["stdout"] == "cleaned\n"
    await recover(victim, cleaned)
    host.assert_bounded()


# --- 4. CPU spin -----------------------------------------------------------------------------------


def cpu_usage_ns(sandbox: Sandbox) -> int:
    """The container's CPU time as the host's cgroup sees it (works for runc and runsc alike)."""
    docker_id = sandbox.docker_container().id
    return int(Path(f"/sys/fs/cgroup/cpuacct/docker/{docker_id}/cpuacct.usage").read_text())


@docker_only("reads the container's cpuacct cgroup on the host by its Docker id; the pod's CPU limit is read inside it (test_backends.py)")
async def test_cpu_spin_on_all_cores_is_limited_to_one_cpu_and_killed_at_the_end(victim: Sandbox, neighbour: Sandbox) -> None:
    async with keeps_answering(neighbour):
        before, started = cpu_usage_ns(victim), time.monotonic()
        result = await victim.bash("for i in $(seq 8); do (while :; do :; done) & done; sleep 2")
        wall = time.monotonic() - started
        used = (cpu_usage_ns(victim) - before) / 1e9
    assert result.structured_content["type"] == "bash_code_execution_result"
    assert used <= 1.0 * wall + 0.5, f"{used:.2f} s of CPU in {wall:.2f} s: more than one CPU"
    # The spinners died with the call: no CPU is used afterwards.
    assert await leftovers(victim) == ""
    idle_from = cpu_usage_ns(victim)
    await anyio.sleep(1.0)
    assert (cpu_usage_ns(victim) - idle_from) / 1e9 < 0.2


# --- 7-9, 29. time limits and processes that try to outlive the call -------------------------------


async def test_sleep_past_the_limit_is_execution_time_exceeded(victim: Sandbox) -> None:
    started = time.monotonic()
    result = await victim.bash("sleep 100000")
    took = time.monotonic() - started
    assert result.structured_content == {"type": "bash_code_execution_tool_result_error", "error_code": "execution_time_exceeded"}
    assert T <= took < T + GRACE
    await recover(victim, result)


@pytest.mark.parametrize(
    "command",
    [
        "trap '' TERM; sleep 1000",
        "trap '' TERM INT HUP; while :; do :; done",
        "python3 -c $'import signal,time\\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\\nwhile True: time.sleep(1)'",
    ],
    ids=["bash-sleep", "bash-busy-loop", "python"],
)
@outside_kubernetes_subset("the agent's own kill at the limit, shown there by the plain sleep")
async def test_a_process_ignoring_sigterm_is_still_killed_at_the_limit(victim: Sandbox, command: str) -> None:
    started = time.monotonic()
    result = await victim.bash(command)
    assert result.structured_content["error_code"] == "execution_time_exceeded"
    assert time.monotonic() - started < T + GRACE
    await recover(victim, result)


@pytest.mark.parametrize(
    "command",
    [
        "nohup sleep 100000 & echo started",
        "(setsid sleep 10000 &); nohup sleep 10001 >/dev/null 2>&1 & echo started",
        "setsid sleep 1000 & echo started",
        (
            "python3 -c $'import os,time\\nif os.fork(): os._exit(0)\\nos.setsid()\\nif os.fork(): os._exit(0)\\n"
            "os.closerange(0,1024)\\ntime.sleep(10**6)'; echo started"
        ),
        "sleep 30 & echo started",  # a background child holding stdout
        "(trap '' TERM HUP; exec -a daemon sleep 1000) & disown; echo started",
    ],
    ids=["nohup", "setsid-and-nohup", "setsid", "double-fork-closed-fds", "child-holding-stdout", "disowned-term-ignoring"],
)
@outside_kubernetes_subset("the agent's own sweep, the same in a pod; shown there by kill -9 -1")
async def test_background_processes_do_not_hold_the_call_and_are_gone_after(victim: Sandbox, command: str) -> None:
    started = time.monotonic()
    result = await victim.bash(command)
    took = time.monotonic() - started
    assert result.structured_content["stdout"] == "started\n"
    assert took < 3.0, f"the call stayed open {took:.1f} s for a background process"
    await recover(victim, result)


async def test_the_containers_own_long_lived_process_survives_the_sweep(victim: Sandbox) -> None:
    """Its "own long-lived process" is the agent (PID 1): the sweep after every call, which kills
    everything else, leaves it running, and so does user code signalling everything it can."""
    pid1 = (await victim.sh("ps -o lstart= -p 1")).strip()
    result = await victim.bash("kill -9 -1; kill -KILL -1; kill -STOP -1; echo unreachable")
    assert result.structured_content["type"] == "bash_code_execution_result"  # the shell itself dies or not: a result
    await recover(victim, result)
    assert (await victim.sh("ps -o lstart= -p 1")).strip() == pid1


@pytest.mark.parametrize("command", ["kill -9 1", "pkill -9 -u sandbox", "kill -STOP 1; sleep 1; echo still"])
async def test_user_code_cannot_kill_the_agent(victim: Sandbox, command: str) -> None:
    pid1 = (await victim.sh("ps -o lstart= -p 1")).strip()
    result = await victim.bash(command)
    if GVISOR:
        # gVisor (runsc 2022-12-19) does not give PID 1 the kernel's init protection (signals with a
        # default action sent from inside its pid namespace are dropped): the agent dies, the sandbox
        # exits, the call gets `unavailable` and the next call restarts the container, files intact.
        # runc keeps the agent alive (below). Recommend a current runsc for multi-tenant use.
        # SIGSTOP is not fatal: the agent stops answering, the call in flight ends at the host-side
        # deadline (T + 30 s) with `unavailable`, and the next call finds the agent silent and
        # restarts the container (after the 30 s hello timeout).
        sc = result.structured_content
        assert sc["type"] == "bash_code_execution_result" or sc["error_code"] == "unavailable", sc
        if "STOP" in command:
            with anyio.fail_after(90):
                woken = await victim.bash("echo woken")
            assert woken.structured_content.get("stdout") == "woken\n", woken.content[0].text
        await recover(victim, result)
        return
    assert result.structured_content["type"] == "bash_code_execution_result"
    await recover(victim, result)
    assert (await victim.sh("ps -o lstart= -p 1")).strip() == pid1


# --- 10. zombies ------------------------------------------------------------------------------------


@outside_kubernetes_subset("the agent reaps as PID 1, the same in a pod")
async def test_thousands_of_zombies_are_reaped(victim: Sandbox, host: HostWatch) -> None:
    # As many orphans as fit in 3 s (5000 on runc; gVisor forks more slowly), each a zombie until PID 1 reaps it.
    with host.running():
        made = await victim.sh(
            "n=0; end=$((SECONDS+3)); while [ $n -lt 5000 ] && [ $SECONDS -lt $end ]; do (true &); n=$((n+1)); done; "
            "echo $n; ps -eo stat= | grep -c '^Z' || true"
        )
    count, zombies = map(int, made.split())
    # gVisor forks about 30 processes a second (runc: thousands), so it makes far fewer in 3 s.
    assert count >= (50 if GVISOR else 1000), count
    assert zombies < 50, f"{zombies} zombies were left unreaped while the call ran"
    assert int((await victim.sh("ps -eo stat= | grep -c '^Z' || true")).strip()) == 0
    python = await victim.sh(
        f"python3 -c $'import os,time\\nfor _ in range({50 if GVISOR else 300}):\\n  os.fork() or os._exit(0)\\ntime.sleep(1)'; "
        "ps -eo stat= | grep -c '^Z' || true"
    )
    assert int(python.strip()) == 0
    await recover(victim, None)
    host.assert_bounded()


# --- 11. open files ----------------------------------------------------------------------------------


@docker_only("the nofile ulimit (4096) is a Docker container setting; Kubernetes has no per-pod ulimits (docs/KUBERNETES.md)")
async def test_many_open_files_are_bounded_by_the_container_limit(victim: Sandbox) -> None:
    out = await victim.sh(
        "ulimit -n 1000000 2>/dev/null; echo limit=$(ulimit -n); python3 -c $'fs=[]\\ntry:\\n"
        " for i in range(10**6): fs.append(open(\"/dev/null\"))\\nexcept OSError as e: print(len(fs), e.errno)'"
    )
    limit_line, result_line = out.splitlines()
    limit = int(limit_line.split("=")[1])
    opened, errno_ = map(int, result_line.split())
    assert limit <= 65536 and opened < limit and errno_ == 24  # EMFILE
    await recover(victim, None)


# --- 30. tmpfs / shm fill ----------------------------------------------------------------------------


@docker_only("sized /tmp and /dev/shm tmpfs mounts; a pod's memory-backed emptyDir is not sized on 1.20 (docs/KUBERNETES.md)")
async def test_filling_tmp_and_dev_shm_does_not_brick_the_container(victim: Sandbox) -> None:
    try:
        await _fill_tmpfs_then_bomb(victim)
    finally:
        await victim.bash("rm -f /dev/shm/fill /tmp/fill")
    await recover(victim, None)


async def _fill_tmpfs_then_bomb(victim: Sandbox) -> None:
    for fs in ("/dev/shm", "/tmp"):
        fill = await victim.bash(f"head -c 2G /dev/zero > {fs}/fill; echo rc=$?; df -B1 --output=avail {fs} | tail -1")
        sc = fill.structured_content
        assert sc["type"] == "bash_code_execution_result", sc
        assert sc["stdout"].split() == ["rc=1", "0"] and "No space left on device" in sc["stderr"], sc
    # tmpfs pages are charged to the memory limit: with both full, a memory bomb is still killed on
    # its own, and the container keeps answering — even a long command (the agent stages every
    # command in /tmp).
    bomb = await victim.bash('python3 -c "b=bytearray(8*2**30)"')
    if not ended_by_gvisor_crash(bomb):
        assert bomb.structured_content["return_code"] == 137 or "MemoryError" in bomb.structured_content["stderr"]
    long_command = "echo ok; cat /workspace/keep.txt # " + "x" * 20000
    again = await victim.bash(long_command)
    assert again.structured_content.get("stdout") == "ok\nprecious\n", again.content[0].text


# --- 31. thread pools under a 1-CPU limit ---------------------------------------------------------------


@outside_kubernetes_subset("the image's environment, the same in a pod")
async def test_numeric_libraries_are_told_to_use_one_thread(victim: Sandbox) -> None:
    env = await victim.sh("for v in OMP_NUM_THREADS OPENBLAS_NUM_THREADS MKL_NUM_THREADS NUMEXPR_MAX_THREADS; do echo $v=${!v}; done")
    assert env.split() == ["OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1", "MKL_NUM_THREADS=1", "NUMEXPR_MAX_THREADS=1"]
    threads = await victim.sh(
        "python3 -c $'try:\\n import numpy as np\\n a = np.ones((300, 300)); (a @ a).sum()\\nexcept ImportError:\\n pass\\n"
        "print([l.split()[1] for l in open(\"/proc/self/status\") if l.startswith(\"Threads:\")][0])'"
    )
    assert threads.strip() == "1", "a numeric library started a thread pool"


@outside_kubernetes_subset("ordinary code under the limits, the same in a pod")
async def test_multiprocessing_and_shared_memory_still_work(victim: Sandbox) -> None:
    """The limits must not break ordinary data-science code (pools, shared memory)."""
    out = await victim.sh(
        "python3 -c $'import multiprocessing as m\\nfrom multiprocessing import shared_memory as s\\n"
        "with m.Pool(4) as p: print(sum(p.map(abs, range(10**4))))\\n"
        "x = s.SharedMemory(create=True, size=32*2**20); x.buf[:3] = b\"abc\"; print(bytes(x.buf[:3]).decode()); x.close(); x.unlink()'"
    )
    assert out == "49995000\nabc\n"
