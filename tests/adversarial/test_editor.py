"""Text-editor path and content attacks (ADVERSARIAL.md 17-22, 32; security.md §8 D29-D39).

Every path is resolved inside the container by the agent, as uid 1000: a symlink can only lead to
what the sandbox user can already reach with bash, and never to a host file. These tests plant
host-side canaries to prove it. T is 30 s here (no case may come near it).
"""

from __future__ import annotations

import hashlib
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from tests.adversarial.conftest import GVISOR, MiB, Sandbox, sandboxes
from tests.adversarial.test_output import assert_valid_utf8, peak_rss

pytestmark = pytest.mark.anyio

ERROR = "text_editor_code_execution_tool_result_error"


@pytest.fixture(scope="module")
async def box(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> AsyncIterator[Sandbox]:
    async with sandboxes(tmp_path_factory, "editor", 1, call_timeout=30.0) as (sandbox,):
        yield sandbox


@pytest.fixture
def host_canary() -> Iterator[tuple[str, Path]]:
    """A file only the host has, under a name the sandbox is about to try."""
    token = "canary-" + secrets.token_hex(6)
    path = Path("/tmp") / token
    path.write_text("HOST SECRET\n")
    try:
        yield token, path
    finally:
        path.unlink(missing_ok=True)


def is_error(result, *codes: str) -> bool:
    sc = result.structured_content
    return sc["type"] == ERROR and (not codes or sc["error_code"] in codes)


async def md5(box: Sandbox, path: str) -> str:
    return (await box.sh(f"md5sum < {path!r}")).split()[0]


# --- 17. paths outside the workspace, special files ------------------------------------------------------


@pytest.mark.parametrize("path", ["../../etc/shadow", "/etc/shadow", "/workspace/../etc/shadow", "../../../../../../etc/shadow"])
async def test_shadow_is_an_error_however_it_is_spelled(box: Sandbox, path: str) -> None:
    result = await box.edit(command="view", path=path)
    assert is_error(result, "invalid_tool_input", "file_not_found"), result.structured_content
    assert "root:" not in result.content[0].text


async def test_host_files_are_not_reachable_and_container_files_are_the_containers(box: Sandbox, host_canary) -> None:
    _token, host_path = host_canary
    missing = await box.edit(command="view", path=str(host_path))
    assert is_error(missing, "file_not_found")
    hostname = await box.edit(command="view", path="/etc/hostname")
    assert hostname.structured_content["content"] == "sandbox\n" != socket.gethostname() + "\n"


async def test_proc_self_environ_is_denied_or_bounded_without_secrets(box: Sandbox) -> None:
    for path in ("/proc/self/environ", "/proc/1/environ", "/proc/self/mem", "/proc/1/root/etc/hostname"):
        result = await box.edit(command="view", path=path)
        sc = result.structured_content
        if sc["type"] == ERROR:
            assert sc["error_code"] in ("invalid_tool_input", "file_not_found")
        else:
            # Readable only where the runtime exposes the agent's /proc (gVisor): the container's own
            # small, secret-free environment, or its own hostname.
            assert len(sc["content"]) < 64 * 1024 and "ANTHROPIC" not in sc["content"] and "MCP_CODEEXEC" not in sc["content"]


@pytest.mark.parametrize(
    ("setup", "path"),
    [
        ("mkfifo /workspace/fifo", "fifo"),
        ("ln -sf /dev/zero /workspace/z", "z"),
        ("ln -sf /dev/stdin /workspace/in", "in"),
        ("ln -sf /dev/urandom /workspace/rnd", "rnd"),
        ("true", "/dev/zero"),
        ("true", "/dev/tty"),
        ("python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); s.bind(\"/workspace/sock\")'", "sock"),
        ("mkdir -p /workspace/dir", "dir/"),
    ],
)
async def test_special_files_are_refused_within_two_seconds(box: Sandbox, setup: str, path: str) -> None:
    await box.sh(setup)
    for command, extra in (("view", {}), ("str_replace", {"old_str": "a", "new_str": "b"}), ("create", {"file_text": "x"})):
        started = time.monotonic()
        result = await box.edit(command=command, path=path, **extra)
        took = time.monotonic() - started
        assert took < 2.0, f"{command} {path} took {took:.1f} s"
        if command == "view" and path == "dir/":
            assert result.structured_content["type"] == "text_editor_code_execution_view_result"  # a listing
            continue
        if command == "create" and path in ("z", "in", "rnd"):
            # create through a symlink to a device writes... nothing on the host: the device is the
            # container's (/dev/zero swallows it). Either a clean error or a harmless success.
            continue
        assert is_error(result, "invalid_tool_input", "file_not_found"), (command, path, result.structured_content)
    await box.usable()


# --- 18. symlink escapes ------------------------------------------------------------------------------------


async def test_symlinks_to_root_and_proc_1_root_stay_inside_the_container(box: Sandbox, host_canary) -> None:
    token, host_path = host_canary
    await box.sh("cd /workspace && ln -sfn / root && ln -sfn /proc/1/root p1 && ln -sfn /proc/self/cwd cwd && ln -sfn /etc e && ln -sfn /etc/passwd pw")
    for path in ("root/etc/hostname", "p1/etc/hostname", "e/hostname"):
        viewed = await box.edit(command="view", path=path)
        sc = viewed.structured_content
        if GVISOR and sc["type"] != ERROR and sc["content"].startswith("Here's the files"):
            # runsc 2022-12-19 resolves `<symlink to />/etc/hostname` to the root directory itself
            # (a path-walk bug of its VFS): the listing is of the container's own root.
            assert f"{path}/workspace\n" in sc["content"] and f"{path}/opt\n" in sc["content"], sc["content"][:300]
            continue
        assert sc["type"] == ERROR or sc["content"] == "sandbox\n", (path, sc)  # the container's file, never the host's
    # Writing through them lands in the container's own filesystems (or is refused): never on the host.
    created = {}
    for path in (f"root/tmp/{token}-a", f"p1/tmp/{token}-b", f"cwd/{token}-c", f"root/{token}-d", f"e/{token}-e", "pw"):
        created[path] = await box.edit(command="create", path=path, file_text="from the sandbox\n")
    assert is_error(created[f"root/{token}-d"]) and is_error(created[f"e/{token}-e"]) and is_error(created["pw"])  # read-only rootfs
    inside = await box.sh(f"find /tmp /workspace -maxdepth 1 -name '*{token}*' -printf '%f\\n'")
    assert not list(Path("/tmp").glob(f"{token}-*")) and not list(Path("/").glob(f"{token}-*")), "a sandbox write reached the host"
    assert host_path.read_text() == "HOST SECRET\n"
    for path, result in created.items():
        if not is_error(result):
            assert path.rsplit("/", 1)[-1] in inside, (path, inside)
    str_replaced = await box.edit(command="str_replace", path="e/hosts", old_str="localhost", new_str="evil")
    assert is_error(str_replaced, "invalid_tool_input")
    await box.sh("cd /workspace && rm -f root p1 cwd e pw")


# --- 32. symlink swapped while the editor writes ------------------------------------------------------------


async def test_symlink_swap_race_never_writes_outside_the_sandbox(box: Sandbox) -> None:
    token = "race-" + secrets.token_hex(4)
    swapper = (
        "cd /workspace; end=$((SECONDS+6)); while [ $SECONDS -lt $end ]; do "
        "rm -rf d; mkdir d; rm -rf d; ln -s / d; rm -f d; ln -s /tmp d; rm -f d; ln -s /proc/1/root/tmp d; rm -f d; done; rm -rf d"
    )
    outcomes: dict[str, int] = {}

    async def writes() -> None:
        limiter = anyio.CapacityLimiter(16)

        async def one(i: int) -> None:
            async with limiter:
                result = await box.edit(command="create", path=f"d/{token}-{i}", file_text=f"{i}\n")
                sc = result.structured_content
                key = "ok" if sc["type"] != ERROR else sc["error_code"]
                outcomes[key] = outcomes.get(key, 0) + 1

        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(one, i)

    async with anyio.create_task_group() as tg:
        tg.start_soon(box.bash, swapper)
        await anyio.sleep(0.3)
        await writes()
    assert sum(outcomes.values()) == 500 and set(outcomes) <= {"ok", "invalid_tool_input", "file_not_found"}, outcomes
    # Every write that succeeded is in the container (workspace or its own /tmp); none on the host.
    # (/usr and /opt are skipped: the read-only image's bulk, ~4.5 s of the 5 s limit to walk under gVisor.)
    landed = (await box.sh(f"find / -xdev \\( -path /usr -o -path /opt \\) -prune -o -name '{token}-*' -print 2>/dev/null "
                           f"| sed 's,/[^/]*$,,' | sort | uniq -c; "
                           f"find /tmp /workspace -name '{token}-*' 2>/dev/null | wc -l")).splitlines()
    assert not list(Path("/tmp").glob(f"{token}-*")) and not list(Path("/").glob(f"{token}-*"))
    assert int(landed[-1]) <= outcomes.get("ok", 0)
    for line in landed[:-1]:
        assert line.split()[1] in ("/tmp", "/workspace/d", "/workspace"), landed
    await box.sh(f"rm -rf /tmp/{token}-* /workspace/{token}-* /workspace/d")


# --- 19. huge files ----------------------------------------------------------------------------------------


async def test_a_100_mb_create_is_bounded(box: Sandbox) -> None:
    text = ("x" * 99 + "\n") * 1_000_000
    with peak_rss() as rss:
        started = time.monotonic()
        result = await box.edit(command="create", path="big100.txt", file_text=text)
        took = time.monotonic() - started
    del text
    sc = result.structured_content
    if sc["type"] == ERROR:
        assert sc["error_code"] == "invalid_tool_input" and "large" in sc["error_message"]
        assert (await box.sh("ls big100.txt 2>/dev/null | wc -l")).strip() == "0"  # nothing partial
    else:
        assert (await box.sh("wc -c < big100.txt; tail -c 100 big100.txt | head -c 3")) == "100000000\nxxx"
    assert took < 30
    assert rss[1] - rss[0] < 1024 * MiB, f"server memory grew {(rss[1] - rss[0]) / MiB:.0f} MiB for a 100 MB input"
    await box.sh("rm -f big100.txt")


async def test_a_2_gb_view_is_truncated_with_the_right_total_lines(box: Sandbox) -> None:
    # A sparse 2 GiB file with one short line at the start of every MiB: 2048 line breaks, then NULs.
    await box.sh(
        "python3 -c $'f=open(\"/workspace/big2g.txt\",\"wb\")\\nfor i in range(2048):\\n f.seek(i<<20); f.write(b\"line %d\\\\n\" % i)\\n"
        "f.truncate(2<<30)'"
    )
    with peak_rss() as rss:
        started = time.monotonic()
        whole = await box.edit(command="view", path="big2g.txt")
        took = time.monotonic() - started
        ranged = await box.edit(command="view", path="big2g.txt", view_range=[2000, 2001])
    sc = whole.structured_content
    if sc["type"] == ERROR:
        assert sc["error_code"] == "invalid_tool_input" and "large" in sc["error_message"]
    else:
        assert sc["total_lines"] == 2049 and sc["start_line"] == 1 and 0 < sc["num_lines"] < 2049
        assert len(sc["content"].encode()) <= box.settings.max_view_bytes
        assert sc["content"].startswith("line 0\n")
        rs = ranged.structured_content
        # Each line is ~1 MiB; the view budget (max_view_bytes) holds the start of the first one.
        assert rs["total_lines"] == 2049 and rs["num_lines"] >= 1 and rs["start_line"] == 2000
        assert rs["content"].startswith("\x00") and len(rs["content"].encode()) <= box.settings.max_view_bytes
    assert took < (60 if GVISOR else 30), f"{took:.0f} s"  # gVisor reads through its gofer, more slowly
    assert rss[1] - rss[0] < 512 * MiB
    await box.sh("rm -f big2g.txt")


# --- 20. str_replace refusals leave the file unchanged ---------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        ("gamma", "x", "not found"),
        ("alpha", "x", "2 times"),
        ("", "x", "empty"),
        ("al\x00pha", "x", "not found"),
        ("\x00", "x", "not found"),
    ],
    ids=["missing", "twice", "empty", "nul-inside", "only-nul"],
)
async def test_str_replace_refusals_are_invalid_tool_input_and_change_nothing(box: Sandbox, old: str, new: str, why: str) -> None:
    await box.edit(command="create", path="sr.txt", file_text="alpha\nbeta\nalpha\n")
    before = await md5(box, "sr.txt")
    result = await box.edit(command="str_replace", path="sr.txt", old_str=old, new_str=new)
    assert is_error(result, "invalid_tool_input"), result.structured_content
    assert why in result.structured_content["error_message"] or why == "empty"
    assert result.structured_content["error_message"]
    assert await md5(box, "sr.txt") == before


