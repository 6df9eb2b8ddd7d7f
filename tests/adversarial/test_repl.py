"""Hostile cells in the Python REPL (``code_execution``): each case asserts its exact outcome, then
that the next ``code_execution`` and bash calls answer and the files are intact.

One victim sandbox takes every case in order (1 GiB memory so a memory bomb dies fast, a 3 s cell
limit so the time cases stay cheap); ``keep.txt`` is written first and checked after every case.

Both backends (``backend_name``): on Kubernetes the victim is a pod and the cases where the engine
matters run there (the pids and memory limits, a flood over the attach stream, the cell limit, PID 1,
the agent's channel); ``@outside_kubernetes_subset`` marks the rest (the interpreter's own handling,
the same anywhere).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.adversarial.conftest import GVISOR, GiB, HostWatch, Sandbox, pod_pids_limit, sandboxes
from tests.support.backends import on_kubernetes, outside_kubernetes_subset
from tests.support.oracle import assert_hosted_shape

pytestmark = pytest.mark.anyio

CELL = 3.0
RESTARTED = "[the Python interpreter was restarted: "
SUBSET = "the interpreter's own handling, the same in a pod"


async def code(box: Sandbox, source: str, *, gvisor_may_crash: bool = False, **extra: Any) -> dict[str, Any]:
    """A cell's result. ``gvisor_may_crash``: under gVisor (runsc 2022-12-19, CI's Debian build) the
    pids and memory limits take the whole sandbox down; the call in flight is then ``unavailable``
    and the next call starts the container again (test_resources.py, ``ended_by_gvisor_crash``)."""
    result = await box.client.call_tool("code_execution", {"code": source, **extra})
    assert_hosted_shape(result.structured_content, "code_execution")
    if gvisor_may_crash and GVISOR and result.is_error:
        assert result.structured_content == {"type": "code_execution_tool_result_error", "error_code": "unavailable"}
        return {"gvisor_crashed": True}
    assert result.is_error is False, result.content[0].text
    return result.structured_content


async def answers_after(box: Sandbox, *, state_kept: bool) -> None:
    """The next code_execution and bash calls answer quickly; files (and, if kept, state) intact."""
    started = time.monotonic()
    after = await code(box, "print(open('/workspace/keep.txt').read().strip(), 'marker' in globals())")
    assert after["stdout"] == f"precious {state_kept}\n", after
    if not state_kept:
        assert after["stderr"].startswith(RESTARTED), after
        await code(box, "marker = 1")  # state for the next case
    else:
        assert after["stderr"] == ""
    await box.usable("/workspace/keep.txt", "precious\n")
    assert time.monotonic() - started < 20


@pytest.fixture(scope="module")
async def victim(tmp_path_factory: pytest.TempPathFactory, docker_engine: None, backend_name: str) -> AsyncIterator[Sandbox]:
    async with sandboxes(tmp_path_factory, "repl", 1, backend_name, memory_bytes=1 * GiB, code_cell_timeout=CELL) as (box,):
        await box.sh("echo precious > /workspace/keep.txt")
        await code(box, "marker = 1")
        yield box


async def test_a_fork_bomb_in_a_cell_is_contained_and_swept(victim: Sandbox, host: HostWatch) -> None:
    bomb = ("import os, time\nstart = time.monotonic()\nn = 0\nwhile time.monotonic() - start < 1.5:\n"
            "    try:\n        os.fork() or time.sleep(60)\n        n += 1\n    except OSError:\n        time.sleep(0.01)\n"
            "print('forks', n > 0)")
    if on_kubernetes(victim.settings):
        await pod_pids_limit(victim)  # the node bounds the pod's processes, or the bomb is not let loose
    with host.running():
        result = await code(victim, bomb, gvisor_may_crash=True)
    if result.get("gvisor_crashed"):
        await answers_after(victim, state_kept=False)
        return
    assert result["stdout"].endswith("forks True\n") and result["return_code"] == 0
    assert await victim.sh("ps -e --no-headers | wc -l") in ("4\n", "5\n", "6\n")  # agent, repl, bash, ps, wc
    host.assert_bounded(pids_during=700, pids_after=150)
    await answers_after(victim, state_kept=True)


async def test_memory_past_the_limit_kills_only_the_interpreter_and_says_so(victim: Sandbox) -> None:
    result = await code(victim, "blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 1024 * 1024))",
                        gvisor_may_crash=True)
    if result.get("gvisor_crashed"):
        await answers_after(victim, state_kept=False)
        return
    assert result["return_code"] == 137
    assert "[the Python interpreter stopped: it was killed by SIGKILL; the container's memory limit is the usual cause" in result["stderr"]
    await answers_after(victim, state_kept=False)


async def test_a_stdout_flood_is_capped_with_a_spill_file(victim: Sandbox) -> None:
    result = await code(victim, "import sys\nfor _ in range(200):\n    sys.stdout.write('y' * 100_000 + '\\n')")
    assert result["return_code"] == 0
    assert "bytes omitted; first " in result["stdout"] or "bytes omitted; full output saved to" in result["stdout"]
    assert len(result["stdout"]) < 2 * victim.settings.max_output_bytes
    await answers_after(victim, state_kept=True)


async def test_a_cell_ignoring_keyboard_interrupt_is_killed_at_the_limit(victim: Sandbox) -> None:
    started = time.monotonic()
    result = await code(victim, "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(1)")
    assert time.monotonic() - started < CELL + 10
    assert result["return_code"] == 137
    assert f"detection_timeout: the cell ran past its {CELL:g} s wall-clock limit and was interrupted; the interpreter did not stop" in result["stderr"]
    await answers_after(victim, state_kept=False)


@outside_kubernetes_subset(SUBSET)
async def test_a_c_level_sleep_in_a_thread_is_interrupted_and_state_survives(victim: Sandbox) -> None:
    result = await code(victim, "import threading, time\nt = threading.Thread(target=time.sleep, args=(600,))\nt.start()\nt.join()")
    assert result["return_code"] == 1 and "KeyboardInterrupt" in result["stderr"]
    assert result["stderr"].rstrip().endswith(f"detection_timeout: the cell ran past its {CELL:g} s wall-clock limit and was interrupted")
    await answers_after(victim, state_kept=True)


@outside_kubernetes_subset(SUBSET)
async def test_closing_or_writing_fds_0_to_2_breaks_nothing_after_the_cell(victim: Sandbox) -> None:
    result = await code(victim, "import os\nos.write(1, b'raw\\n')\nos.write(2, b'err\\n')\nos.close(0)\nos.close(1)\nos.close(2)\nprint('lost')")
    assert (result["stdout"], result["stderr"]) == ("raw\n", "err\n")
    await answers_after(victim, state_kept=True)


@outside_kubernetes_subset(SUBSET)
async def test_closing_every_inherited_fd_loses_the_interpreter_and_says_so(victim: Sandbox) -> None:
    result = await code(victim, "import os, time\nos.closerange(0, 4096)\ntime.sleep(0.5)")
    assert result["return_code"] != 0
    assert "[the Python interpreter stopped: " in result["stderr"]
    await answers_after(victim, state_kept=False)


@outside_kubernetes_subset(SUBSET)
async def test_os_exit_is_the_return_code_and_the_next_call_says_the_interpreter_restarted(victim: Sandbox) -> None:
    result = await code(victim, "import os\nos._exit(7)")
    assert result["return_code"] == 7
    assert "it exited with status 7" in result["stderr"]
    await answers_after(victim, state_kept=False)


async def test_killing_the_parent_and_pid_1_does_nothing(victim: Sandbox) -> None:
    result = await code(victim, "import os, signal\nfor sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):\n"
                                "    os.kill(os.getppid(), sig)\n    os.kill(1, sig)\nprint(os.getppid())",
                        gvisor_may_crash=True)
    if result.get("gvisor_crashed"):
        # runsc 2022-12-19 gives PID 1 no init protection (test_resources.py, test_user_code_cannot_kill_the_agent):
        # the agent dies with the sandbox; the next call restarts the container, files intact, and says so.
        await answers_after(victim, state_kept=False)
        return
    assert result["stdout"] == "1\n" and result["return_code"] == 0
    await answers_after(victim, state_kept=True)


async def test_the_agents_channel_is_out_of_reach_of_the_cell(victim: Sandbox) -> None:
    probe = (
        "import os\nout = []\n"
        "for path in ('/proc/1/fd', '/proc/1/fd/0', '/proc/1/fd/1', '/proc/1/environ', '/proc/1/mem'):\n"
        "    try:\n        os.listdir(path) if path.endswith('fd') else os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))\n"
        "        out.append(path + ' OPEN')\n"
        "    except OSError as e:\n        out.append(path + ' ' + type(e).__name__)\n"
        "mine = set()\nfor n in os.listdir('/proc/self/fd'):\n    try:\n        mine.add(os.readlink(f'/proc/self/fd/{n}'))\n"
        "    except OSError:\n        pass\n"
        "print('\\n'.join(out))\nprint(sorted(l.split(':')[0] for l in mine if not l.startswith('/')))"
    )
    result = await code(victim, probe)
    lines = result["stdout"].splitlines()
    if GVISOR:
        # runsc 2022-12-19 does not honour PR_SET_DUMPABLE for /proc/1 (test_isolation.py,
        # test_the_agents_channel_is_out_of_reach_of_user_code): the agent's fds can be opened there.
        assert lines[0].startswith("/proc/1/fd ") and len(lines) == 6, lines
    else:
        assert all(line.endswith("PermissionError") for line in lines[:5]), lines
    # the interpreter's own fds: its socket to the agent, the cell's pipes; no attach stream
    kinds = eval(lines[5])  # our own printed list
    assert set(kinds) <= {"socket", "pipe", "anon_inode"}, kinds
    await answers_after(victim, state_kept=True)


async def test_bash_killing_the_interpreter_is_reported_by_the_next_cell(victim: Sandbox) -> None:
    await victim.sh("pkill -9 -f -- '--repl' || true")
    after = await code(victim, "print('marker' in globals())")
    assert after["stdout"] == "False\n"
    assert after["stderr"].startswith(RESTARTED + "it was killed by SIGKILL")
    await code(victim, "marker = 1")
    await answers_after(victim, state_kept=True)


@pytest.mark.skipif(GVISOR, reason="measured under runc only")
@outside_kubernetes_subset(SUBSET)
async def test_a_bash_sweep_between_cells_leaves_the_interpreter_running(victim: Sandbox) -> None:
    pid = (await code(victim, "import os\nos.getpid()"))["stdout"]
    await victim.sh("sleep 100 & (setsid sleep 101 &); echo started")
    assert (await code(victim, "import os\nos.getpid()"))["stdout"] == pid
    await answers_after(victim, state_kept=True)
