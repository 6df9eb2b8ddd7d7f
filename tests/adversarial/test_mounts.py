"""Host folders in a sandbox: what a mount shows, what it refuses, and that no escape works.

The host-side check happens once, when the sandbox is made; from then on the kernel's bind mount
confines every access to the folder, which these cases prove from inside the sandbox.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_codeexec import Sandbox
from mcp_codeexec.config import Settings
from tests.adversarial.conftest import GVISOR
from tests.integration.conftest import make_settings
from tests.support.servers import remove_installation

pytestmark = pytest.mark.anyio

# Debian's 2022 gVisor build that CI installs answers EINVAL for any bind of a folder of this host's
# root filesystem (a plain `docker run --runtime runsc -v /some/dir:/mnt/m` fails the same way), so
# the in-sandbox cases run under runc only; the config-time refusals run under both.
host_binds = pytest.mark.skipif(GVISOR, reason="gVisor 2022 build: host-folder binds fail with EINVAL on this host (not a mounts.py limit)")

HOST_USER = 4321  # the folder owner an rw mount must write as (neither the sandbox's 1000 nor root)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    (root / "project").mkdir(parents=True)
    (root / "project" / "README.md").write_text("hello from the host\n")
    (root / "secret.txt").write_text("outside the mount\n")  # in the allowed root, beside the mounted folder
    rw = root / "out"
    rw.mkdir()
    os.chown(rw, HOST_USER, HOST_USER)
    return root


@pytest.fixture
def mounted(tmp_path: Path, host: Path, docker_engine: None) -> Iterator[Settings]:
    mounts = [f"{host / 'project'}"] + ([] if GVISOR else [f"{host / 'out'}:/workspace/out:rw"])
    s = make_settings(tmp_path, allowed_mount_roots=[str(host)], mounts=mounts)
    yield s
    remove_installation(s)


async def run(sb: Sandbox, command: str) -> tuple[str, str, int]:
    r = await sb.bash(command)
    assert hasattr(r, "stdout"), r
    return r.stdout, r.stderr, r.return_code  # type: ignore[union-attr]


@host_binds
async def test_a_read_only_mount_is_visible_and_every_write_fails_with_erofs(mounted: Settings, host: Path) -> None:
    async with Sandbox(mounted) as sb:
        out, _, code = await run(sb, "cat /workspace/project/README.md")
        assert (out, code) == ("hello from the host\n", 0)
        out, err, code = await run(sb, "echo x > /workspace/project/new.txt; echo x >> /workspace/project/README.md; "
                                       "rm /workspace/project/README.md; mkdir /workspace/project/d; "
                                       "grep -c 'Read-only file system' <<< \"$(cat /dev/null)\" ; true")
        assert err.count("Read-only file system") >= 3, err
        assert sorted(os.listdir(host / "project")) == ["README.md"]
        assert (host / "project" / "README.md").read_text() == "hello from the host\n"
        _, _, code = await run(sb, "python3 -c \"open('/workspace/project/README.md','a')\"")
        assert code != 0


@host_binds
async def test_files_written_through_an_rw_mount_belong_to_the_folder_owner_on_the_host(mounted: Settings, host: Path) -> None:
    async with Sandbox(mounted) as sb:
        out, err, code = await run(sb, "id -u; echo made > /workspace/out/a.txt && mkdir /workspace/out/sub && "
                                       "touch /workspace/out/sub/b && stat -c %u /workspace/out/a.txt; "
                                       "echo own > /workspace/mine.txt; stat -c %u /workspace/mine.txt")
        assert code == 0, err
        assert out.split() == ["1000", "1000", "1000"]  # inside: the sandbox user, in the mount and out of it
    for path in (host / "out" / "a.txt", host / "out" / "sub", host / "out" / "sub" / "b"):
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (HOST_USER, HOST_USER), path
    assert (host / "out" / "a.txt").read_text() == "made\n"


@host_binds
async def test_symlinks_made_inside_a_mount_resolve_inside_the_sandbox_not_on_the_host(mounted: Settings, host: Path) -> None:
    folder = "/workspace/out" if not GVISOR else "/tmp"
    async with Sandbox(mounted) as sb:
        out, _, _ = await run(sb, f"cd {folder} && ln -s / root && ln -s .. up && ln -s ../../secret.txt s && "
                                       "ls root/ | head -50; echo ---; ls up/; echo ---; cat s; cat root/proc/1/cmdline | tr '\\0' ' '")
        assert "outside the mount" not in out and "secret.txt" not in out, out
        assert "codeexec" in out or "agent" in out  # root/ is the sandbox's own /: its pid 1 is the agent
    if not GVISOR:
        # On the host the links point where they say, but nothing followed them into the host from inside.
        assert os.readlink(host / "out" / "root") == "/"
    # A host-made symlink inside a mounted folder leads nowhere outside it either.
    os.symlink(str(host / "secret.txt"), host / "project" / "hostlink")
    os.symlink("..", host / "project" / "parent")
    async with Sandbox(mounted) as sb:
        out, _, _ = await run(sb, "cat /workspace/project/hostlink; ls /workspace/project/parent/")
        assert "outside the mount" not in out and "secret.txt" not in out


@host_binds
async def test_hard_links_to_files_outside_the_mount_cannot_be_made_from_inside(mounted: Settings, host: Path) -> None:
    folder = "/workspace/out" if not GVISOR else "/workspace/project"
    async with Sandbox(mounted) as sb:
        out, err, code = await run(sb, f"ln /etc/passwd {folder}/pw; ln /workspace/x {folder}/x 2>&1; "
                                       f"touch /workspace/x; ln /workspace/x {folder}/x")
        assert code != 0
        assert "Invalid cross-device link" in err or "Read-only file system" in err, err
    assert not (host / "out" / "pw").exists() and not (host / "out" / "x").exists()


@host_binds
async def test_dot_dot_from_the_mount_root_stays_in_the_sandbox(mounted: Settings, host: Path) -> None:
    async with Sandbox(mounted) as sb:
        out, _, _ = await run(sb, "ls -a /workspace/project/..; cat /workspace/project/../secret.txt; "
                                  "cd /workspace/project/../../..; pwd; ls")
        assert "secret.txt" not in out and "outside the mount" not in out


@host_binds
async def test_a_rename_on_the_host_after_the_check_does_not_redirect_the_mount(mounted: Settings, host: Path) -> None:
    from mcp_codeexec.engines.docker import SandboxManager, connect

    try:
        async with Sandbox(mounted, keep=True) as sb:
            cid = sb.container_id
            assert cid is not None
            # The name is swapped for a symlink to the host's / once the sandbox exists.
            (host / "project").rename(host / "moved")
            os.symlink("/", host / "project")
            out, _, _ = await run(sb, "cat /workspace/project/README.md; ls /workspace/project")
            assert "hello from the host" in out  # the bind holds the checked folder, not its name
            assert "etc" not in out.split() and "root" not in out.split()
        # Stopped and started again (an idle stop, a new session), the sandbox keeps the folder it was made with.
        SandboxManager(mounted, connect()).stop(cid)
        # (The folder is recorded with the sandbox: a server configured without it still gives it back.)
        async with Sandbox(mounted.model_copy(update={"mounts": []}), container_id=cid) as sb:
            out, _, _ = await run(sb, "ls /workspace/project")
            assert out.split() == ["README.md"]
        # A new sandbox checks the name again, and refuses what it now leads to.
        with pytest.raises(Exception, match="root directory"):
            async with Sandbox(mounted):
                pass
    finally:
        if (host / "project").is_symlink():
            (host / "project").unlink()
            (host / "moved").rename(host / "project")


def test_mounts_outside_the_allowed_roots_or_of_forbidden_paths_are_refused_at_config_time(tmp_path: Path, host: Path) -> None:
    roots = [str(host)]
    cases = {
        "/etc": "outside the allowed mount roots",
        str(host / "project" / ".." / ".."): "outside the allowed mount roots|data directory",
        "/proc/self": "/proc",
        "/": "root directory",
        "/var/run": "Docker socket",
        str(tmp_path): "data directory",
    }
    os.symlink("/etc", host / "etc-link")
    cases[str(host / "etc-link")] = "outside the allowed mount roots"
    for spec, why in cases.items():
        with pytest.raises(ValueError, match=why):
            make_settings(tmp_path, allowed_mount_roots=roots + (["/"] if spec == "/" else []) if spec != "/" else [str(host)],
                          mounts=[spec])
    with pytest.raises(ValueError, match="allowed roots"):
        make_settings(tmp_path, mounts=[str(host / "project")])
    if not GVISOR:
        with pytest.raises(ValueError, match="gVisor"):
            make_settings(tmp_path, allowed_mount_roots=roots, mounts=[f"{host / 'out'}:rw"], runtime="runsc")


@host_binds
async def test_a_sandbox_rebuilt_after_docker_rm_gets_the_mounts_it_was_made_with(mounted: Settings, host: Path) -> None:
    import docker

    from mcp_codeexec.engines.docker import NAME_PREFIX

    async with Sandbox(mounted, keep=True) as sb:
        cid = sb.container_id
        await run(sb, "echo kept > /workspace/mine.txt")
    client = docker.from_env()
    try:
        client.containers.get(NAME_PREFIX + str(cid)).remove(force=True)  # behind the server's back
    finally:
        client.close()
    async with Sandbox(mounted.model_copy(update={"mounts": []}), container_id=cid) as sb:
        out, _, code = await run(sb, "cat /workspace/mine.txt /workspace/project/README.md; "
                                     "echo again > /workspace/out/again.txt; stat -c %u /workspace/out/again.txt")
        assert (out, code) == ("kept\nhello from the host\n1000\n", 0)
    assert (host / "out" / "again.txt").stat().st_uid == HOST_USER