async def test_str_replace_on_a_binary_file_is_refused(box: Sandbox) -> None:
    await box.sh("head -c 4000 /dev/urandom > bin.dat; printf 'a\\0b' >> bin.dat")
    before = await md5(box, "bin.dat")
    result = await box.edit(command="str_replace", path="bin.dat", old_str="a", new_str="x")
    assert is_error(result, "invalid_tool_input") and "binary" in result.structured_content["error_message"]
    assert await md5(box, "bin.dat") == before
    viewed = await box.edit(command="view", path="bin.dat")
    if viewed.structured_content["type"] != ERROR:
        assert_valid_utf8(viewed.structured_content["content"])


# --- 21. hostile names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["with space.txt", "new\nline.txt", "ünïcødé/日本語.txt", "-rf", "--help", "$(touch /tmp/pwn)", "`touch /tmp/pwn2`",
     "quote'\"s.txt", "\u202eevil.txt", "tab\there", " leading-space", "a" * 255],
)
async def test_odd_names_are_literal(box: Sandbox, name: str) -> None:
    created = await box.edit(command="create", path=name, file_text="odd\n")
    assert created.structured_content["type"] == "text_editor_code_execution_create_result", created.structured_content
    viewed = await box.edit(command="view", path=name)
    assert viewed.structured_content["content"] == "odd\n"
    replaced = await box.edit(command="str_replace", path=name, old_str="odd", new_str="even")
    assert replaced.structured_content["type"] == "text_editor_code_execution_str_replace_result"
    assert (await box.sh("[ -e /tmp/pwn ] || [ -e /tmp/pwn2 ] || echo none")) == "none\n"


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("a" * 300, "too long"), ("d/" * 2100 + "x", "longer than"), ("a\x00b", "NUL"), ("", "path"), ("/", "directory")],
    ids=["300-byte-component", "4200-byte-path", "nul", "empty", "root"],
)
async def test_impossible_names_are_clean_errors(box: Sandbox, name: str, fragment: str) -> None:
    result = await box.edit(command="create", path=name, file_text="x")
    assert is_error(result, "invalid_tool_input"), result.structured_content
    assert fragment.lower() in result.structured_content["error_message"].lower(), result.structured_content
    await box.usable()


