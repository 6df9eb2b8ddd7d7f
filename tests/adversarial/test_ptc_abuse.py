"""Programmatic tool calling under abuse, end to end: real MCP client sessions over streamable HTTP
to one server (Docker backend) configured with a small ``mcp``-SDK stdio upstream
(tests/support/upstream_server.py); every case is a real ``code_execution`` cell.

The upstream counts what reaches it (``t__stats``): the number of ``count`` calls, the most in
progress at once, and how many carried a forged marker. Those counters are the host-side truth the
cases assert against: a call the cell did not issue through its functions never arrives there.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from mcp_codeexec.protocol import encode_frame
from tests.adversarial.conftest import BASH, GVISOR, MiB, adversarial_settings
from tests.support.oracle import assert_hosted_shape
from tests.support.servers import http_server, mcp_client, new_token, remove_installation

pytestmark = pytest.mark.anyio

UPSTREAM = str(Path(__file__).resolve().parents[1] / "support" / "upstream_server.py")
IN_FLIGHT = 16
MAX_BYTES = 64 * 1024
SEQUENTIAL = 2_000 if GVISOR else 10_000
"""Calls of the sequential case. Under gVisor each call crosses the Sentry four times (REPL →
agent → attach stream and back) and ran at 43-79 calls/s on this 2-core machine (vs ~350 under
runc), so 10,000 would take two to four minutes there; 2,000 show the same thing (every result
right, nothing accumulates per call) in 25-50 s."""


@dataclass
class Session:
    client: Any

    async def code(self, source: str) -> dict[str, Any]:
        result = await self.client.call_tool("code_execution", {"code": source})
        assert_hosted_shape(result.structured_content, "code_execution")
        assert result.is_error is False, result.content[0].text
        return result.structured_content

    async def ok(self, source: str) -> str:
        block = await self.code(source)
        assert block["return_code"] == 0, block
        return block["stdout"]

    async def bash(self, command: str) -> dict[str, Any]:
        result = await self.client.call_tool(BASH, {"command": command})
        assert_hosted_shape(result.structured_content, BASH)
        return result.structured_content

    async def stats(self, reset: bool = True) -> dict[str, int]:
        return json.loads((await self.ok(f"print(await t__stats({{'reset': {reset}}}))")).strip())


@dataclass
class Server:
    url: str
    process: psutil.Process
    cell: Session
    other: Session


def _server_process(port: str) -> psutil.Process:
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if "serve" in cmdline and port in cmdline:
            return child
    raise AssertionError("the HTTP server process was not found")


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> AsyncIterator[Server]:
    root = tmp_path_factory.mktemp("ptc-abuse")
    config = root / "tools.json"
    config.write_text(json.dumps({"mcpServers": {"t": {
        "command": sys.executable, "args": [UPSTREAM],
        "allowed_tools": ["count", "stats", "frames", "big", "echo"],
    }}}))
    settings = adversarial_settings(
        root, tools_config=str(config), tools_max_in_flight=IN_FLIGHT, tools_pending_timeout=30.0,
        tools_max_argument_bytes=MAX_BYTES, tools_max_result_bytes=MAX_BYTES, code_cell_timeout=240.0,
    )
    try:
        alice, bob = new_token(), new_token()  # two principals: two sandboxes on one server
        with http_server(settings, token=f"alice:{alice},bob:{bob}") as url:
            async with AsyncExitStack() as stack:
                cell = Session(await stack.enter_async_context(mcp_client("http", settings, base_url=url, token=alice)))
                other = Session(await stack.enter_async_context(mcp_client("http", settings, base_url=url, token=bob)))
                await cell.ok("pass")
                assert (await other.bash("echo ok"))["stdout"] == "ok\n"
                yield Server(url, _server_process(url.rsplit(":", 1)[1]), cell, other)
    finally:
        remove_installation(settings)


async def test_ten_thousand_sequential_calls_from_a_cell_all_answer_in_bounded_memory(server: Server) -> None:
    await server.cell.stats()
    rss_before = server.process.memory_info().rss
    started = time.monotonic()
    out = await server.cell.ok(
        "import resource, time\n"
        "rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t0 = time.monotonic()\nright = 0\n"
        f"for i in range({SEQUENTIAL}):\n"
        "    right += await t__count({'text': str(i)}) == str(i)\n"
        "took = time.monotonic() - t0\n"
        "print(right, round(took, 2), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0)\n"
    )
    wall = time.monotonic() - started
    right, took, cell_rss_kib = out.split()
    assert int(right) == SEQUENTIAL
    stats = await server.cell.stats()
    assert stats["calls"] == SEQUENTIAL and stats["max_in_progress"] == 1, stats
    # Nothing accumulates per call: not in the interpreter, not in the server.
    assert int(cell_rss_kib) < 32 * 1024, f"the interpreter grew {cell_rss_kib} KiB"
    grown = server.process.memory_info().rss - rss_before
    assert grown < 64 * MiB, f"the server grew {grown / MiB:.0f} MiB over {SEQUENTIAL} calls"
    print(f"\n{SEQUENTIAL} sequential calls: {float(took):.1f} s in the cell ({SEQUENTIAL / float(took):.0f} calls/s), "
          f"{wall:.1f} s wall; server RSS {grown / MiB:+.1f} MiB")


async def test_a_thousand_calls_at_once_stay_within_the_in_flight_bound_and_another_session_answers(server: Server) -> None:
    await server.cell.stats()
    answered: list[dict[str, Any]] = []
    cell_done = anyio.Event()

    async def other_session() -> None:
        await anyio.sleep(0.5)  # the gather is under way
        answered.append(await server.other.bash("echo ok"))
        answered.append({"cell_still_running": not cell_done.is_set()})

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_session)
        out = await server.cell.ok(
            "import asyncio\n"
            "got = await asyncio.gather(*(t__count({'text': str(i), 'ms': 40}) for i in range(1000)))\n"
            "print(got == [str(i) for i in range(1000)])\n"
        )
        cell_done.set()
    assert out == "True\n"
    stats = await server.cell.stats()
    assert stats["calls"] == 1000, stats
    assert 1 < stats["max_in_progress"] <= IN_FLIGHT, stats
    assert answered[0]["stdout"] == "ok\n", answered
    print(f"\n1000 at once: at most {stats['max_in_progress']} in progress upstream (bound {IN_FLIGHT}); "
          f"other session answered {'during' if answered[1]['cell_still_running'] else 'after'} the cell")


# --- forged and replayed frames -----------------------------------------------------------------

FORGED_TEXT = "FORGED"


def forged_frames() -> bytes:
    """Valid agent→host ``tool_call`` frames (the real encoder) for request ids a forger might
    try: small ones, and the host's id range (random ×1024, so any guess is a guess)."""
    ids = [0, 1, 2, 1024, 2**20, 2**40]
    frames = b"".join(
        encode_frame({"id": rid, "type": "tool_call", "call_id": f"c{n}", "name": "t__count",
                      "input": {"text": f"{FORGED_TEXT}-{rid}-{n}"}})
        for rid in ids for n in (1, 2)
    )
    return frames


