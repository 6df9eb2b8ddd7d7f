"""The in-container agent (sandbox/agent/codeexec_agent.py), run on the host as a plain subprocess.

Each test starts the agent with its workspace and state directory under ``tmp_path`` and talks to it
over its stdin/stdout with a small synchronous client. Tests marked "as PID 1" run it as the init of
a fresh pid namespace (``unshare``), where its ``kill(-1)`` sweep reaches only that namespace.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import queue
import random
import re
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mcp_codeexec.protocol import CHUNK, HEADER, FrameDecoder, encode_frame

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "sandbox" / "agent" / "codeexec_agent.py"
GOLDEN = ROOT / "tests" / "golden" / "hosted_examples.json"
AGENT_PYTHON = os.environ.get("CODEEXEC_TEST_PYTHON", sys.executable)  # e.g. a Python 3.9
REPLY_TIMEOUT = 30.0

Frame = tuple[dict[str, Any], bytes]


class AgentClient:
    """A synchronous client: frames are demultiplexed by request id onto queues."""

    def __init__(self, workspace: Path, state_dir: Path, log: Path, prefix: tuple[str, ...] = ()) -> None:
        env = dict(os.environ, CODEEXEC_WORKSPACE=str(workspace), CODEEXEC_STATE_DIR=str(state_dir))
        self.workspace = workspace
        self.state_dir = state_dir
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [*prefix, AGENT_PYTHON, str(AGENT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            bufsize=0,
        )
        self._queues: dict[int, queue.Queue[Frame | None]] = {}
        self._lock = threading.Lock()
        self._next_id = 1
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _queue(self, rid: int) -> queue.Queue[Frame | None]:
        with self._lock:
            return self._queues.setdefault(rid, queue.Queue())

    def _read(self) -> None:
        decoder = FrameDecoder()
        fd = self.proc.stdout.fileno()
        while True:
            data = os.read(fd, 1 << 20)
            if not data:
                break
            for message, blob in decoder.feed(data):
                self._queue(message["id"]).put((message, blob))
        with self._lock:
            for q in self._queues.values():
                q.put(None)

    def new_id(self) -> int:
        with self._lock:
            rid = self._next_id
            self._next_id += 1
        return rid

    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)

    def send(self, op: str, rid: int | None = None, blob: bytes = b"", **fields: Any) -> int:
        rid = self.new_id() if rid is None else rid
        self._queue(rid)
        self.write(encode_frame({"id": rid, "op": op, **fields}, blob))
        return rid

    def next_frame(self, rid: int, timeout: float = REPLY_TIMEOUT) -> Frame:
        try:
            frame = self._queue(rid).get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no frame for request {rid} within {timeout} s") from None
        assert frame is not None, "the agent closed its stdout"
        return frame

    def pending(self, rid: int) -> int:
        return self._queue(rid).qsize()

    def frames(self, rid: int, timeout: float = REPLY_TIMEOUT) -> list[Frame]:
        """Every frame of a request, the final one last."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            frame = self.next_frame(rid, max(0.01, deadline - time.monotonic()))
            out.append(frame)
            if frame[0]["type"] in ("result", "error"):
                return out

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        return self.frames(self.send(op, **fields))[-1][0]

    def result(self, op: str, **fields: Any) -> dict[str, Any]:
        reply = self.call(op, **fields)
        assert reply["type"] == "result", reply
        return reply["result"]

    def error(self, op: str, **fields: Any) -> tuple[str, str]:
        reply = self.call(op, **fields)
        assert reply["type"] == "error", reply
        return reply["code"], reply["message"]

    def bash_frames(self, command: str, **fields: Any) -> list[Frame]:
        return self.frames(self.send("bash", **bash_fields(command, **fields)))

    def bash(self, command: str, **fields: Any) -> dict[str, Any]:
        reply = self.bash_frames(command, **fields)[-1][0]
        assert reply["type"] == "result", reply
        return reply["result"]

    def close(self, timeout: float = 15.0) -> int:
        """End of input; returns the exit status (the agent is killed if it does not exit)."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout)
        self._reader.join(timeout)
        self.proc.stdout.close()
        self._log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.close()

    def stderr_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def bash_fields(command: str, **fields: Any) -> dict[str, Any]:
    defaults = {
        "command": command,
        "timeout": 20.0,
        "restart": False,
        "max_output": 100_000,
        "max_spill": 10_000_000,
        "max_file": 10_000_000,
        "progress_interval": None,
    }
    return {**defaults, **fields}


def start_agent(tmp_path: Path, name: str = "agent", state_dir: Path | None = None, prefix=()) -> AgentClient:
    workspace = tmp_path / f"{name}-ws"
    workspace.mkdir(exist_ok=True)
    return AgentClient(workspace, state_dir or tmp_path / f"{name}-state", tmp_path / f"{name}.log", prefix)


@pytest.fixture
def agent(tmp_path: Path):
    client = start_agent(tmp_path)
    yield client
    assert client.close() == 0, client.stderr_text()


@pytest.fixture
def ws(agent: AgentClient) -> Path:
    return agent.workspace


def load_agent_module():
    spec = importlib.util.spec_from_file_location("codeexec_agent_under_test", AGENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def marker_numbers(text: str) -> tuple[int, str | None]:
    match = re.search(
        r"\n\[\.\.\. (\d+) bytes omitted(?:; (?:full output|first \d+ bytes) saved to (.+?))? \.\.\.\]\n", text
    )
    assert match, text[:300]
    return int(match.group(1)), match.group(2)


def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll for a state the test cannot be notified of (a process disappearing)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


# -- protocol ------------------------------------------------------------------------------------


def test_hello_reports_version_python_uid_workspace_and_pid(agent: AgentClient) -> None:
    result = agent.result("hello")
    assert set(result) == {"agent_version", "python", "uid", "workspace", "pid", "ops", "repl_alive", "boot"}
    assert "python" in result["ops"] and "tool_result" in result["ops"]
    assert result["workspace"] == str(agent.workspace)
    assert result["pid"] == agent.proc.pid
    assert result["uid"] == os.getuid()
    assert re.fullmatch(r"3\.\d+\.\d+", result["python"])


def test_ping_returns_an_empty_result(agent: AgentClient) -> None:
    assert agent.result("ping") == {}


def test_unknown_op_is_invalid_tool_input_and_names_the_op(agent: AgentClient) -> None:
    code, message = agent.error("frobnicate")
    assert code == "invalid_tool_input"
    assert "frobnicate" in message


@pytest.mark.parametrize(
    "op, fields",
    [
        ("bash", {"command": 42}),
        ("bash", {"command": "true", "timeout": -1}),
        ("bash", {"command": "true", "timeout": "abc"}),
        ("bash", {"command": "true", "max_output": -5}),
        ("bash", {"command": "true", "restart": "yes"}),
        ("view", {"path": 7}),
        ("view", {"path": ""}),
        ("view", {"path": "x", "view_range": [1]}),
        ("view", {"path": "x", "view_range": "1,2"}),
        ("create", {"path": "x"}),
        ("str_replace", {"path": "x", "new_str": "y"}),
    ],
)
def test_a_request_with_missing_or_mistyped_fields_is_invalid_tool_input(agent, op, fields) -> None:
    code, _ = agent.error(op, **fields)
    assert code == "invalid_tool_input"


def test_malformed_json_gets_an_error_and_the_agent_keeps_serving(agent: AgentClient) -> None:
    body = b"{not json"
    agent.write(HEADER.pack(len(body), 0) + body)
    message, _ = agent.next_frame(0)
    assert message["type"] == "error" and message["code"] == "invalid_tool_input"
    body = b'{"op": "ping"}'  # no id
    agent.write(HEADER.pack(len(body), 0) + body)
    assert agent.next_frame(0)[0]["code"] == "invalid_tool_input"
    assert agent.result("ping") == {}


def test_end_of_input_exits_cleanly_when_not_pid_1(tmp_path: Path) -> None:
    client = start_agent(tmp_path)
    assert client.result("ping") == {}
    assert client.close() == 0


def test_a_garbage_stream_is_logged_and_the_exit_status_is_nonzero_at_end_of_input(tmp_path: Path) -> None:
    client = start_agent(tmp_path)
    client.write(b"\xff" * 64)
    assert client.close() == 1
    assert "bad frame header" in client.stderr_text()


def test_a_frame_cut_off_by_end_of_input_is_a_nonzero_exit(tmp_path: Path) -> None:
    client = start_agent(tmp_path)
    client.write(encode_frame({"id": 1, "op": "ping"})[:-3])
    assert client.close() == 1


# -- bash ----------------------------------------------------------------------------------------


def test_bash_returns_stdout_stderr_and_exit_status(agent: AgentClient) -> None:
    result = agent.bash("echo out; echo err >&2; false")
    assert result["stdout"] == "out\n"
    assert result["stderr"] == "err\n"
    assert result["return_code"] == 1
    assert result["timed_out"] is False
    assert result["files"] == []
    assert result["output_dir"].startswith(str(agent.workspace / ".codeexec" / "outputs") + "/")


@pytest.mark.parametrize(
    "command, code",
    [
        ("exit 3", 3),
        ("kill -9 $$", 137),
        ("kill -TERM $$", 143),
        ("true", 0),
        ("python3 -c 'import os; os.abort()'", 134),
    ],
)
def test_return_code_is_the_exit_status_or_128_plus_the_signal(agent: AgentClient, command: str, code: int) -> None:
    result = agent.bash(command)
    assert result["return_code"] == code
    assert result["timed_out"] is False


def test_golden_a_nonzero_exit_is_a_result_with_the_traceback_on_stderr(agent: AgentClient) -> None:
    result = agent.bash("python3 -c 'undefined_variable'")
    assert result["stdout"] == ""
    assert result["return_code"] == 1
    assert "NameError" in result["stderr"]


def test_working_directory_and_exported_variables_persist_between_calls(agent: AgentClient) -> None:
    agent.bash("mkdir -p 'sub dir'; cd 'sub dir'; export FOO='a b'; BAR=local; f() { :; }")
    result = agent.bash('pwd; echo "$FOO"; echo "${BAR-unset}"; type f >/dev/null 2>&1 || echo nofunc')
    assert result["stdout"] == f"{agent.workspace}/sub dir\na b\nunset\nnofunc\n"


def test_exit_in_user_code_still_saves_the_state(agent: AgentClient) -> None:
    assert agent.bash("export KEPT=yes; cd /; exit 3")["return_code"] == 3
    assert agent.bash('echo "$KEPT"; pwd')["stdout"] == "yes\n/\n"


def test_noclobber_and_a_redefined_export_do_not_break_the_state(agent: AgentClient) -> None:
    agent.bash("set -o noclobber; export() { echo hijacked; }; builtin export X=1")
    assert agent.bash('echo "$X"')["stdout"] == "1\n"


def test_restart_clears_the_saved_state(agent: AgentClient) -> None:
    agent.bash("export FOO=1; cd /")
    result = agent.bash('echo "${FOO-unset}"; pwd', restart=True)
    assert result["stdout"] == f"unset\n{agent.workspace}\n"


def test_commands_see_home_output_dir_input_dir_lang_and_no_codeexec_variables(agent: AgentClient) -> None:
    result = agent.bash('echo "$HOME|$OUTPUT_DIR|$INPUT_DIR|$LANG|$PWD"; env | grep -c ^CODEEXEC_')
    home, output_dir, input_dir, lang, pwd = result["stdout"].splitlines()[0].split("|")
    assert home == pwd == str(agent.workspace)
    assert output_dir == result["output_dir"]
    assert input_dir == str(agent.workspace / "inputs")
    assert lang == "C.UTF-8"
    assert result["stdout"].splitlines()[1] == "0"


def test_output_dir_is_fresh_each_call_even_if_the_state_exported_an_old_one(agent: AgentClient) -> None:
    first = agent.bash("export OUTPUT_DIR=/nowhere; echo $OUTPUT_DIR")
    second = agent.bash("echo $OUTPUT_DIR")
    assert second["stdout"] == second["output_dir"] + "\n"
    assert first["output_dir"] != second["output_dir"]


def test_stdin_is_dev_null_so_readers_return_at_once(agent: AgentClient) -> None:
    result = agent.bash('cat; read x; echo "done:$?"', timeout=10)
    assert result["stdout"] == "done:1\n"
    assert result["timed_out"] is False


def test_a_command_of_any_size_runs(agent: AgentClient) -> None:
    command = "x='" + "a" * 1_000_000 + "'\necho ${#x}"
    assert agent.bash(command)["stdout"] == "1000000\n"


def test_timeout_kills_the_command_and_keeps_partial_output(agent: AgentClient) -> None:
    started = time.monotonic()
    result = agent.bash("echo before; echo warn >&2; sleep 30; echo after", timeout=0.5)
    assert time.monotonic() - started < 5
    assert result["timed_out"] is True
    assert result["stdout"] == "before\n"
    assert result["stderr"] == "warn\n"
    assert agent.bash("echo usable")["stdout"] == "usable\n"


def test_timeout_kills_a_command_that_ignores_sigterm(agent: AgentClient) -> None:
    started = time.monotonic()
    result = agent.bash("trap '' TERM; echo before; sleep 30", timeout=0.5)
    elapsed = time.monotonic() - started
    assert result["timed_out"] is True
    assert result["return_code"] == 137
    assert result["stdout"] == "before\n"
    assert 0.9 < elapsed < 5


def test_a_background_child_holding_stdout_does_not_keep_the_call_open(agent: AgentClient) -> None:
    started = time.monotonic()
    result = agent.bash("sleep 30 & echo $!")
    assert time.monotonic() - started < 5
    pid = int(result["stdout"])
    wait_until(lambda: process_gone(pid), what=f"background sleep {pid} to be killed")


def test_output_past_the_cap_keeps_head_and_tail_with_a_marker_and_a_spill_file(agent: AgentClient) -> None:
    result = agent.bash("for i in $(seq 1 20000); do echo line$i; done", max_output=1000)
    full = "".join(f"line{i}\n" for i in range(1, 20001))
    out = result["stdout"]
    omitted, spill = marker_numbers(out)
    assert out.startswith(full[:500])
    assert out.endswith(full[-500:])
    assert omitted == len(full) - 1000
    assert f"; full output saved to {spill} ...]" in out
    assert spill == str(agent.workspace / ".codeexec" / "spill" / (Path(result["output_dir"]).name + ".stdout"))
    assert Path(spill).read_text() == full
    assert result["stderr"] == ""


def test_the_spill_file_is_bounded_by_max_spill_and_the_marker_says_so(agent: AgentClient) -> None:
    result = agent.bash("head -c 50000 /dev/zero | tr '\\0' x", max_output=100, max_spill=20000)
    omitted, spill = marker_numbers(result["stdout"])
    assert omitted == 50000 - 100
    assert "; first 20000 bytes saved to " in result["stdout"]
    assert Path(spill).read_bytes() == b"x" * 20000


def test_without_a_spill_budget_the_marker_names_no_file(agent: AgentClient) -> None:
    result = agent.bash("head -c 5000 /dev/zero | tr '\\0' x", max_output=100, max_spill=0)
    assert "\n[... 4900 bytes omitted ...]\n" in result["stdout"]


def test_only_the_spill_files_of_the_newest_four_calls_are_kept(agent: AgentClient) -> None:
    seqs = []
    for _ in range(6):
        result = agent.bash("head -c 3000 /dev/zero; head -c 3000 /dev/zero >&2", max_output=100)
        seqs.append(int(Path(result["output_dir"]).name))
    names = sorted(os.listdir(agent.workspace / ".codeexec" / "spill"))
    assert names == sorted(f"{s}.{stream}" for s in seqs[-4:] for stream in ("stdout", "stderr"))


def test_invalid_utf8_output_becomes_replacement_characters(agent: AgentClient) -> None:
    result = agent.bash("printf 'ok\\xff\\xfe\\xed\\xa0\\x80end\\n'; printf '\\xc0\\n' >&2; head -c 20000 /dev/urandom")
    raw = b"ok\xff\xfe\xed\xa0\x80end\n"
    assert result["stdout"].startswith(raw.decode("utf-8", "replace"))
    assert result["stderr"] == "\ufffd\n"
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in result["stdout"])


def test_a_multibyte_character_at_the_cap_is_cut_on_a_code_point_boundary(agent: AgentClient) -> None:
    result = agent.bash("python3 -c 'print(\"語\" * 100000)'", max_output=1001)
    out = result["stdout"]
    omitted, _ = marker_numbers(out)
    head, tail = re.split(r"\n\[\.\.\. .*? \.\.\.\]\n", out)
    assert "\ufffd" not in out
    assert set(head) == {"語"} and set(tail.rstrip("\n")) == {"語"}
    assert len(head.encode()) + len(tail.encode()) + omitted == 300001


def test_stdout_and_stderr_floods_are_read_together_and_capped_separately(agent: AgentClient) -> None:
    started = time.monotonic()
    result = agent.bash("yes err | head -c 3000000 >&2 & yes out | head -c 3000000; wait", max_output=1000)
    assert time.monotonic() - started < 15
    assert marker_numbers(result["stdout"])[0] == 3000000 - 1000
    assert marker_numbers(result["stderr"])[0] == 3000000 - 1000
    assert result["stdout"].startswith("out\nout\n") and result["stderr"].startswith("err\nerr\n")


def test_output_files_are_streamed_in_chunks_and_listed(agent: AgentClient) -> None:
    frames = agent.bash_frames(
        "printf abc > $OUTPUT_DIR/a.txt; : > $OUTPUT_DIR/empty; head -c 2500000 /dev/urandom > $OUTPUT_DIR/big.bin;"
        " cp $OUTPUT_DIR/big.bin big.copy; ln -s /etc/hostname $OUTPUT_DIR/link; mkdir $OUTPUT_DIR/sub;"
        " echo x > $OUTPUT_DIR/sub/nested; mkfifo $OUTPUT_DIR/fifo"
    )
    result = frames[-1][0]["result"]
    assert result["files"] == [
        {"name": "a.txt", "size": 3},
        {"name": "big.bin", "size": 2500000},
        {"name": "empty", "size": 0},
    ]
    chunks: dict[str, list[tuple[int, bytes]]] = {}
    for message, blob in frames[:-1]:
        assert message["type"] == "file"
        assert len(blob) <= CHUNK
        chunks.setdefault(message["name"], []).append((message["offset"], blob))
    assert [offset for offset, _ in chunks["big.bin"]] == [0, CHUNK, 2 * CHUNK]
    assert b"".join(blob for _, blob in chunks["big.bin"]) == (agent.workspace / "big.copy").read_bytes()
    assert chunks["a.txt"] == [(0, b"abc")]
    assert chunks["empty"] == [(0, b"")]


def test_an_output_file_over_max_file_is_an_error_and_no_file_is_sent(agent: AgentClient) -> None:
    frames = agent.bash_frames("echo small > $OUTPUT_DIR/a; head -c 11 /dev/zero > $OUTPUT_DIR/b", max_file=10)
    assert len(frames) == 1
    assert frames[0][0]["type"] == "error"
    assert frames[0][0]["code"] == "output_file_too_large"
    assert "b" in frames[0][0]["message"]


def test_the_previous_output_dir_is_removed_when_the_next_call_starts(agent: AgentClient) -> None:
    first = agent.bash("echo x > $OUTPUT_DIR/f; mkdir $OUTPUT_DIR/d; touch $OUTPUT_DIR/d/g")
    second = agent.bash("ls -A $OUTPUT_DIR | wc -l")
    assert not os.path.exists(first["output_dir"])
    assert second["stdout"] == "0\n"


def test_progress_frames_carry_elapsed_time_and_the_output_tails(agent: AgentClient) -> None:
    rid = agent.send(
        "bash",
        **bash_fields(
            "echo one; echo err1 >&2; head -c 10000 /dev/zero | tr '\\0' x; while [ ! -f go ]; do sleep 0.01; done; echo two",
            progress_interval=0.05,
        ),
    )
    while True:
        message, _ = agent.next_frame(rid)
        assert message["type"] == "progress", message
        if message["stdout_tail"].endswith("x" * 100) and message["stderr_tail"] == "err1\n":
            break
    assert message["elapsed"] >= 0
    assert len(message["stdout_tail"]) == 2000
    agent.result("create", path="go", file_text="")
    frames = agent.frames(rid)
    assert frames[-1][0]["result"]["stdout"].endswith("two\n")
    assert all(m["type"] == "progress" for m, _ in frames[:-1])


def test_cancel_ends_a_running_call_as_timed_out(agent: AgentClient) -> None:
    rid = agent.send("bash", **bash_fields("echo started; sleep 30", progress_interval=0.05))
    while agent.next_frame(rid)[0]["stdout_tail"] != "started\n":
        pass
    started = time.monotonic()
    agent.send("cancel", target=rid)
    result = agent.frames(rid)[-1][0]["result"]
    assert time.monotonic() - started < 5
    assert result["timed_out"] is True
    assert result["stdout"] == "started\n"


def test_cancel_of_a_queued_call_ends_it_without_running_it(agent: AgentClient) -> None:
    first = agent.send("bash", **bash_fields("while [ ! -f go ]; do sleep 0.01; done"))
    second = agent.send("bash", **bash_fields("touch ran"))
    agent.send("cancel", target=second)
    agent.result("create", path="go", file_text="")
    assert agent.frames(first)[-1][0]["result"]["timed_out"] is False
    result = agent.frames(second)[-1][0]["result"]
    assert result["timed_out"] is True
    assert not (agent.workspace / "ran").exists()


def test_bash_calls_are_serialised(agent: AgentClient) -> None:
    # If the second call could run alongside the first, it would create `go` and let the first end.
    first = agent.send("bash", **bash_fields("while [ ! -f go ]; do sleep 0.01; done", timeout=1.0))
    second = agent.send("bash", **bash_fields("touch go; echo second"))
    assert agent.frames(first)[-1][0]["result"]["timed_out"] is True
    assert agent.frames(second)[-1][0]["result"]["stdout"] == "second\n"


def test_editor_requests_are_answered_while_a_bash_call_runs(agent: AgentClient) -> None:
    rid = agent.send("bash", **bash_fields("echo started; while [ ! -f go ]; do sleep 0.01; done; cat note"))
    assert agent.result("create", path="note", file_text="one\n") == {"is_file_update": False}
    assert agent.result("view", path="note")["content"] == "one\n"
    assert agent.result("str_replace", path="note", old_str="one", new_str="two")["lines"] == ["-one", "+two"]
    assert agent.result("ping") == {}
    assert agent.pending(rid) == 0
    agent.result("create", path="go", file_text="")
    assert agent.frames(rid)[-1][0]["result"]["stdout"] == "started\ntwo\n"


def test_a_fifo_put_in_place_of_the_state_file_costs_at_most_one_call(agent: AgentClient) -> None:
    state = agent.state_dir / "state"
    agent.bash(f"rm -f '{state}'; mkfifo '{state}'", timeout=1.0)
    result = agent.bash("echo usable", timeout=5)
    assert result["stdout"] == "usable\n" and result["timed_out"] is False


def test_a_true_command_round_trip_is_fast(tmp_path: Path) -> None:
    shm = Path("/dev/shm")  # the container keeps its state in a tmpfs /tmp
    state = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path / "state"
    client = start_agent(tmp_path, state_dir=state)
    try:
        client.bash("true")
        times = []
        for _ in range(200):
            started = time.perf_counter()
            assert client.bash("true")["return_code"] == 0
            times.append(time.perf_counter() - started)
    finally:
        assert client.close() == 0
        shutil.rmtree(state, ignore_errors=True)
    # Generous against a loaded CI machine; the report quotes the measured median.
    assert statistics.median(times) < 0.05, statistics.median(times)


# -- editor: golden examples -------------------------------------------------------------------

def golden_editor_cases() -> list[dict[str, Any]]:
    cases = json.loads(GOLDEN.read_text())["cases"]
    return [c for c in cases if c["tool"] == "text_editor_code_execution"]


@pytest.mark.parametrize("case", golden_editor_cases(), ids=lambda c: c["name"])
def test_golden_editor_examples_are_reproduced_exactly(agent: AgentClient, case: dict[str, Any]) -> None:
    for name, text in case["files_before"].items():
        (agent.workspace / name).write_text(text)
    fields = {k: v for k, v in case["input"].items() if k != "command"}
    reply = agent.call(case["input"]["command"], **fields)
    if "expected" in case:
        assert reply["type"] == "result", reply
        assert reply["result"] == {k: v for k, v in case["expected"].items() if k != "type"}
    else:
        assert reply["type"] == "error"
        assert reply["code"] == case["expected_shape"]["error_code"]
        assert reply["message"]
    for name, text in case.get("files_after", {}).items():
        assert (agent.workspace / name).read_text() == text


# -- editor: view --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, total",
    [
        (b"", 0),
        (b"a", 1),
        (b"a\n", 1),
        (b"a\nb\n", 2),
        (b"a\r\nb", 2),
        (b"a\rb\r", 2),
        (b"a\n\n", 2),
        ("a\u2028b\x0cc".encode(), 3),
        (b"a\xc2\x85b", 2),
    ],
)
def test_view_counts_lines_as_str_splitlines_does(agent: AgentClient, ws: Path, data: bytes, total: int) -> None:
    (ws / "f").write_bytes(data)
    result = agent.result("view", path="f")
    assert result == {
        "file_type": "text",
        "content": data.decode(),
        "num_lines": total,
        "start_line": 1,
        "total_lines": total,
    }


def test_view_range_selects_lines_and_minus_one_means_to_the_end(agent: AgentClient, ws: Path) -> None:
    (ws / "f").write_text("1\n2\n3\n4\n")
    assert agent.result("view", path="f", view_range=[2, 3]) == {
        "file_type": "text",
        "content": "2\n3\n",
        "num_lines": 2,
        "start_line": 2,
        "total_lines": 4,
    }
    assert agent.result("view", path="f", view_range=[3, -1])["content"] == "3\n4\n"
    assert agent.result("view", path="f", view_range=[4, 4])["content"] == "4\n"


@pytest.mark.parametrize("view_range", [[0, 1], [5, 5], [2, 1], [1, 5], [-1, 2], [2, -2]])
def test_a_view_range_out_of_range_is_invalid_tool_input_with_a_clear_message(agent, ws, view_range) -> None:
    (ws / "f").write_text("1\n2\n3\n4\n")
    code, message = agent.error("view", path="f", view_range=view_range)
    assert code == "invalid_tool_input"
    assert "view_range" in message and "4 lines" in message


def test_view_of_a_file_larger_than_max_bytes_returns_whole_lines_and_the_true_total(agent, ws) -> None:
    (ws / "big.txt").write_text("".join(f"line {i:04d}\n" for i in range(1000)))
    result = agent.result("view", path="big.txt", max_bytes=95)
    assert result == {
        "file_type": "text",
        "content": "".join(f"line {i:04d}\n" for i in range(9)),
        "num_lines": 9,
        "start_line": 1,
        "total_lines": 1000,
    }
    result = agent.result("view", path="big.txt", max_bytes=95, view_range=[500, -1])
    assert result["content"] == "".join(f"line {i:04d}\n" for i in range(499, 508))
    assert (result["start_line"], result["num_lines"], result["total_lines"]) == (500, 9, 1000)


def test_view_of_a_large_file_joins_a_crlf_split_between_read_chunks(agent, ws) -> None:
    (ws / "f").write_bytes(b"a" * (CHUNK - 1) + b"\r\nb\n")
    result = agent.result("view", path="f", max_bytes=100, view_range=[2, 2])
    assert (result["content"], result["total_lines"]) == ("b\n", 2)


def test_view_of_one_line_longer_than_max_bytes_returns_its_beginning(agent, ws) -> None:
    (ws / "f").write_text("語" * 1000)
    result = agent.result("view", path="f", max_bytes=100)
    assert result["content"] == "語" * 33
    assert (result["num_lines"], result["total_lines"]) == (1, 1)


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24


@pytest.mark.parametrize(
    "name, data, kind",
    [
        ("pic.dat", PNG, "image"),
        ("photo.jpg", b"not really a jpeg", "image"),
        ("a.gif", b"GIF89a....", "image"),
        ("w", b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image"),
        ("doc", b"%PDF-1.7\n...", "pdf"),
    ],
)
def test_view_of_an_image_or_pdf_returns_base64_content(agent, ws, name: str, data: bytes, kind: str) -> None:
    (ws / name).write_bytes(data)
    result = agent.result("view", path=name)
    assert result["file_type"] == kind
    assert base64.b64decode(result["content"]) == data


def test_view_of_an_image_larger_than_max_bytes_is_invalid_and_says_too_large(agent, ws) -> None:
    (ws / "pic.png").write_bytes(PNG)
    code, message = agent.error("view", path="pic.png", max_bytes=10)
    assert code == "invalid_tool_input" and "too large" in message


def test_view_of_a_binary_file_returns_replacement_decoded_text(agent, ws) -> None:
    (ws / "b.bin").write_bytes(b"\x00\x01abc\xff\n")
    assert agent.result("view", path="b.bin")["content"] == "\x00\x01abc\ufffd\n"


def test_view_of_a_directory_lists_two_levels_without_hidden_entries(agent, ws) -> None:
    for path in ("d/a.txt", "d/.hidden", "d/sub/b.txt", "d/sub/deeper/c.txt", "d/.hdir/x"):
        (ws / path).parent.mkdir(parents=True, exist_ok=True)
        (ws / path).write_text("x")
    result = agent.result("view", path="d")
    lines = result["content"].splitlines()
    assert lines[1:] == ["d", "d/a.txt", "d/sub", "d/sub/b.txt", "d/sub/deeper"]
    assert "2 levels deep" in lines[0]
    assert result["file_type"] == "text" and result["total_lines"] == result["num_lines"] == 6


def test_view_of_a_missing_file_is_file_not_found_naming_the_path(agent) -> None:
    code, message = agent.error("view", path="nope/missing.txt")
    assert code == "file_not_found" and "nope/missing.txt" in message


def test_view_of_a_fifo_a_device_or_a_symlink_to_a_fifo_is_refused_without_hanging(agent, ws) -> None:
    os.mkfifo(ws / "fifo")
    (ws / "to-fifo").symlink_to("fifo")
    for path in ("fifo", "to-fifo", "/dev/null", "/dev/zero"):
        code, message = agent.error("view", path=path)
        assert code == "invalid_tool_input" and "not a regular file" in message


def test_view_follows_symlinks_and_a_dangling_or_looping_symlink_is_an_error(agent, ws) -> None:
    (ws / "target.txt").write_text("hi\n")
    (ws / "link").symlink_to("target.txt")
    (ws / "dangling").symlink_to("missing")
    (ws / "loop").symlink_to("loop")
    assert agent.result("view", path="link")["content"] == "hi\n"
    assert agent.error("view", path="dangling")[0] == "file_not_found"
    assert agent.error("view", path="loop")[0] == "invalid_tool_input"


def test_view_of_the_agents_own_proc_entries_is_refused(agent, ws) -> None:
    (ws / "me").symlink_to("/proc/self")
    for path in ("/proc/self/environ", f"/proc/{agent.proc.pid}/environ", "me/environ"):
        code, _ = agent.error("view", path=path)
        assert code == "invalid_tool_input"


# -- editor: create ----------------------------------------------------------------------------


def test_create_makes_parent_directories_and_reports_a_new_file(agent, ws) -> None:
    assert agent.result("create", path="a/b/c.txt", file_text="x\n") == {"is_file_update": False}
    assert (ws / "a/b/c.txt").read_text() == "x\n"


def test_create_overwrites_an_existing_file_and_keeps_its_mode(agent, ws) -> None:
    (ws / "f.sh").write_text("old")
    os.chmod(ws / "f.sh", 0o751)
    assert agent.result("create", path="f.sh", file_text="new") == {"is_file_update": True}
    assert (ws / "f.sh").read_text() == "new"
    assert stat.S_IMODE(os.stat(ws / "f.sh").st_mode) == 0o751


def test_create_through_a_symlink_writes_the_target_and_keeps_the_link(agent, ws) -> None:
    (ws / "target.txt").write_text("old")
    (ws / "link").symlink_to("target.txt")
    (ws / "dangling").symlink_to("made-by-create.txt")
    assert agent.result("create", path="link", file_text="new") == {"is_file_update": True}
    assert agent.result("create", path="dangling", file_text="made") == {"is_file_update": False}
    assert (ws / "link").is_symlink() and (ws / "target.txt").read_text() == "new"
    assert (ws / "made-by-create.txt").read_text() == "made"


def test_create_on_a_directory_or_a_fifo_is_refused(agent, ws) -> None:
    (ws / "dir").mkdir()
    os.mkfifo(ws / "fifo")
    for path in ("dir", "fifo", "dir/"):
        code, _ = agent.error("create", path=path, file_text="x")
        assert code == "invalid_tool_input"
    assert stat.S_ISFIFO(os.lstat(ws / "fifo").st_mode)


def test_create_where_a_parent_is_a_file_is_invalid(agent, ws) -> None:
    (ws / "file").write_text("x")
    assert agent.error("create", path="file/child", file_text="x")[0] == "invalid_tool_input"


def test_create_leaves_no_temporary_files_behind(agent, ws) -> None:
    for i in range(5):
        agent.result("create", path="f.txt", file_text=str(i))
    assert sorted(os.listdir(ws)) == ["f.txt", "inputs"]


def test_create_round_trips_surrogate_escaped_bytes_exactly(agent, ws) -> None:
    agent.result("create", path="raw", file_text=b"caf\xe9\n".decode("utf-8", "surrogateescape"))
    assert (ws / "raw").read_bytes() == b"caf\xe9\n"


# -- editor: str_replace -----------------------------------------------------------------------


def test_str_replace_refuses_an_empty_missing_or_ambiguous_old_str_and_leaves_the_file_unchanged(agent, ws) -> None:
    (ws / "f.txt").write_text("a x b x\n")
    assert agent.error("str_replace", path="f.txt", old_str="", new_str="y")[0] == "invalid_tool_input"
    assert agent.error("str_replace", path="f.txt", old_str="zzz", new_str="y") == (
        "invalid_tool_input",
        "old_str not found in f.txt",
    )
    assert agent.error("str_replace", path="f.txt", old_str="x", new_str="y") == (
        "invalid_tool_input",
        "old_str found 2 times in f.txt; it must be unique",
    )
    assert agent.error("str_replace", path="f.txt", old_str="a\x00", new_str="y")[0] == "invalid_tool_input"
    assert (ws / "f.txt").read_text() == "a x b x\n"
    assert agent.error("str_replace", path="missing.txt", old_str="a", new_str="b")[0] == "file_not_found"


@pytest.mark.parametrize(
    "text, old, new, hunk, after",
    [
        ("a\nb\nc\nd\n", "b\nc", "B\nX\nC", (2, 2, 2, 3, ["-b", "-c", "+B", "+X", "+C"]), "a\nB\nX\nC\nd\n"),
        ("a\nb\nc\n", "b\n", "", (2, 1, 2, 0, ["-b"]), "a\nc\n"),
        ("one two three", "two", "2", (1, 1, 1, 1, ["-one two three", "+one 2 three"]), "one 2 three"),
        ("x\r\ny\r\nz", "y", "Y", (2, 1, 2, 1, ["-y", "+Y"]), "x\r\nY\r\nz"),
    ],
)
def test_str_replace_reports_the_whole_touched_lines_without_context(agent, ws, text, old, new, hunk, after) -> None:
    (ws / "f").write_bytes(text.encode())
    result = agent.result("str_replace", path="f", old_str=old, new_str=new)
    assert (result["old_start"], result["old_lines"], result["new_start"], result["new_lines"], result["lines"]) == hunk
    assert (ws / "f").read_bytes() == after.encode()


def test_str_replace_on_invalid_utf8_is_byte_exact(agent, ws) -> None:
    (ws / "f").write_bytes(b"caf\xe9 ok\n\xff\xfe end\n")
    result = agent.result("str_replace", path="f", old_str="ok", new_str="OK")
    assert (ws / "f").read_bytes() == b"caf\xe9 OK\n\xff\xfe end\n"
    assert result["lines"] == ["-caf\ufffd ok", "+caf\ufffd OK"]


def test_str_replace_on_a_binary_file_is_refused(agent, ws) -> None:
    (ws / "b.bin").write_bytes(b"abc\x00def")
    code, message = agent.error("str_replace", path="b.bin", old_str="abc", new_str="x")
    assert code == "invalid_tool_input" and "binary file" in message
    assert (ws / "b.bin").read_bytes() == b"abc\x00def"


def test_str_replace_keeps_the_file_mode(agent, ws) -> None:
    (ws / "run.sh").write_text("echo a\n")
    os.chmod(ws / "run.sh", 0o700)
    agent.result("str_replace", path="run.sh", old_str="a", new_str="b")
    assert stat.S_IMODE(os.stat(ws / "run.sh").st_mode) == 0o700


def test_concurrent_str_replaces_on_one_file_all_land(agent, ws) -> None:
    (ws / "f").write_text("".join(f"token{i:02d}\n" for i in range(20)))
    ids = [agent.send("str_replace", path="f", old_str=f"token{i:02d}", new_str=f"done{i:02d}") for i in range(20)]
    for rid in ids:
        assert agent.frames(rid)[-1][0]["type"] == "result"
    assert (ws / "f").read_text() == "".join(f"done{i:02d}\n" for i in range(20))


# -- editor: paths -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["a\x00b", "x" * 4097, "d/" * 2100])
def test_a_path_with_nul_or_over_4096_bytes_is_invalid(agent, path: str) -> None:
    assert agent.error("view", path=path)[0] == "invalid_tool_input"
    assert agent.error("create", path=path, file_text="")[0] == "invalid_tool_input"


def test_hostile_names_are_taken_literally(agent, ws) -> None:
    names = ["with space.txt", "new\nline.txt", "ünï 語.txt", "-rf", "$(touch pwn)", "`touch pwn`", 'it\'s "q"']
    for name in names:
        assert agent.result("create", path=name, file_text=name) == {"is_file_update": False}
        assert agent.result("view", path=name)["content"] == name
    assert sorted(os.listdir(ws)) == sorted(names + ["inputs"])


def test_absolute_and_workspace_relative_paths_name_the_same_file(agent, ws) -> None:
    agent.result("create", path=str(ws / "abs.txt"), file_text="same")
    assert agent.result("view", path="abs.txt")["content"] == "same"
    assert agent.result("view", path="./abs.txt")["content"] == "same"


# -- file transfer -------------------------------------------------------------------------------


def test_put_file_chunks_share_one_id_and_get_file_returns_the_bytes(agent, ws) -> None:
    data = os.urandom(2 * CHUNK + 123)
    rid = agent.new_id()
    for offset in range(0, len(data), CHUNK):
        agent.send(
            "put_file", rid=rid, blob=data[offset : offset + CHUNK], path="inputs/up.bin", offset=offset, eof=False
        )
    agent.send("put_file", rid=rid, path="inputs/up.bin", offset=len(data), eof=True, mode=0o640)
    assert agent.frames(rid)[-1][0] == {"id": rid, "type": "result", "result": {"size": len(data)}}
    assert (ws / "inputs/up.bin").read_bytes() == data
    assert stat.S_IMODE(os.stat(ws / "inputs/up.bin").st_mode) == 0o640
    frames = agent.frames(agent.send("get_file", path="inputs/up.bin", max_size=10 * CHUNK))
    assert frames[-1][0]["result"] == {"size": len(data)}
    assert b"".join(blob for _, blob in frames[:-1]) == data
    assert [m["offset"] for m, _ in frames[:-1]] == [0, CHUNK, 2 * CHUNK]
    assert {m["name"] for m, _ in frames[:-1]} == {"up.bin"}


def test_a_failed_upload_answers_once_and_ignores_its_later_chunks(agent, ws) -> None:
    (ws / "dir").mkdir()
    rid = agent.new_id()
    agent.send("put_file", rid=rid, blob=b"abc", path="dir", offset=0, eof=False)
    agent.send("put_file", rid=rid, blob=b"def", path="dir", offset=3, eof=False)
    agent.send("put_file", rid=rid, path="dir", offset=6, eof=True)
    assert agent.next_frame(rid)[0]["code"] == "invalid_tool_input"
    assert agent.result("ping") == {}
    assert agent.pending(rid) == 0
    assert os.listdir(ws / "dir") == [] and os.listdir(ws) == ["dir", "inputs"]


def test_get_file_over_max_size_is_output_file_too_large(agent, ws) -> None:
    (ws / "f").write_bytes(b"x" * 100)
    assert agent.error("get_file", path="f", max_size=99)[0] == "output_file_too_large"


def test_get_file_of_an_empty_file_sends_one_empty_frame(agent, ws) -> None:
    (ws / "empty").write_bytes(b"")
    frames = agent.frames(agent.send("get_file", path="empty", max_size=10))
    assert [(m["type"], m.get("offset"), blob) for m, blob in frames] == [("file", 0, b""), ("result", None, b"")]


# -- pure helpers --------------------------------------------------------------------------------


def test_the_streaming_line_counter_agrees_with_splitlines() -> None:
    module = load_agent_module()
    rng = random.Random(1)
    alphabet = [
        b"a",
        b"\n",
        b"\r",
        b"\x0b",
        b"\x0c",
        b"\x1c",
        b"\x1e",
        b"\x85",
        b"\xc2",
        b"\xe2",
        b"\x80",
        b"\xa8",
        b"\xa9",
        b"\xff",
        b"\x00",
        "語".encode(),
    ]
    for _ in range(3000):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        counter = module.LineCounter()
        pos = 0
        while pos < len(data):
            step = rng.randrange(1, 5)
            counter.feed(data[pos : pos + step])
            pos += step
        expected = len(data.decode("utf-8", "replace").splitlines())
        assert counter.total() == expected == len(data.decode("utf-8", "surrogateescape").splitlines()), data


def test_cuts_on_code_point_boundaries_leave_valid_utf8() -> None:
    module = load_agent_module()
    data = "a語€😀b".encode()
    for k in range(len(data) + 1):
        head = module.cut_head(data[:k])
        assert data.startswith(head) and k - len(head) < 4
        head.decode("utf-8")
        tail = module.cut_tail(data[k:])
        assert data.endswith(tail) and len(data) - k - len(tail) < 4
        tail.decode("utf-8")


# -- as PID 1 (the container's init) ------------------------------------------------------------


@pytest.fixture(scope="session")
def pid_namespace_prefix() -> tuple[str, ...]:
    prefix = ("unshare", "--pid", "--fork", "--kill-child", "--mount-proc")
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.skip("unshare hangs here")
    if probe.returncode != 0:
        pytest.skip(f"cannot create a pid namespace here: {probe.stderr.decode(errors='replace').strip()}")
    return prefix


@pytest.fixture
def init_agent(tmp_path: Path, pid_namespace_prefix):
    client = start_agent(tmp_path, "init", prefix=pid_namespace_prefix)
    assert client.result("hello")["pid"] == 1
    yield client
    client.kill()  # as PID 1 it outlives the end of its input; killing unshare kills the namespace


def test_as_pid_1_setsid_nohup_and_double_forked_processes_are_swept(init_agent: AgentClient) -> None:
    daemon = "import os,time\nif os.fork(): os._exit(0)\nos.setsid()\nif os.fork(): os._exit(0)\ntime.sleep(1000)"
    started = time.monotonic()
    result = init_agent.bash(
        f"(setsid sleep 1001 &); nohup sleep 1002 >/dev/null 2>&1 & python3 -c '{daemon}'; echo started"
    )
    assert result["stdout"] == "started\n"
    assert time.monotonic() - started < 5
    listing = init_agent.bash("cat /proc/[0-9]*/cmdline | tr '\\0' ' '")["stdout"]
    assert "sleep 100" not in listing and "time.sleep" not in listing


def test_as_pid_1_orphans_are_reaped(init_agent: AgentClient) -> None:
    init_agent.bash("for i in $(seq 300); do (true &); done")
    count = (
        "for i in $(seq 100); do n=$(grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l);"
        " [ $n -eq 0 ] && break; sleep 0.02; done; echo $n"
    )
    assert init_agent.bash(count)["stdout"] == "0\n"


def test_as_pid_1_user_code_cannot_signal_the_agent_away(init_agent: AgentClient) -> None:
    result = init_agent.bash(
        "kill -9 1; kill -INT 1; kill -TERM 1; kill -HUP 1; sleep 100 & kill -9 -1; wait; echo alive"
    )
    assert result["stdout"] == "alive\n"
    assert init_agent.result("hello")["pid"] == 1
    assert init_agent.bash("echo usable")["stdout"] == "usable\n"


def test_as_pid_1_end_of_input_does_not_stop_the_agent(init_agent: AgentClient) -> None:
    init_agent.proc.stdin.close()
    wait_until(lambda: "waiting for the host to attach again" in init_agent.stderr_text(), what="the EOF log line")
    assert init_agent.proc.poll() is None


def test_saved_shell_state_is_restored_by_an_agent_started_on_the_same_workspace(tmp_path: Path):
    first = start_agent(tmp_path, "keep")
    (first.workspace / "sub").mkdir()
    first.bash("cd sub; export KEPT=yes")
    assert first.result("save_state") == {}
    assert first.close() == 0
    # A restarted container: same workspace, empty tmpfs state directory.
    second = AgentClient(first.workspace, tmp_path / "fresh-state", tmp_path / "keep2.log")
    try:
        out = second.bash("pwd; echo $KEPT")
        assert out["stdout"] == f"{first.workspace / 'sub'}\nyes\n"
        second.bash("true", restart=True)
        assert second.result("save_state") == {}
        assert "KEPT" not in (first.workspace / ".codeexec" / "shell-state").read_text()
    finally:
        assert second.close() == 0


def test_images_have_their_own_view_budget_larger_than_the_text_one(agent: AgentClient, ws: Path):
    (ws / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 5000)
    (ws / "big.txt").write_text("line\n" * 2000)
    image = agent.result("view", path="big.png", max_bytes=1024, max_media_bytes=10_000)
    assert image["file_type"] == "image" and len(image["content"]) > 1024
    text = agent.result("view", path="big.txt", max_bytes=1024, max_media_bytes=10_000)
    assert text["total_lines"] == 2000 and text["num_lines"] < 2000 and len(text["content"]) <= 1024
    code, message = agent.error("view", path="big.png", max_bytes=1024, max_media_bytes=2000)
    assert code == "invalid_tool_input" and "too large" in message


# --- shell state on the workspace; pool containers that outlive their server -----------------------


def test_the_shell_state_reaches_the_workspace_after_a_call_that_changed_it_and_a_rebuilt_agent_restores_it(tmp_path: Path) -> None:
    first = start_agent(tmp_path, "first")
    (first.workspace / "sub").mkdir()
    first.bash("export KEPT=yes; cd sub")
    backup = first.workspace / ".codeexec" / "shell-state"
    deadline = time.monotonic() + 5
    while not (backup.exists() and "KEPT" in backup.read_text()):  # written just after the reply
        assert time.monotonic() < deadline, "the shell state never reached the workspace"
        time.sleep(0.01)
    assert "sub" in backup.read_text()
    first.bash("true")  # OLDPWD settles (the restored cd)
    time.sleep(0.2)
    mtime = backup.stat().st_mtime_ns
    first.bash("true")  # changes nothing but OUTPUT_DIR: the backup is not rewritten
    first.bash("true")
    time.sleep(0.2)
    assert backup.stat().st_mtime_ns == mtime
    first.kill()  # no save_state: the container was removed behind the host's back
    # The rebuilt container: same workspace, a fresh tmpfs state directory.
    again = AgentClient(first.workspace, tmp_path / "fresh-state", tmp_path / "again.log")
    try:
        assert again.bash("pwd; echo $KEPT")["stdout"] == f"{first.workspace}/sub\nyes\n"
    finally:
        assert again.close() == 0


def test_an_unclaimed_pool_agent_exits_when_its_server_falls_silent(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CODEEXEC_POOL", "1")
    monkeypatch.setenv("CODEEXEC_POOL_SILENCE", "1")
    pinged = start_agent(tmp_path, "pinged")
    for _ in range(6):  # pings keep it alive past the silence limit
        assert pinged.result("ping") == {}
        time.sleep(0.4)
    assert pinged.proc.poll() is None
    started = time.monotonic()
    assert pinged.proc.wait(10) == 0  # then silence: it exits
    assert time.monotonic() - started < 3
    assert "no word from its server" in pinged.stderr_text()
    pinged.close()


def test_a_claimed_pool_agent_does_not_exit_when_its_server_falls_silent(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CODEEXEC_POOL", "1")
    monkeypatch.setenv("CODEEXEC_POOL_SILENCE", "0.5")
    claimed = start_agent(tmp_path, "claimed")
    claimed.send("claim")
    time.sleep(1.5)
    assert claimed.proc.poll() is None
    assert claimed.bash("echo alive")["stdout"] == "alive\n"
    assert claimed.close() == 0