# --- 22. invalid UTF-8 contents --------------------------------------------------------------------------------


async def test_invalid_utf8_is_viewable_and_str_replace_is_byte_exact(box: Sandbox) -> None:
    await box.sh("printf 'a\\xff\\xfeb\\nmiddle \\xc3\\x28 line\\nline3 \\xed\\xa0\\x80\\n' > bad.txt")
    raw_before = await box.sh("od -An -tx1 bad.txt | tr -d ' \\n'")
    viewed = await box.edit(command="view", path="bad.txt")
    sc = viewed.structured_content
    assert sc["total_lines"] == 3 and "\ufffd" in sc["content"]
    assert_valid_utf8(sc["content"])
    # Editing a clean part keeps every other byte exactly.
    edited = await box.edit(command="str_replace", path="bad.txt", old_str="line3", new_str="LINE3")
    assert edited.structured_content["type"] == "text_editor_code_execution_str_replace_result"
    raw_after = await box.sh("od -An -tx1 bad.txt | tr -d ' \\n'")
    assert raw_after == raw_before.replace("6c696e6533", "4c494e4533")
    # What view showed (U+FFFD) is not what the file holds: not found, file unchanged.
    shown = sc["content"].splitlines()[0]
    missed = await box.edit(command="str_replace", path="bad.txt", old_str=shown, new_str="zzz")
    assert is_error(missed, "invalid_tool_input")
    assert await box.sh("od -An -tx1 bad.txt | tr -d ' \\n'") == raw_after
    # A create with lone surrogates (not encodable) is refused, not written half-way.
    lone = await box.edit(command="create", path="bad.txt", file_text="x\ud800y")
    assert lone.structured_content["type"] in (ERROR, "text_editor_code_execution_create_result")
    if lone.structured_content["type"] == ERROR:
        assert await box.sh("od -An -tx1 bad.txt | tr -d ' \\n'") == raw_after


async def test_a_crlf_file_keeps_its_line_endings(box: Sandbox) -> None:
    await box.sh("printf 'one\\r\\ntwo\\r\\nthree\\r\\n' > crlf.txt")
    result = await box.edit(command="str_replace", path="crlf.txt", old_str="two", new_str="2")
    assert result.structured_content["type"] == "text_editor_code_execution_str_replace_result"
    assert hashlib.md5(b"one\r\n2\r\nthree\r\n").hexdigest() == await md5(box, "crlf.txt")