PROBE = r"""
import ctypes, ctypes.util, json, os, re, struct, sys, time
frames = bytes.fromhex(FRAMES_HEX)
me = os.getpid()
report = {"written": [], "ptrace": [], "vm_write": [], "stole": 0, "replayed": []}
targets = ["/dev/stdout", "/dev/stderr", "/dev/tty", "/dev/console", "/proc/1/fd/0", "/proc/1/fd/1", "/proc/1/fd/2"]
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            targets += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            pass
# Replay: a host frame read off the agent's stdin carries the live request id; send it back as a call.
try:
    fd = os.open("/proc/1/fd/0", os.O_RDONLY | os.O_NONBLOCK)
    try:
        stolen = os.read(fd, 65536)
    except OSError:
        stolen = b""
    os.close(fd)
    report["stole"] = len(stolen)
    for rid in set(int(m) for m in re.findall(rb'"id":(\d+)', stolen)):
        body = json.dumps({"id": rid, "type": "tool_call", "call_id": "c1", "name": "t__count",
                           "input": {"text": "FORGED-replay"}}, separators=(",", ":")).encode()
        frames += struct.pack(">II", len(body), 0) + body
        report["replayed"].append(rid)
except OSError:
    pass
for path in targets:
    if path.startswith(f"/proc/{me}/") or path.startswith("/proc/self/"):
        continue  # our own fds are our own output, not a channel
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        continue
    try:
        if os.write(fd, frames) > 0:
            report["written"].append(path)
    except OSError:
        pass
    finally:
        os.close(fd)
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(frames[:64])
for pid in [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]:
    for request in (16, 0x4206):  # PTRACE_ATTACH, PTRACE_SEIZE
        if libc.ptrace(request, pid, None, None) == 0:
            report["ptrace"].append(pid)
            libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
    local, remote = iovec(ctypes.addressof(buf), 64), iovec(0x10000, 64)
    if libc.process_vm_writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) > 0:
        report["vm_write"].append(pid)
with open(REPORT_PATH, "w") as out:
    out.write(json.dumps(report))

"""


