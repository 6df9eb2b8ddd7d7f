"""Isolation and egress (ADVERSARIAL.md 12-16, 33; security.md §8 E40-E44, F45-F49).

One sandbox takes the probes; a second session is there for the cross-session cases. The server
runs in this process with canary secrets in its environment: none may be visible inside.

Both backends (``backend_name``): on Kubernetes the two sessions are pods and every probe of what the
sandbox can see or do runs there too; ``@docker_only`` marks the few that are about Docker itself.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator

import docker
import pytest

from tests.adversarial.conftest import GVISOR, Sandbox, sandboxes
from tests.support.backends import docker_only, on_kubernetes, outside_kubernetes_subset
from tests.support.servers import mcp_client

pytestmark = pytest.mark.anyio

CANARY = "canary-" + secrets.token_hex(8)
CANARY_ENV = {"ANTHROPIC_API_KEY": f"sk-ant-{CANARY}", "MCP_CODEEXEC_AUTH_TOKENS": f"alice:{CANARY}", "AWS_SECRET_ACCESS_KEY": CANARY}


@pytest.fixture(scope="module")
async def pair(tmp_path_factory: pytest.TempPathFactory, docker_engine: None, backend_name: str) -> AsyncIterator[tuple[Sandbox, Sandbox]]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in CANARY_ENV.items():
            mp.setenv(key, value)
        async with sandboxes(tmp_path_factory, "isolation", 2, backend_name) as (box, other):
            yield box, other


@pytest.fixture
def box(pair: tuple[Sandbox, Sandbox]) -> Sandbox:
    return pair[0]


# --- 12, 13. egress ---------------------------------------------------------------------------------

# Egress is judged from the sandbox's own network tables, without sending anything off the machine:
# the only interface is lo and no route leads anywhere. Connect attempts come only after that check
# (the guard), and only to this machine (127.0.0.1): if isolation ever regressed, a test run must not
# become traffic to a public, private-range or metadata address.
EGRESS_PROBE = r"""
import json, socket, time

def lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []

out = {
    "interfaces": [l.split(":")[0].strip() for l in lines("/proc/net/dev")[2:]],
    "if_nameindex": [name for _, name in socket.if_nameindex()],
    "routes": [l for l in lines("/proc/net/route")[1:] if l.strip()],
    "ipv6_routes": [l for l in lines("/proc/net/ipv6_route") if l.split() and l.split()[-1] != "lo"],
}
out["isolated"] = out["interfaces"] == ["lo"] and out["if_nameindex"] == ["lo"] and not out["routes"] and not out["ipv6_routes"]

def attempt(name, fn):
    t = time.monotonic()
    try:
        fn(); out[name] = ["ok", 0]
    except OSError as e:
        out[name] = [type(e).__name__ + ":" + str(e.errno), round(time.monotonic() - t, 2)]

