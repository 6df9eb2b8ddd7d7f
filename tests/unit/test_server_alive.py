"""Which server process a pool container's tag names, and whether it is still running: the reaper
removes unassigned pool containers of dead servers only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from mcp_codeexec.engines.base import PID_NAMESPACE
from mcp_codeexec.engines.docker import SERVER_TAG, server_alive

HOST = socket.gethostname()


def test_this_server_and_another_machines_server_are_alive():
    assert server_alive(SERVER_TAG)
    assert server_alive(f"some-other-host:1:{time.time():.0f}")


def test_a_running_process_tagged_after_it_started_is_alive():
    assert server_alive(f"{HOST}:{os.getppid()}:{time.time():.0f}")


def test_an_exited_process_is_dead_collected_or_not():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    tag = f"{HOST}:{child.pid}:{time.time():.0f}"
    deadline = time.monotonic() + 30
    while _state(child.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not server_alive(tag)  # a zombie: exited, not collected yet
    child.wait()
    assert not server_alive(tag)


def test_a_reused_pid_is_not_the_server_that_tagged_the_container():
    assert not server_alive(f"{HOST}:{os.getpid()}:1000000000")  # tagged in 2001, long before we started


def test_a_server_in_another_pid_namespace_on_this_host_is_not_judged_by_our_pids():
    # hostNetwork pods share the node's host name and are each PID 1 of their own namespace
    assert not server_alive(f"{HOST}:{os.getpid()}:1000000000:{PID_NAMESPACE}")
    assert server_alive(f"{HOST}:{os.getpid()}:1000000000:{int(PID_NAMESPACE or 0) + 1}")
    assert SERVER_TAG.endswith(f":{PID_NAMESPACE}") and PID_NAMESPACE.isdigit()


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rpartition(")")[2].split()[0]