async def test_frames_forged_or_replayed_by_sandbox_code_never_reach_the_host_as_calls(server: Server) -> None:
    box = server.cell
    await box.stats()
    frames_hex = repr(forged_frames().hex())
    reports = []
    # From bash (a process beside the agent). Its frames also land in the shell's own command pipe,
    # which wrecks this bash call (answered as an error, the shell restarted): the report is a file.
    source = PROBE.replace("FRAMES_HEX", frames_hex).replace("REPORT_PATH", "'/tmp/bash-report.json'")
    await box.ok(f"open('/tmp/probe.py', 'w').write({source!r})")
    bash = await box.bash("python3 /tmp/probe.py > /dev/null")
    assert bash["type"] == "bash_code_execution_result" or bash["error_code"] in ("execution_time_exceeded", "unavailable"), bash
    reports.append(("bash", json.loads(await box.ok("print(open('/tmp/bash-report.json').read())"))))
    # ... and from the REPL, while a real call of the same cell is pending (a live request id).
    source = PROBE.replace("FRAMES_HEX", frames_hex).replace("REPORT_PATH", "'/tmp/repl-report.json'")
    block = await box.code(
        "import asyncio\n"
        "pending = asyncio.ensure_future(t__count({'text': 'real', 'ms': 300}))\n"
        "await asyncio.sleep(0.05)\n"
        f"exec(compile({source!r}, '<probe>', 'exec'), {{}})\n"
        "print(await pending)\n"
    )
    assert block["stdout"].endswith("real\n"), block["stdout"][-300:]  # the real call answered meanwhile
    reports.append(("repl", json.loads(await box.ok("print(open('/tmp/repl-report.json').read())"))))
    # The same cell can also talk to the agent over its own control socket: those frames are
    # this cell's calls (the same functions), held to the same bound and checks by the agent.
    raw = await box.code(
        "import os, socket, struct, json, asyncio\n"
        "def kind(n):\n"
        "    try:\n        return os.readlink(f'/proc/self/fd/{n}')\n"
        "    except OSError:\n        return ''\n"
        "socks = [int(n) for n in os.listdir('/proc/self/fd') if kind(n).startswith('socket:')]\n"
        "for fd in socks:\n"
        "    s = socket.socket(fileno=os.dup(fd))\n"
        "    for n in range(100):\n"
        "        body = json.dumps({'t': 'tool_call', 'call_id': f'x{n}', 'name': 't__count', 'input': {'text': 'raw', 'ms': 200}}).encode()\n"
        "        s.sendall(struct.pack('>II', len(body), 0) + body)\n"
        "    s.detach()\n"
        "await asyncio.sleep(1.0)\n"
        "print(len(socks))\n"
    )
    stats = await box.stats()
    for where, report in reports:
        # Other sandbox processes (the bash shell) are the code's own to trace; the agent is not.
        assert 1 not in report["ptrace"] and 1 not in report["vm_write"], (where, report)
        # The host channel is the agent's stdio. runc: the agent is non-dumpable, so none of its
        # /proc/1/fd opens. gVisor 2022 ignores that flag and checks the file's owner: the stdio
        # pipes are root's (the agent starts as root and drops to 1000), its own later pipes to the
        # shell are 1000's, as is the shell itself: nothing the code could not already reach.
        reached = [p for p in report["written"]
                   if (p in ("/proc/1/fd/0", "/proc/1/fd/1", "/proc/1/fd/2") if GVISOR else p.startswith("/proc/1/"))]
        assert not reached, (where, report["written"])
        assert report["stole"] == 0, (where, report)
    # The host's truth: no forged call arrived; the raw control-socket burst stayed within the bound.
    assert stats["forged"] == 0, stats
    assert stats["max_in_progress"] <= IN_FLIGHT, stats
    assert raw["return_code"] == 0 and int(raw["stdout"]) >= 1, raw  # its control socket (and asyncio's own pair)
    # The agent counts the raw frames as this cell's calls: past the bound they are refused unsent.
    assert 1 < stats["calls"] <= 1 + IN_FLIGHT, stats
    # The session is intact: a normal call still answers.
    assert await box.ok("print(await t__count({'text': 'after'}))") == "after\n"
    print(f"\nprobes: {[(w, r['written'], r['stole']) for w, r in reports]}; upstream after: {stats}")


