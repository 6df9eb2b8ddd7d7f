"""Output floods and hostile bytes (ADVERSARIAL.md 5, 6; security.md §8 A7, C22-C27).

The server runs in this process (in-memory transport), so its memory is this process's RSS,
sampled while the floods run. T is 20 s here: these cases must finish well inside it.

Both backends (``backend_name``): on Kubernetes the floods cross the pod's attach stream, so the
cases about the stream (a flood capped, both streams at once, fake frames, a flood beside another
session) run there too; ``@outside_kubernetes_subset`` marks the rest, the agent's own encoding, the same anywhere.
"""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import psutil
import pytest

from tests.adversarial.conftest import GVISOR, MiB, Sandbox, adversarial_settings, open_sandbox, sandboxes
from tests.support.backends import outside_kubernetes_subset, remove_backend_installation

SUBSET = "the agent's own capping and decoding, the same in a pod"

pytestmark = pytest.mark.anyio

MARKER = re.compile(r"\n\[\.\.\. (\d+) bytes omitted; (?:full output|first \d+ bytes) saved to (\S+) \.\.\.\]\n")


@pytest.fixture(scope="module")
async def box(tmp_path_factory: pytest.TempPathFactory, docker_engine: None, backend_name: str) -> AsyncIterator[Sandbox]:
    async with sandboxes(tmp_path_factory, "output", 1, backend_name, call_timeout=20.0) as (sandbox,):
        yield sandbox


@contextmanager
def peak_rss() -> Iterator[list[int]]:
    """[baseline, peak] RSS of this process (the in-memory server) while the body runs."""
    proc = psutil.Process()
    box = [proc.memory_info().rss, proc.memory_info().rss]
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.05):
            box[1] = max(box[1], proc.memory_info().rss)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        stop.set()
        thread.join()


def assert_valid_utf8(text: str) -> None:
    text.encode("utf-8")  # strict: a lone surrogate (an undecodable byte smuggled through) raises
    assert not re.search("[\ud800-\udfff]", text)


def assert_capped(text: str, cap: int, total: int) -> None:
    match = MARKER.search(text)
    assert match, text[:300]
    kept = len(text.encode()) - len(match.group(0).encode())
    assert kept <= cap
    assert int(match.group(1)) == total - kept


# gVisor's pipes move ~50 MB/s (runc: ~1 GB/s), so under runsc the flood is 200 MB, not 2 GB,
# to finish inside T; the capping path is the same.
FLOOD = 200_000_000 if GVISOR else 2_000_000_000


async def test_stdout_flood_is_capped_with_a_marker_and_server_memory_stays_bounded(box: Sandbox) -> None:
    cap = box.settings.max_output_bytes
    with peak_rss() as rss:
        result = await box.bash(f"yes | head -c {FLOOD}")
    sc = result.structured_content
    assert sc["type"] == "bash_code_execution_result" and sc["return_code"] == 0, result.content[0].text[:500]
    assert_capped(sc["stdout"], cap, FLOOD)
    assert sc["stdout"].startswith("y\ny\n") and sc["stdout"].endswith("y\n")
    assert rss[1] - rss[0] < 64 * MiB, f"server RSS grew {(rss[1] - rss[0]) / MiB:.0f} MiB"
    # The marker names the spill file, which holds the start of the full stream.
    spill = MARKER.search(sc["stdout"]).group(2)
    size, head = (await box.sh(f"wc -c < {spill}; head -c 10 {spill}")).split("\n", 1)
    assert head == "y\n" * 5 and 0 < int(size) <= box.settings.max_spill_bytes


@outside_kubernetes_subset(SUBSET)
async def test_binary_floods_on_both_streams_give_valid_utf8_capped(box: Sandbox) -> None:
    cap = box.settings.max_output_bytes
    with peak_rss() as rss:
        result = await box.bash("head -c 10000000 /dev/urandom >&2; head -c 10000000 /dev/urandom; echo; cat /bin/ls")
    sc = result.structured_content
    assert sc["type"] == "bash_code_execution_result"
    for stream in ("stdout", "stderr"):
        assert_valid_utf8(sc[stream])
        assert MARKER.search(sc[stream]), stream
        assert len(sc[stream].encode()) <= 3 * cap + 200  # U+FFFD is 3 bytes for each bad byte
    assert rss[1] - rss[0] < 64 * MiB


@outside_kubernetes_subset(SUBSET)
async def test_binary_output_over_stdio_is_well_formed_json(tmp_path, docker_engine: None, backend_name: str) -> None:
    """Over a real wire (stdio JSON-RPC) undecodable bytes and NULs arrive as valid JSON text."""
    from tests.support.servers import mcp_client

    settings = adversarial_settings(tmp_path, backend_name, call_timeout=20.0)
    try:
        async with mcp_client("stdio", settings) as client:
            sandbox = Sandbox(client, settings, "stdio")
            result = await sandbox.bash(r"printf 'ok\xff\xfe\xed\xa0\x80end\0nul\n'; printf '\xc0\n' >&2; head -c 300000 /dev/urandom")
            sc = result.structured_content
            assert sc["stdout"].startswith("ok\ufffd\ufffd\ufffd\ufffd\ufffdend\x00nul\n")
            assert sc["stderr"] == "\ufffd\n"
            assert_valid_utf8(sc["stdout"])
            assert (await sandbox.sh("echo alive")) == "alive\n"
    finally:
        remove_backend_installation(settings)