if out["isolated"]:  # the guard: nothing below runs unless no packet could leave this sandbox
    attempt("tcp-loopback-closed-port", lambda: socket.create_connection(("127.0.0.1", 9), 3))
    def udp():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", ("127.0.0.1", 9))
    attempt("udp-loopback", udp)
    attempt("raw-icmp", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
    attempt("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
print(json.dumps(out))
"""


async def test_no_egress_of_any_kind(box: Sandbox) -> None:
    await box.sh(f"cat > /tmp/egress.py <<'EOF'\n{EGRESS_PROBE}\nEOF")
    probe = json.loads(await box.sh("python3 /tmp/egress.py"))
    # Only lo, and no route anywhere (IPv4 or IPv6): no address outside the sandbox is reachable.
    assert probe["interfaces"] == ["lo"] and probe["if_nameindex"] == ["lo"], probe
    assert probe["routes"] == [] and probe["ipv6_routes"] == [], probe
    assert probe["isolated"] is True
    # Loopback answers at once (refused, not a timeout); raw and packet sockets are not allowed at all.
    assert probe["tcp-loopback-closed-port"][0] == "ConnectionRefusedError:111" and probe["tcp-loopback-closed-port"][1] < 1
    assert probe["udp-loopback"][0] == "ok"
    assert probe["raw-icmp"][0].startswith("PermissionError") and probe["packet"][0].split(":")[0] in ("PermissionError", "OSError")


async def test_shell_network_tools_see_no_route_and_fail_fast_on_this_machine(box: Sandbox) -> None:
    result = await box.bash(
        "if [ \"$(tail -n +2 /proc/net/route | grep -c .)\" != 0 ]; then echo has-routes; exit 0; fi; "  # the guard
        "exec 3<>/dev/tcp/127.0.0.1/9 && echo tcp-open; "
        "command -v curl >/dev/null && curl -sS -m 3 http://127.0.0.1:9/ && echo curl-ok; echo done"
    )
    sc = result.structured_content
    assert sc["stdout"] == "done\n", sc
    assert "Connection refused" in sc["stderr"], sc


async def test_pip_install_fails_at_once_saying_there_is_no_network_and_what_is_installed(box: Sandbox) -> None:
    # The guard first; the pip wrapper then never contacts an index (no route: --no-index).
    assert (await box.sh("tail -n +2 /proc/net/route | grep -c . || true")).strip() == "0"
    result = await box.bash("start=$(date +%s%N); pip install requests; echo rc=$? ms=$(( ($(date +%s%N) - start) / 1000000 ))")
    sc = result.structured_content
    rc, ms = (int(part.split("=")[1]) for part in sc["stdout"].split()[-2:])
    assert rc == 1 and ms < 5000, sc  # was 7.9 s of retries
    assert "no network access" in sc["stderr"] and "pandas, numpy" in sc["stderr"] and "pip list" in sc["stderr"], sc
    installed = await box.bash("pip install pandas >/dev/null && echo ok")  # what is installed still "installs"
    assert installed.structured_content["stdout"] == "ok\n", installed.structured_content


async def test_loopback_still_works_and_the_listener_is_swept(box: Sandbox) -> None:
    out = await box.sh(
        "python3 -m http.server 8765 --bind 127.0.0.1 >/dev/null 2>&1 & "
        "for i in $(seq 50); do python3 -c 'import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:8765\").status)' 2>/dev/null && break; sleep 0.2; done"
    )
    assert out == "200\n"
    assert (await box.sh("pgrep -fc http.server || true")).strip() == "0"


# --- 14. host visibility and privileged operations ------------------------------------------------------


async def test_nothing_of_the_host_is_visible(box: Sandbox) -> None:
    # The socket search skips /usr and /opt, the image's own read-only files: walking them takes
    # ~4.5 s of this box's 5 s limit under gVisor. A host socket bind-mounted anywhere, those two
    # included, would also be a mount, and the mount table is checked below.
    out = await box.sh(
        "cat /proc/1/environ >/dev/null 2>&1 && echo environ-readable; "
        "ls -d /var/run/docker.sock /run/docker.sock /run/containerd /var/run/containerd 2>/dev/null; "
        "find / -xdev \\( -path /usr -o -path /opt -o -path /proc -o -path /sys \\) -prune -o "
        "\\( -name docker.sock -o -name containerd.sock -o -name '*.sock' \\) -print 2>/dev/null | head; "
        "find /dev -mindepth 1 -maxdepth 1 -printf '%f\\n' | sort; echo ---; hostname; cat /proc/self/mountinfo | awk '{print $5}' | sort -u"
    )
    lines = out.splitlines()
    if GVISOR:
        # gVisor lets uid 1000 read /proc/1/environ of the agent (PR_SET_DUMPABLE does not hide it
        # there); it holds only the image's variables, which test_no_secrets_in_env checks.
        assert lines[0] == "environ-readable"
        lines = lines[1:]
    devices = lines[: lines.index("---")]
    expected = {"core", "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
                "urandom", "zero"}
    if GVISOR:
        expected |= {"fuse", "net"}  # gVisor's own emulated devices (/dev/net/tun, /dev/fuse), served by the Sentry
    if on_kubernetes(box.settings):
        expected |= {"termination-log"}  # the container's own termination message file (read by the kubelet)
    assert set(devices) <= expected, devices
    hostname, *mounts = lines[lines.index("---") + 1 :]
    assert hostname == "sandbox"
    allowed = {"/", "/dev", "/dev/pts", "/dev/mqueue", "/dev/shm", "/proc", "/sys", "/sys/fs/cgroup", "/tmp", "/workspace",
               "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/console",
               "/sys/block", "/sys/devices/virtual/block"}  # empty tmpfs masks (the loop devices' backing files)
    unexpected = [m for m in mounts if m not in allowed and not m.startswith(("/proc/", "/sys/fs/cgroup/", "/sys/firmware", "/dev/"))]
    assert not unexpected, f"unexpected mounts: {unexpected}"


@pytest.mark.parametrize(
    "command",
    [
        "mount -t tmpfs none /mnt",
        "mount -t cgroup -o rdma cgroup /tmp",
        "unshare -Ur true",  # gVisor: emulated, see test_user_namespaces_are_denied_or_emulated_under_gvisor
        "unshare -n true",
        "nsenter -t 1 -m -u -n -p true",
        "chroot / true",
        "su -c true root </dev/null",
        "sudo -n true",
        "echo b > /proc/sysrq-trigger",
        "echo 3 > /proc/sys/vm/drop_caches",
        "head -c1 /proc/kcore",
        "dmesg",  # gVisor: its own fake boot log, nothing of the host
        "python3 -c 'import ctypes,os; l=ctypes.CDLL(None,use_errno=True); os._exit(0 if l.init_module(None,0,b\"\")==0 else 1)'",
        "cat /etc/shadow",
        "touch /etc/passwd",
        "echo x > /sys/fs/cgroup/pids/pids.max",
    ],
)
async def test_privileged_operations_are_denied(box: Sandbox, command: str) -> None:
    result = await box.bash(f"{command}; echo rc=$?")
    out = result.structured_content["stdout"]
    rc = out.rsplit("rc=", 1)[1].strip()
    if GVISOR and command == "unshare -Ur true":
        assert rc == "0"  # a user namespace inside the Sentry; the dedicated test below checks it maps nothing
    elif GVISOR and command == "dmesg":
        assert rc == "0" and "gVisor" in out
    else:
        assert rc != "0", (command, result.structured_content)
    await box.usable()


async def test_user_namespaces_are_denied_or_emulated_under_gvisor(box: Sandbox) -> None:
    out = (await box.bash("unshare -Ur sh -c 'id -u; cat /proc/self/uid_map'; echo rc=$?")).structured_content["stdout"]
    if GVISOR:
        # runsc allows unshare(CLONE_NEWUSER): the namespace lives inside the Sentry (gVisor's
        # user-space kernel) and maps onto uid 1000 of the sandbox, nothing on the host.
        assert out.startswith("0\n") and out.endswith("rc=0\n")
        assert (await box.sh("dmesg | head -1")).startswith("[") and "gVisor" in await box.sh("dmesg")
    else:
        assert out == "rc=1\n"


SYSCALLS = r"""
import ctypes, errno, json
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
TIMESPEC = ctypes.create_string_buffer(16)  # a valid pointer, so the kernel gets to the permission check
calls = {  # x86_64 numbers
    "mount": (165, b"none", b"/mnt", b"tmpfs", 0, 0), "umount2": (166, b"/proc", 2),
    "unshare-net": (272, 0x40000000), "setns": (308, 0, 0), "keyctl": (250, 0, -3, 0),
    "add_key": (248, b"user", b"k", b"v", 1, -3), "bpf": (321, 5, 0, 0), "perf_event_open": (298, 0, 0, -1, -1, 0),
    "kexec_load": (246, 0, 0, 0, 0), "init_module": (175, 0, 0, b""), "finit_module": (313, 0, b"", 0),
    "delete_module": (176, b"ext4", 0), "reboot": (169, 0xfee1dead, 672274793, 0x1234567), "swapon": (167, b"/x", 0),
    "open_by_handle_at": (304, 0, 0, 0), "ptrace-attach-1": (101, 16, 1, 0, 0), "clock_settime": (227, 0, TIMESPEC),
    "pivot_root": (155, b"/", b"/"), "chroot": (161, b"/"), "setuid-0": (105, 0), "iopl": (172, 3),
}
out = {}
for name, (nr, *args) in calls.items():
    ctypes.set_errno(0)
    args = [ctypes.c_char_p(a) if isinstance(a, bytes) else a if isinstance(a, ctypes.Array) else ctypes.c_long(a) for a in args]
    r = libc.syscall(ctypes.c_long(nr), *args)
    out[name] = "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
print(json.dumps(out))
"""


async def test_dangerous_syscalls_fail(box: Sandbox) -> None:
    await box.sh(f"cat > /tmp/syscalls.py <<'EOF'\n{SYSCALLS}\nEOF")
    results = json.loads(await box.sh("python3 /tmp/syscalls.py"))
    succeeded = {name for name, outcome in results.items() if outcome == "ok"}
    assert not succeeded, results
    if not GVISOR:
        # runc: the default seccomp profile or the missing capabilities answer EPERM to all of them.
        assert set(results.values()) == {"EPERM"}, results
    else:
        # gVisor implements some of them (denied: EPERM) and not others (ENOSYS); the host kernel
        # never sees any of them.
        assert set(results.values()) <= {"EPERM", "ENOSYS", "ENOTSUP", "EBADF", "EINVAL", "EFAULT", "EACCES", "ENODEV"}, results


# --- 33. amicontained-style probes -------------------------------------------------------------------


async def test_capabilities_seccomp_and_no_new_privs(box: Sandbox) -> None:
    status = dict(
        line.split(":\t", 1)
        for line in (await box.sh("cat /proc/self/status")).splitlines()
        if ":\t" in line
    )
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status.get(cap, "0"), 16) == 0, (cap, status.get(cap))
    if GVISOR:
        # Inside gVisor /proc/self/status shows Seccomp 0: syscalls are filtered by the Sentry (and
        # the Sentry itself by a host seccomp filter), not by a filter the process can see.
        assert status["Seccomp"].strip() == "0"
        assert "gVisor" in await box.sh("dmesg")
    else:
        assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"
    uid = await box.sh("id -u; id -g; id -G")
    assert uid == "1000\n1000\n1000\n"
    # The agent too (under gVisor it starts as root and drops at once): no uid 0, no capability left.
    agent = dict(line.split(":\t", 1) for line in (await box.sh("cat /proc/1/status")).splitlines() if ":\t" in line)
    assert agent["Uid"].split() == ["1000"] * 4 and agent["Gid"].split() == ["1000"] * 4, agent
    assert agent.get("Groups", "").strip() in ("", "1000"), agent.get("Groups")
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(agent.get(cap, "0"), 16) == 0, (cap, agent.get(cap))
    setuid = await box.sh("find /usr/bin /usr/sbin /usr/lib -maxdepth 2 -perm -4000 -type f 2>/dev/null | head -20")
    if setuid and not GVISOR:
        # Setuid binaries exist in the image (su, mount...): no-new-privileges makes them inert.
        out = (await box.bash("su -c 'id -u' root </dev/null; mount -t tmpfs x /mnt; echo rc=$?")).structured_content["stdout"]
        assert "0\n" not in out.split("rc=")[0]


@docker_only("Docker's AppArmor profile (docker-default) and its engine's security options")
async def test_apparmor_profile_when_the_host_has_apparmor(box: Sandbox) -> None:
    options = docker.from_env().info().get("SecurityOptions") or []
    label = (await box.sh("cat /proc/self/attr/current 2>/dev/null || echo none")).strip()
    if any("apparmor" in option for option in options) and not GVISOR:
        assert label.startswith("docker-default"), label
    else:
        # No AppArmor on this engine (e.g. a Debian CI VM without the module): there is no profile to
        # check; seccomp, capabilities and no-new-privileges above are the enforced layers.
        assert "unconfined" in label or label in ("none", "")


async def test_no_secrets_in_env_or_any_processes_environment(box: Sandbox) -> None:
    out = await box.sh(
        "env; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; cat /proc/1/cmdline | tr '\\0' ' '; "
        "cat /proc/self/mountinfo"
    )
    assert CANARY not in out
    names = {line.split("=", 1)[0] for line in out.splitlines() if "=" in line}
    leaked = {n for n in names if n.startswith(("ANTHROPIC", "MCP_CODEEXEC", "AWS_", "DOCKER", "SSH_", "GITHUB", "CODEEXEC_"))}
    # The agent's own CODEEXEC_* settings are stripped from commands; on gVisor PID 1's environ
    # (readable there) may show them — they are paths, not secrets.
    assert not {n for n in leaked if not n.startswith("CODEEXEC_")}, leaked


# --- 15. writes outside the workspace --------------------------------------------------------------------


async def test_image_files_cannot_be_changed(box: Sandbox) -> None:
    before = await box.sh("md5sum /opt/codeexec/agent.py /etc/passwd /usr/bin/python3 | cut -c1-32")
    result = await box.bash(
        "for f in /etc/x /usr/x /usr/local/bin/x /opt/codeexec/x /root/x /x; do touch $f 2>/dev/null && echo wrote $f; done; "
        "echo pwn >> /opt/codeexec/agent.py; echo pwn >> /etc/passwd; rm -f /usr/bin/python3; "
        "pip install --user requests >/dev/null 2>&1 && echo pip-ok; "
        "echo x > /tmp/ok && echo tmp-ok"
    )
    assert result.structured_content["stdout"] == "tmp-ok\n", result.structured_content
    assert await box.sh("md5sum /opt/codeexec/agent.py /etc/passwd /usr/bin/python3 | cut -c1-32") == before
    for path in ("/etc/x", "/opt/codeexec/agent.py"):
        edited = await box.edit(command="create", path=path, file_text="x")
        assert edited.structured_content["error_code"] == "invalid_tool_input", edited.structured_content


# --- 16. other sessions ----------------------------------------------------------------------------


async def test_another_session_sees_none_of_my_files_or_processes(pair: tuple[Sandbox, Sandbox]) -> None:
    box, other = pair
    secret = "secret-" + secrets.token_hex(6)
    await box.sh(f"echo {secret} > /workspace/a.txt; echo {secret} > /tmp/a.txt")
    assert box.container_id != other.container_id
    # The other session looks everywhere it can without being told the secret.
    out = await other.sh(
        "find /workspace /tmp /dev/shm; find /workspace /tmp /dev/shm -type f -size -1M 2>/dev/null | xargs -r cat 2>/dev/null; "
        "ps -eo args; cat /proc/net/tcp /proc/net/unix 2>/dev/null"
    )
    assert secret not in out


async def test_container_ids_are_unguessable_and_a_guess_is_refused(box: Sandbox) -> None:
    cid = box.container_id
    assert cid and cid.startswith("container_") and len(cid) == 34  # 96 random bits
    for guess in ("container_" + "0" * 24, "container_" + secrets.token_hex(12), cid[:-1] + ("0" if cid[-1] != "0" else "1"),
                  "../" + cid, cid.upper()):
        result = await box.bash("echo hi", container_id=guess)
        assert result.structured_content == {"type": "bash_code_execution_tool_result_error", "error_code": "unavailable"}
        assert "container_expired" in result.content[0].text


@outside_kubernetes_subset("principals are the server's, the same on every backend "
                           "(tests/integration/test_files_flow.py checks them on pods)")
async def test_another_principal_naming_my_container_is_refused_over_http(tmp_path, docker_engine: None, backend_name: str) -> None:
    """HTTP principals: B presenting A's container id gets the same answer as for an unknown id.
    (tests/integration/test_http_security.py covers this in depth; here it is one hostile client.)"""
    from tests.adversarial.conftest import adversarial_settings
    from tests.support.backends import remove_backend_installation
    from tests.support.servers import http_server

    settings = adversarial_settings(tmp_path, backend_name)
    token_a, token_b = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    try:
        with http_server(settings, token=f"alice:{token_a},bob:{token_b}") as url:
            async with mcp_client("http", settings, base_url=url, token=token_a) as alice:
                mine = await Sandbox(alice, settings, "alice").bash("echo mine > /workspace/m.txt; echo ok")
                cid = mine.meta["container"]["id"]
            async with mcp_client("http", settings, base_url=url, token=token_b) as bob:
                stolen = await Sandbox(bob, settings, "bob").bash("cat /workspace/m.txt", container_id=cid)
                assert stolen.structured_content == {"type": "bash_code_execution_tool_result_error", "error_code": "unavailable"}
                assert "mine" not in stolen.content[0].text
                viewed = await Sandbox(bob, settings, "bob").edit(command="view", path="/workspace/m.txt", container_id=cid)
                assert viewed.structured_content["type"] == "text_editor_code_execution_tool_result_error"
    finally:
        remove_backend_installation(settings)


async def test_the_agents_channel_is_out_of_reach_of_user_code(box: Sandbox) -> None:
    """The agent's stdin/stdout is the host's only link to the sandbox: user code must not read the
    host's requests or write frames into its replies."""
    result = await box.bash(
        "python3 -c 'import os; os.close(os.open(\"/proc/1/fd/0\", os.O_RDONLY | os.O_NONBLOCK))' 2>/dev/null && echo opened-stdin; "
        "printf '\\0\\0\\0\\5\\0\\0\\0\\0hello' > /proc/1/fd/1 2>/dev/null && echo wrote-stdout; "
        "cat /proc/1/mem >/dev/null 2>&1 && echo read-mem; ls /proc/1/fd >/dev/null 2>&1 && echo listed-fds; echo done"
    )
    sc = result.structured_content
    # Under gVisor (whose 2022 build ignores the agent's dumpable flag) the descriptors can be
    # listed but not opened: the agent started as root, so its stdio pipes are root's.
    assert sc["stdout"] in (("done\n", "listed-fds\ndone\n") if GVISOR else ("done\n",)), sc
    await box.usable()


# --- 16b. nothing of another sandbox, nor the host's paths ----------------------------------------

TRACE_PROBE = r"""
import json, os, sys
needles = [line.encode() for line in open(sys.argv[1]).read().split("\n") if line]
found, files = [], 0
def check(where, data):
    found.extend([where, n.decode()] for n in needles if n in data)
def read(path):
    global files
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        files += 1
        check(path, os.read(fd, 1 << 20))
    finally:
        os.close(fd)
def walk(root):
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_symlink():
                    check(e.path, os.readlink(e.path).encode())
                elif e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    read(e.path)
            except OSError:
                pass
walk("/sys")
for top in os.listdir("/proc"):  # the system-wide files and the ones of every visible process
    path = "/proc/" + top
    if top.isdigit():
        for name in ("mountinfo", "mounts", "cgroup", "cmdline", "environ", "status", "maps"):
            try:
                read(f"{path}/{name}")
            except OSError:
                pass
    elif top in ("sys", "net", "fs", "driver", "tty", "irq", "bus"):
        walk(path)
    else:
        try:
            read(path)
        except OSError:
            pass
print(json.dumps({"found": found, "files": files}))
"""


async def test_no_sandbox_can_read_another_sandboxs_id_or_the_hosts_paths_under_sys_proc_or_mounts(pair) -> None:
    box, other = pair
    await other.sh("echo other > /workspace/o.txt")
    assert other.container_id
    data_dir = str(box.settings.data_dir.resolve())
    needles = [other.container_id, other.container_id.removeprefix("container_"), data_dir, str(box.settings.volumes_dir.resolve())]
    await box.sh("cat > /tmp/needles <<'EOF'\n" + "\n".join(needles) + "\nEOF\n" + f"cat > /tmp/trace.py <<'EOF'\n{TRACE_PROBE}\nEOF")
    probe = json.loads(await box.sh("python3 /tmp/trace.py /tmp/needles; rm /tmp/needles"))
    assert probe["files"] > (10 if GVISOR else 1000)  # it did read /sys and /proc
    assert probe["found"] == []
    # The loop devices behind the workspaces name their image files: not visible (gVisor has no /sys/block).
    listing = await box.sh(
        "for f in /sys/block/*/loop/backing_file /sys/class/block/*/loop/backing_file /sys/dev/block/*/loop/backing_file "
        "/sys/devices/virtual/block/*/loop/backing_file; do [ -r \"$f\" ] && echo \"readable: $f\"; done; "
        "ls -A /sys/block /sys/devices/virtual/block 2>/dev/null; true"
    )
    assert "readable" not in listing and "loop" not in listing