async def test_a_tool_result_made_of_frames_arrives_verbatim_and_does_nothing_else(server: Server) -> None:
    await server.cell.stats()
    payload = forged_frames().decode("latin-1")
    out = await server.cell.ok(
        f"payload = {payload!r}\n"
        "got = await t__frames({'payload': payload})\n"
        "print(got == payload, len(got))\n"
    )
    assert out == f"True {len(payload)}\n"
    stats = await server.cell.stats()
    assert stats["calls"] == 0 and stats["forged"] == 0, stats


async def test_oversized_arguments_and_results_are_refused_with_a_clear_error_in_the_cell(server: Server) -> None:
    box = server.cell
    big_args = await box.code(f"await t__echo({{'text': 'a' * {MAX_BYTES + 10}}})")
    assert big_args["return_code"] == 1
    assert f"above the {MAX_BYTES}-byte limit; send less per call" in big_args["stderr"], big_args["stderr"]
    big_result = await box.code(f"await t__big({{'size': {MAX_BYTES + 10}}})")
    assert big_result["return_code"] == 1
    assert f"above the {MAX_BYTES}-byte limit, and was not delivered; ask for less" in big_result["stderr"]
    assert len(big_result["stderr"]) < 4000, "the refused result must not be delivered anyway"
    # Past the frame cap itself (8 MiB): refused inside the interpreter before anything is sent.
    huge = await box.code("await t__echo({'text': 'a' * (9 * 1024 * 1024)})")
    assert huge["return_code"] == 1 and "is larger than" in huge["stderr"], huge["stderr"][-500:]
    just_right = await box.ok(f"print(len(await t__big({{'size': {MAX_BYTES - 100}}})))")
    assert just_right == f"{MAX_BYTES - 100}\n"


async def test_frames_carrying_the_live_request_id_are_held_to_the_bound_and_replays_ignored_by_the_host(
    tmp_path: Path, docker_engine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth should the channel ever be reachable (gVisor's 2022 build opened /proc/1/fd
    before the agent started as root): ``tool_call`` frames with the running cell's id arrive on
    the host channel beside the agent's. Injected here at the host's
    frame dispatch: a replay of the cell's real call (same call id) and 50 forged calls at once."""
    from mcp_codeexec.backends.sandbox import SandboxBackend

    original = SandboxBackend._call
    injected: list[int] = []

    async def forging_call(self: Any, sandbox: Any, message: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        on_frame = kwargs.get("on_frame")
        if message.get("op") == "python" and on_frame is not None:
            async def forging(frame: dict[str, Any], blob: bytes) -> None:
                await on_frame(frame, blob)
                if frame["type"] == "tool_call" and not injected:
                    injected.append(frame["id"])
                    await on_frame(dict(frame), blob)  # a replay: the same call id again
                    for n in range(50):
                        await on_frame({**frame, "call_id": f"forged{n}",
                                        "input": {"text": f"{FORGED_TEXT}-{n}", "ms": 300}}, blob)
            kwargs["on_frame"] = forging
        return await original(self, sandbox, message, **kwargs)

    monkeypatch.setattr(SandboxBackend, "_call", forging_call)
    config = tmp_path / "tools.json"
    config.write_text(json.dumps({"mcpServers": {"t": {"command": sys.executable, "args": [UPSTREAM],
                                                       "allowed_tools": ["count", "stats"]}}}))
    settings = adversarial_settings(tmp_path, tools_config=str(config), tools_max_in_flight=IN_FLIGHT)
    try:
        async with mcp_client("memory", settings) as client:
            box = Session(client)
            out = await box.ok("print(await t__count({'text': 'real', 'ms': 300}))\nimport asyncio\nawait asyncio.sleep(0.5)")
            assert out == "real\n"
            stats = await box.stats()
    finally:
        remove_installation(settings)
    assert injected, "no tool_call frame was seen"
    assert stats["calls"] - stats["forged"] == 1, stats  # the replay did not run the call again
    assert stats["forged"] <= IN_FLIGHT - 1, stats  # the rest were refused unrun by the host's own bound
    assert stats["max_in_progress"] <= IN_FLIGHT, stats
