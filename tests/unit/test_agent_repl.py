"""The agent's ``python`` op: one persistent interpreter per container, and the tool-call channel.

The agent runs on the host as a plain subprocess (as in test_agent.py); tests marked "as PID 1" run
it as the init of a fresh pid namespace, where its sweeps reach only that namespace.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_agent import AgentClient, pid_namespace_prefix, start_agent  # noqa: F401 - fixture

ECHO = [{"name": "echo", "description": "Echo the input back.", "input_schema": {"type": "object"}}]


def py_fields(code: str, **fields: Any) -> dict[str, Any]:
    defaults = {"code": code, "timeout": 10.0, "max_output": 100_000, "max_spill": 10_000_000,
                "max_file": 10_000_000, "progress_interval": None}
    return {**defaults, **fields}


def py(agent: AgentClient, code: str, **fields: Any) -> dict[str, Any]:
    reply = agent.call("python", **py_fields(code, **fields))
    assert reply["type"] == "result", reply
    return reply["result"]


def py_with_tools(agent: AgentClient, code: str, answer=None, **fields: Any) -> tuple[dict[str, Any], list[dict]]:
    """Run a cell whose code calls tools; ``answer(frame) -> (text, is_error) | None`` plays the host."""
    rid = agent.send("python", **py_fields(code, tools=fields.pop("tools", ECHO), **fields))
    calls = []
    while True:
        frame, _ = agent.next_frame(rid)
        if frame["type"] == "tool_call":
            calls.append(frame)
            reply = answer(frame) if answer else (f"echo:{frame['input']}", False)
            if reply is not None:
                agent.send("tool_result", target=rid, call_id=frame["call_id"], text=reply[0], is_error=reply[1])
        elif frame["type"] in ("result", "error"):
            assert frame["type"] == "result", frame
            return frame["result"], calls


@pytest.fixture
def agent(tmp_path: Path):
    client = start_agent(tmp_path)
    yield client
    assert client.close() == 0, client.stderr_text()


@pytest.fixture
def init_agent(tmp_path: Path, pid_namespace_prefix):  # noqa: F811
    client = start_agent(tmp_path, "init", prefix=pid_namespace_prefix)
    assert client.result("hello")["pid"] == 1
    yield client
    client.kill()


# -- REPL semantics ------------------------------------------------------------------------------


def test_globals_imports_and_functions_persist_between_cells(agent: AgentClient) -> None:
    assert py(agent, "import math\nx = 41\ndef inc(v):\n    return v + 1")["stdout"] == ""
    result = py(agent, "x = inc(x)\nprint(x, math.floor(math.pi))")
    assert (result["stdout"], result["stderr"], result["return_code"]) == ("42 3\n", "", 0)
    assert result["repl_alive"] is True and result["cells"] == 2


def test_a_final_bare_expression_is_printed_unless_it_is_none(agent: AgentClient) -> None:
    assert py(agent, "y = 6 * 7\ny")["stdout"] == "42\n"
    assert py(agent, "None")["stdout"] == ""
    assert py(agent, "'text'")["stdout"] == "'text'\n"


def test_top_level_await_and_gather_run_on_a_persistent_event_loop(agent: AgentClient) -> None:
    py(agent, "import asyncio\nloop = asyncio.get_event_loop()\nasync def sq(i):\n    await asyncio.sleep(0.01)\n    return i * i")
    result = py(agent, "await asyncio.sleep(0.01)\nprint(await asyncio.gather(*(sq(i) for i in range(4))))\n"
                       "print(asyncio.get_running_loop() is loop)")
    assert result["stdout"] == "[0, 1, 4, 9]\nTrue\n"


def test_asyncio_run_in_a_cell_works_and_leaves_the_persistent_loop_current(agent: AgentClient) -> None:
    assert py(agent, "import asyncio\nloop = asyncio.get_event_loop()\nprint(asyncio.run(asyncio.sleep(0, 'ran')))")["stdout"] == "ran\n"
    assert py(agent, "print(asyncio.get_event_loop() is loop)\nawait asyncio.sleep(0)")["stdout"] == "True\n"


def test_an_interrupted_await_leaves_the_loop_usable_and_scheduled_tasks_run_in_later_cells(agent: AgentClient) -> None:
    assert py(agent, "import asyncio\nawait asyncio.sleep(30)", timeout=1.0)["interrupted"] is True
    py(agent, "async def bg():\n    await asyncio.sleep(0.1)\n    print('bg done')\nt = asyncio.ensure_future(bg())")
    assert py(agent, "await asyncio.sleep(0.3)\nprint(t.done())")["stdout"] == "bg done\nTrue\n"


def test_a_traceback_is_on_stderr_with_return_code_1_and_only_the_cells_frames(agent: AgentClient) -> None:
    result = py(agent, "def f():\n    raise ValueError('bad')\nf()")
    assert result["return_code"] == 1 and result["stdout"] == ""
    assert result["stderr"].startswith('Traceback (most recent call last):\n  File "<cell-')
    assert "codeexec_agent" not in result["stderr"] and result["stderr"].endswith("ValueError: bad\n")
    syntax = py(agent, "def (")
    assert syntax["return_code"] == 1 and "SyntaxError" in syntax["stderr"]


def test_sys_exit_sets_the_return_code_and_the_interpreter_lives_on(agent: AgentClient) -> None:
    py(agent, "kept = 1")
    assert py(agent, "import sys\nsys.exit(4)")["return_code"] == 4
    assert py(agent, "print(kept)")["stdout"] == "1\n"


def test_output_dir_is_fresh_per_cell_and_its_files_come_back(agent: AgentClient) -> None:
    rid = agent.send("python", **py_fields("import os\nopen(os.environ['OUTPUT_DIR'] + '/r.txt', 'w').write('hi')\nprint(os.getcwd())"))
    frames = agent.frames(rid)
    [(file_frame, blob)] = [f for f in frames if f[0]["type"] == "file"]
    assert file_frame["name"] == "r.txt" and blob == b"hi"
    result = frames[-1][0]["result"]
    assert result["files"] == [{"name": "r.txt", "size": 2}] and result["stdout"] == f"{agent.workspace}\n"
    assert py(agent, "import os\nprint(os.listdir(os.environ['OUTPUT_DIR']))")["stdout"] == "[]\n"


def test_output_is_capped_with_a_spill_file_and_invalid_utf8_is_replaced(agent: AgentClient) -> None:
    result = py(agent, "import sys\nsys.stdout.write('x' * 50000)\nsys.stdout.flush()\nimport os\n_ = os.write(1, b'\\xff\\n')",
                max_output=1000)
    assert result["stdout"].startswith("x" * 500) and "bytes omitted; full output saved to" in result["stdout"]
    assert result["stdout"].endswith("\ufffd\n")


def test_the_cell_limit_interrupts_with_detection_timeout_and_keeps_state(agent: AgentClient) -> None:
    py(agent, "kept = 'yes'")
    started = time.monotonic()
    result = py(agent, "import time\nprint('before', flush=True)\ntime.sleep(30)", timeout=1.0)
    assert time.monotonic() - started < 5
    assert result["return_code"] == 1 and result["interrupted"] is True and result["stdout"] == "before\n"
    assert "KeyboardInterrupt" in result["stderr"]
    assert result["stderr"].rstrip().endswith("detection_timeout: the cell ran past its 1 s wall-clock limit and was interrupted")
    assert py(agent, "print(kept)")["stdout"] == "yes\n"


def test_a_cell_ignoring_keyboard_interrupt_is_killed_and_the_next_cell_says_why(agent: AgentClient) -> None:
    py(agent, "kept = 1")
    result = py(agent, "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)", timeout=1.0)
    assert result["return_code"] == 137 and result["repl_alive"] is False
    assert "detection_timeout" in result["stderr"] and "did not stop and was killed" in result["stderr"]
    after = py(agent, "print('kept' in globals())")
    assert after["stdout"] == "False\n"
    assert after["stderr"] == (
        "[the Python interpreter was restarted: the cell ran past its 1 s limit and did not stop on "
        "KeyboardInterrupt; variables, imports and definitions from earlier cells are gone]\n"
    )


def test_a_c_level_sleep_in_a_thread_does_not_stop_the_interrupt(agent: AgentClient) -> None:
    result = py(agent, "import threading, time\nt = threading.Thread(target=time.sleep, args=(60,), daemon=True)\n"
                       "t.start()\nt.join()", timeout=1.0)
    assert result["interrupted"] is True and result["repl_alive"] is True
    assert py(agent, "print(t.name)")["stdout"] == "Thread-1 (sleep)\n"


def test_os_exit_is_the_return_code_and_the_next_cell_reports_the_lost_interpreter(agent: AgentClient) -> None:
    py(agent, "kept = 1")
    result = py(agent, "import os\nprint('bye', flush=True)\nos._exit(3)")
    assert (result["return_code"], result["stdout"]) == (3, "bye\n")
    assert "the Python interpreter stopped: it exited with status 3" in result["stderr"]
    after = py(agent, "print(1)")
    assert after["stderr"].startswith("[the Python interpreter was restarted: it exited with status 3")


def test_a_cell_sent_to_an_interpreter_dying_between_cells_runs_on_a_fresh_one(agent: AgentClient) -> None:
    """The race CI met: ``pkill -9`` from bash, and the next cell reaches the agent before the
    reaper has collected the interpreter. Made deterministic here: the interpreter is stopped, so
    it cannot read the cell, and killed while the agent waits; none of the cell ran, so it runs
    again on a fresh interpreter, whose note says why the state is gone."""
    import signal

    pid = int(py(agent, "import os\nkept = 1\nprint(os.getpid())")["stdout"])
    os.kill(pid, signal.SIGSTOP)
    killer = threading.Timer(0.5, os.kill, (pid, signal.SIGKILL))
    killer.start()
    try:
        result = py(agent, "import os\nprint('kept' in globals(), os.getpid() != %d)" % pid)
    finally:
        killer.join()
    assert (result["stdout"], result["return_code"]) == ("False True\n", 0), result
    assert result["stderr"].startswith("[the Python interpreter was restarted: it was killed by SIGKILL"), result
    assert "stopped" not in result["stderr"]
    assert py(agent, "print(1)")["stderr"] == ""


def test_restart_starts_a_fresh_interpreter_and_says_so(agent: AgentClient) -> None:
    py(agent, "x = 1")
    result = py(agent, "print('x' in globals())", restart=True)
    assert result["stdout"] == "False\n"
    assert result["stderr"].startswith("[the Python interpreter was restarted: restart was requested;")
    assert py(agent, "print(2)", restart=True)["stderr"].startswith("[the Python interpreter was restarted")


def test_closing_fds_0_to_2_breaks_only_that_cell(agent: AgentClient) -> None:
    py(agent, "kept = 1")
    result = py(agent, "import os\nprint('x', flush=True)\nos.close(0)\nos.close(1)\nos.close(2)")
    assert result["stdout"] == "x\n" and result["return_code"] in (0, 1)
    assert py(agent, "print(kept)")["stdout"] == "1\n"


def test_closing_every_inherited_fd_loses_the_interpreter_and_says_so(agent: AgentClient) -> None:
    py(agent, "kept = 1")
    result = py(agent, "import os\nos.closerange(0, 1024)\nimport time\ntime.sleep(0.2)")
    assert result["return_code"] != 0 and "the Python interpreter stopped" in result["stderr"]
    after = py(agent, "print('kept' in globals())")
    assert after["stdout"] == "False\n" and after["stderr"].startswith("[the Python interpreter was restarted:")
    assert agent.bash("echo ok")["stdout"] == "ok\n"


def test_the_interpreter_never_holds_the_agents_channel(agent: AgentClient) -> None:
    agent_fds = {os.readlink(f"/proc/{agent.proc.pid}/fd/{n}") for n in (0, 1)}
    result = py(agent, "import os\nprint(os.getpid())\nprint('\\n'.join(os.readlink(f'/proc/self/fd/{n}') for n in os.listdir('/proc/self/fd') if os.path.exists(f'/proc/self/fd/{n}')))")
    pid, *links = result["stdout"].split("\n")
    assert not agent_fds & set(links), (agent_fds, links)
    between = {os.readlink(f"/proc/{pid}/fd/{n}") for n in (0, 1, 2)}
    assert between == {"/dev/null"}


def test_a_bash_call_and_the_repl_share_files_not_state(agent: AgentClient) -> None:
    py(agent, "import os\nos.environ['ONLY_PY'] = '1'\nopen('shared.txt', 'w').write('from python')")
    assert agent.bash("cat shared.txt; echo \" ${ONLY_PY:-unset}\"")["stdout"] == "from python unset\n"
    agent.bash("export ONLY_BASH=1")
    assert py(agent, "import os\nprint(os.environ.get('ONLY_BASH'), open('shared.txt').read())")["stdout"] == "None from python\n"


def test_progress_frames_carry_the_output_so_far(agent: AgentClient) -> None:
    rid = agent.send("python", **py_fields("import time\nprint('tick', flush=True)\ntime.sleep(0.6)", progress_interval=0.1))
    frames = agent.frames(rid)
    progress = [f for f, _ in frames if f["type"] == "progress"]
    assert progress and progress[-1]["stdout_tail"] == "tick\n"


def test_a_new_container_life_reports_that_the_earlier_interpreter_is_gone(tmp_path: Path) -> None:
    first = start_agent(tmp_path, "life")
    py(first, "x = 1")
    first.result("save_state", reason="idle for 900 s")
    assert first.close() == 0
    second = start_agent(tmp_path, "life")
    try:
        result = py(second, "print('x' in globals())")
        assert result["stdout"] == "False\n"
        assert result["stderr"].startswith("[the Python interpreter was restarted: the container was stopped (idle for 900 s);")
    finally:
        assert second.close() == 0


# -- the tool channel ----------------------------------------------------------------------------


def test_a_tool_is_an_async_global_and_gather_of_20_calls_all_come_back(agent: AgentClient) -> None:
    code = "import asyncio, json\nr = await asyncio.gather(*(echo({'i': i}) for i in range(20)))\nprint(len(r), r[0], r[19])"
    result, calls = py_with_tools(agent, code)
    assert result["stdout"] == "20 echo:{'i': 0} echo:{'i': 19}\n" and result["return_code"] == 0
    assert len(calls) == 20 and len({c["call_id"] for c in calls}) == 20
    assert {c["name"] for c in calls} == {"echo"}


def test_list_tools_returns_the_full_schemas(agent: AgentClient) -> None:
    tools = [{**ECHO[0], "output_schema": {"type": "string"}}]
    result, _ = py_with_tools(agent, "print(list_tools())", tools=tools)
    assert result["stdout"] == repr(tools) + "\n"


def test_an_is_error_result_raises_inside_the_code_with_the_text(agent: AgentClient) -> None:
    code = "try:\n    await echo({})\nexcept Exception as e:\n    print(type(e).__name__, e)"
    result, _ = py_with_tools(agent, code, answer=lambda f: ("Error: table locked", True))
    assert result["stdout"] == "ToolCallError Error: table locked\n"


def test_a_pending_call_past_its_timeout_raises_timeout_error_in_the_code(agent: AgentClient) -> None:
    started = time.monotonic()
    result, calls = py_with_tools(agent, "await echo({'q': 1})", answer=lambda f: None, pending_timeout=0.5)
    assert time.monotonic() - started < 5 and len(calls) == 1
    assert result["return_code"] == 1
    assert result["stderr"].endswith("TimeoutError: Calling tool ['echo'] timed out (no response after 0.5s).\n")


def test_in_flight_calls_are_bounded_by_max_in_flight(agent: AgentClient) -> None:
    lock = threading.Lock()
    seen: list[str] = []

    def answer(frame):  # answer each call only once the next arrives (or it is the last): counts concurrency
        with lock:
            seen.append(frame["call_id"])
        return ("ok", False)

    code = "import asyncio\nr = await asyncio.gather(*(echo({'i': i}) for i in range(10)))\nprint(len(r))"
    rid = agent.send("python", **py_fields(code, tools=ECHO, max_in_flight=2))
    held: list[dict] = []
    most = 0
    while True:
        frame, _ = agent.next_frame(rid)
        if frame["type"] == "tool_call":
            held.append(frame)
            most = max(most, len(held))
            if len(held) == 2 or len(seen) + len(held) == 10:
                for f in held:
                    answer(f)
                    agent.send("tool_result", target=rid, call_id=f["call_id"], text="ok", is_error=False)
                held.clear()
            continue
        assert frame["type"] == "result", frame
        break
    assert frame["result"]["stdout"] == "10\n" and most == 2 and len(seen) == 10


def test_pending_time_does_not_count_against_the_cell_limit(agent: AgentClient) -> None:
    def slow(frame):
        time.sleep(1.5)
        return ("late but fine", False)

    result, _ = py_with_tools(agent, "print(await echo({}))", answer=slow, timeout=1.0)
    assert result["stdout"] == "late but fine\n" and result["interrupted"] is False


def test_forged_control_frames_and_oversized_inputs_fail_only_in_the_code(agent: AgentClient) -> None:
    code = "try:\n    await echo({'x': 'y' * (9 * 1024 * 1024)})\nexcept ValueError as e:\n    print('refused')"
    result, calls = py_with_tools(agent, code)
    assert result["stdout"] == "refused\n" and calls == []
    # a tool_result for an unknown call id, or a call that is over, is ignored
    agent.send("tool_result", target=12345, call_id="c1", text="x", is_error=False)
    assert py(agent, "print('still fine')")["stdout"] == "still fine\n"


# -- as PID 1 ------------------------------------------------------------------------------------


def test_as_pid_1_a_bash_sweep_spares_the_interpreter_and_a_cells_strays_are_swept(init_agent: AgentClient) -> None:
    pid = py(init_agent, "import os, subprocess\nx = os.getpid()\nsubprocess.Popen(['sleep', '1001'])\nprint(x)")["stdout"]
    listing = init_agent.bash("cat /proc/[0-9]*/cmdline | tr '\\0' ' '; sleep 1002 &")["stdout"]
    assert "sleep 1001" not in listing
    assert py(init_agent, "print(x)")["stdout"] == pid
    listing = init_agent.bash("cat /proc/[0-9]*/cmdline | tr '\\0' ' '")["stdout"]
    assert "sleep 1002" not in listing and "--repl" in listing


def test_as_pid_1_a_fork_bomb_in_a_cell_is_swept_and_both_tools_answer(init_agent: AgentClient) -> None:
    py(init_agent, "kept = 1")
    bomb = ("import os, time\nmain = os.getpid()\nfor _ in range(6):\n    os.fork()\n"
            "if os.getpid() != main:\n    time.sleep(1000)\nprint('end')")
    result = py(init_agent, bomb)
    assert result["stdout"] == "end\n" and result["return_code"] == 0  # 63 sleeping copies: swept at the end
    count = "import os\nprint(kept, sorted(p for p in os.listdir('/proc') if p.isdigit()).__len__())"
    assert py(init_agent, count)["stdout"] == "1 3\n"  # the agent, the interpreter, the next call's bash
    assert init_agent.bash("echo ok")["stdout"] == "ok\n"


def test_as_pid_1_when_the_host_goes_away_a_pending_call_fails_inside_the_code(init_agent: AgentClient) -> None:
    rid = init_agent.send("python", **py_fields(
        "try:\n    await echo({})\nexcept Exception as e:\n    print('failed:', e)", tools=ECHO))
    frame, _ = init_agent.next_frame(rid)
    assert frame["type"] == "tool_call"
    init_agent.proc.stdin.close()  # the host's stream ends; as PID 1 the agent lives on
    reply = init_agent.frames(rid)[-1][0]
    assert reply["result"]["stdout"] == "failed: the host connection closed; the tool call was not run\n"


def test_as_pid_1_a_cell_killing_its_parent_leaves_the_agent_serving(init_agent: AgentClient) -> None:
    result = py(init_agent, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, signal.SIGTERM)\nprint('sent')")
    assert result["stdout"] == "sent\n"
    assert init_agent.result("hello")["pid"] == 1 and py(init_agent, "print(1)")["stdout"] == "1\n"