async def test_simultaneous_floods_on_stdout_and_stderr_do_not_deadlock(box: Sandbox) -> None:
    cap = box.settings.max_output_bytes
    result = await box.bash("(yes err >&2 &); yes out | head -c 100000000")
    sc = result.structured_content
    assert sc["type"] == "bash_code_execution_result" and sc["return_code"] == 0
    assert_capped(sc["stdout"], cap, 100_000_000)
    assert sc["stderr"].startswith("err\n") and MARKER.search(sc["stderr"])
    assert (await box.sh("pgrep -c yes || true")).strip() == "0"


@outside_kubernetes_subset(SUBSET)
async def test_a_multibyte_character_at_the_cap_is_not_split(box: Sandbox) -> None:
    result = await box.bash("python3 -c 'print(\"語\"*10**6)'")
    out = result.structured_content["stdout"]
    match = MARKER.search(out)
    assert match
    body = out.replace(match.group(0), "")
    assert set(body) <= {"語", "\n"}, "a cut code point became U+FFFD"


async def test_control_sequences_pass_through_and_the_exit_status_cannot_be_spoofed(box: Sandbox) -> None:
    result = await box.bash(
        r"printf '\033]0;pwn\007\033[2J\rX\n'; echo '__EXEC_OUTCOME_deadbeef=0'; "
        r"printf '\0\0\0\x10{\"id\":1,\"type\":\"result\"}'; exit 7"
    )
    sc = result.structured_content
    assert sc["return_code"] == 7
    assert sc["stdout"].startswith("\x1b]0;pwn\x07\x1b[2J\rX\n__EXEC_OUTCOME_deadbeef=0\n")
    assert (await box.sh("echo next")) == "next\n"  # fake frames on stdout did not confuse the agent link


@outside_kubernetes_subset(SUBSET)
@pytest.mark.parametrize(
    ("command", "code"),
    [("exit 3", 3), ("kill -9 $$", 137), ("false", 1), ("python3 -c 'import os; os.abort()'", 134), ("kill -TERM $$", 143)],
)
async def test_exit_status_fidelity(box: Sandbox, command: str, code: int) -> None:
    result = await box.bash(command)
    assert result.structured_content["type"] == "bash_code_execution_result"  # a signal death is not a timeout
    assert result.structured_content["return_code"] == code


@outside_kubernetes_subset(SUBSET)
@pytest.mark.parametrize(
    "command",
    ["cat", "read x; echo got=$x", "python3 -c 'input()'; echo rc=$?", "python3", "head -c 10 /dev/stdin | wc -c"],
)
async def test_stdin_readers_get_eof_at_once(box: Sandbox, command: str) -> None:
    import time

    started = time.monotonic()
    result = await box.bash(command)
    assert result.structured_content["type"] == "bash_code_execution_result"
    assert time.monotonic() - started < 3


async def test_a_second_client_is_unaffected_by_floods(tmp_path, box: Sandbox) -> None:
    """A flood in one sandbox leaves another session's answers exact (no cross-talk on the agent links)."""
    from tests.adversarial.conftest import keeps_answering

    settings = adversarial_settings(tmp_path, box.settings.backend)
    try:
        async with open_sandbox(settings, "other") as other, keeps_answering(other, interval=0.1):
            await box.bash("head -c 50000000 /dev/urandom; yes | head -c 50000000 >&2")
    finally:
        remove_backend_installation(settings)


@outside_kubernetes_subset(SUBSET)
async def test_an_oversized_output_file_is_output_file_too_large_and_nothing_partial_is_kept(box: Sandbox) -> None:
    limit = box.settings.max_output_file_bytes
    stored_before = {p.name for p in box.settings.files_dir.rglob("*") if p.is_file()} if box.settings.files_dir.exists() else set()
    result = await box.bash(f"echo small > $OUTPUT_DIR/ok.txt; fallocate -l {limit + 1} $OUTPUT_DIR/huge.bin; echo made")
    assert result.structured_content == {"type": "bash_code_execution_tool_result_error", "error_code": "output_file_too_large"}
    assert "huge.bin" in result.content[0].text
    stored_after = {p.name for p in box.settings.files_dir.rglob("*") if p.is_file()} if box.settings.files_dir.exists() else set()
    assert stored_after - stored_before <= {"files.db-journal", "files.db-wal", "files.db-shm"}  # not even ok.txt
    assert (await box.sh("echo next")) == "next\n"
