"""doctor without a Docker engine: engine discovery from files, deadlines, rendering, exit status."""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_codeexec import doctor
from mcp_codeexec.config import load_settings
from mcp_codeexec.engines import docker_endpoints


@pytest.fixture
def no_default_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(docker_endpoints, "DEFAULT_SOCKET", str(tmp_path / "absent" / "docker.sock"))


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A settings environment of its own: no config file, data dir in tmp, no DOCKER_* variables."""
    for var in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_TLS_VERIFY", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("MCP_CODEEXEC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def unix_socket(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen(16)
    return s


def write_context(home: Path, name: str, host: str, current: bool = True) -> None:
    meta = home / ".docker" / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({"Name": name, "Metadata": {}, "Endpoints": {"docker": {"Host": host}}}))
    if current:
        (home / ".docker" / "config.json").write_text(json.dumps({"currentContext": name}))


def test_docker_host_comes_first_and_is_what_the_server_uses(isolated: Path) -> None:
    env = {"DOCKER_HOST": "tcp://10.0.0.5:2376"}
    endpoints = doctor.candidate_endpoints(env, isolated, "linux")
    assert endpoints[0] == doctor.Endpoint("tcp://10.0.0.5:2376", "DOCKER_HOST")
    assert doctor.server_endpoint(env, isolated, "linux").url == "tcp://10.0.0.5:2376"
    assert doctor.local_docker_host(env, isolated, "linux") is None  # docker-py reads DOCKER_HOST itself


def test_the_current_docker_context_endpoint_is_read_from_the_cli_metadata(isolated: Path) -> None:
    sock = isolated / ".colima" / "default" / "docker.sock"
    write_context(isolated, "colima", f"unix://{sock}")
    assert doctor.current_context({}, isolated) == "colima"
    assert doctor.contexts({}, isolated) == {"colima": f"unix://{sock}"}
    assert doctor.local_docker_host({}, isolated, "linux") == f"unix://{sock}"
    assert doctor.server_endpoint({}, isolated, "linux").source == "docker context 'colima'"
    assert doctor.candidate_endpoints({"DOCKER_CONTEXT": "colima"}, isolated, "linux")[0].url == f"unix://{sock}"


def test_a_tls_context_is_left_to_docker_py_defaults(isolated: Path, no_default_socket: None) -> None:
    write_context(isolated, "remote", "tcp://build-host:2376")
    assert doctor.local_docker_host({}, isolated, "linux") is None


@pytest.mark.parametrize(
    ("relative", "source"),
    [
        (".docker/run/docker.sock", "Docker Desktop"),
        (".colima/default/docker.sock", "colima"),
        (".orbstack/run/docker.sock", "OrbStack"),
    ],
)
def test_without_the_default_socket_the_desktop_colima_or_orbstack_socket_is_used(
    isolated: Path, no_default_socket: None, relative: str, source: str
) -> None:
    assert doctor.local_docker_host({}, isolated, "darwin") is None
    with unix_socket(isolated / relative):
        assert doctor.local_docker_host({}, isolated, "darwin") == f"unix://{isolated / relative}"
        assert doctor.server_endpoint({}, isolated, "darwin") == doctor.Endpoint(f"unix://{isolated / relative}", source)


def test_the_default_socket_wins_over_desktop_sockets_when_it_exists(isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = tmp_path / "run" / "docker.sock"
    monkeypatch.setattr(docker_endpoints, "DEFAULT_SOCKET", str(default))
    with unix_socket(default), unix_socket(isolated / ".orbstack" / "run" / "docker.sock"):
        assert doctor.local_docker_host({}, isolated, "linux") is None  # docker-py's default is right
        assert doctor.server_endpoint({}, isolated, "linux").url == f"unix://{default}"


def test_windows_uses_the_docker_engine_named_pipe(isolated: Path) -> None:
    endpoints = doctor.candidate_endpoints({}, isolated, "win32")
    assert doctor.WINDOWS_PIPE == "npipe:////./pipe/docker_engine"
    assert endpoints[0].url == doctor.WINDOWS_PIPE
    assert not any(e.url.startswith("unix://") for e in endpoints)
    assert doctor.server_endpoint({}, isolated, "win32").url == doctor.WINDOWS_PIPE


def test_rootless_docker_and_podman_sockets_are_candidates(isolated: Path) -> None:
    urls = [e.url for e in doctor.candidate_endpoints({"XDG_RUNTIME_DIR": "/run/user/1000"}, isolated, "linux")]
    assert "unix:///run/user/1000/docker.sock" in urls and "unix:///run/user/1000/podman/podman.sock" in urls


@pytest.fixture
def silent_engine(tmp_path: Path) -> Iterator[Path]:
    """A socket that accepts connections and never answers: a hung engine."""
    path = tmp_path / "hung.sock"
    server = unix_socket(path)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_hung_engine_fails_the_engine_check_within_its_deadline(
    isolated: Path, no_default_socket: None, silent_engine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{silent_engine}")
    started = time.monotonic()
    checks = doctor.run_checks(load_settings, timeout=1.0)
    elapsed = time.monotonic() - started
    by_name = {c.name: c for c in checks}
    assert by_name["engine"].status == "FAIL" and "did not answer" in by_name["engine"].message
    assert by_name["engine"].fix and "DOCKER_HOST" in by_name["engine"].fix
    assert by_name["image"].status == "SKIP" and by_name["runtime"].status == "SKIP"
    assert by_name["file store"].status == "OK"
    assert elapsed < 5, elapsed


def test_a_stopped_engine_prints_each_check_with_its_fix_and_exits_1(
    isolated: Path, no_default_socket: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = isolated / ".docker" / "run" / "docker.sock"
    stale.parent.mkdir(parents=True)
    unix_socket(stale).close()  # the socket file stays, nothing listens: Docker Desktop quit
    started = time.monotonic()
    status = doctor.cmd_doctor(argparse.Namespace(json=False, timeout=2.0), load_settings)
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert status == 1
    engine_line = next(line for line in out.splitlines() if "  engine  " in line or line.startswith("FAIL  engine"))
    assert engine_line.startswith("FAIL") and "connection refused" in engine_line
    assert "fix: start the Docker engine" in out
    assert out.splitlines()[-1].startswith("not ready: 1 failure")
    assert elapsed < 3, elapsed


def test_json_output_lists_every_check_and_the_verdict(
    isolated: Path, no_default_socket: None, capsys: pytest.CaptureFixture[str]
) -> None:
    status = doctor.cmd_doctor(argparse.Namespace(json=True, timeout=1.0), load_settings)
    report = json.loads(capsys.readouterr().out)
    assert status == 1 and report["ok"] is False
    names = [c["name"] for c in report["checks"]]
    assert names == ["config", "engine", "engine version", "image", "derived images", "runtime", "checkpoint",
                     "egress proxy", "mounts", "disk quota", "file store"]
    assert all(c["status"] in ("OK", "WARN", "FAIL", "SKIP") for c in report["checks"])
    assert all(c["fix"] for c in report["checks"] if c["status"] == "FAIL")


def test_an_invalid_configuration_is_a_fail_not_a_crash(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_CODEEXEC_POOL_SIZE", "1000")
    checks = doctor.run_checks(load_settings, timeout=1.0)
    assert [(c.name, c.status) for c in checks] == [("config", "FAIL")]
    assert "pool_size" in checks[0].message


def test_the_hosted_backend_without_an_api_key_fails(isolated: Path, no_default_socket: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_CODEEXEC_BACKEND", "hosted")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    checks = {c.name: c for c in doctor.run_checks(load_settings, timeout=1.0)}
    assert checks["hosted backend"].status == "FAIL" and "ANTHROPIC_API_KEY" in checks["hosted backend"].fix


def test_a_deadline_abandons_a_call_that_never_returns() -> None:
    never = threading.Event()
    started = time.monotonic()
    with pytest.raises(doctor.Deadline):
        doctor.with_deadline(never.wait, 0.2)
    assert time.monotonic() - started < 1
    never.set()
    assert doctor.with_deadline(lambda: 42, 1) == 42
    with pytest.raises(ZeroDivisionError):
        doctor.with_deadline(lambda: 1 / 0, 1)


def test_checkpoint_says_why_it_is_unavailable_and_what_happens_instead(tmp_path) -> None:
    from mcp_codeexec.config import load_settings

    settings = load_settings(data_dir=str(tmp_path), runtime="runsc", repl_idle_stop_seconds=3600)
    check = doctor.check_checkpoint({"ExperimentalBuild": False, "DefaultRuntime": "runc"}, settings)
    assert check.status == "OK" and check.data == {"available": False, "runtime": "runsc", "experimental": False}
    assert "experimental: true" in check.message and "3600 s idle" in check.message
    runc = doctor.check_checkpoint({"ExperimentalBuild": True, "DefaultRuntime": "runc"},
                                   load_settings(data_dir=str(tmp_path), runtime="runc"))
    assert runc.data["available"] is False and "the runc runtime does not checkpoint" in runc.message
    off = doctor.check_checkpoint({"ExperimentalBuild": True}, load_settings(data_dir=str(tmp_path), runtime="runsc",
                                                                             checkpoint_idle=False))
    assert off.data["available"] is False and "checkpoint_idle = false" in off.message


def test_checkpoint_is_available_under_runsc_with_experimental_mode_and_runscs_state_writable(tmp_path, monkeypatch) -> None:
    from mcp_codeexec import checkpoint
    from mcp_codeexec.config import load_settings

    settings = load_settings(data_dir=str(tmp_path), runtime="runsc", idle_stop_seconds=300)
    monkeypatch.setattr(checkpoint, "RUNSC_ROOTS", (tmp_path,))
    ready = doctor.check_checkpoint({"ExperimentalBuild": True}, settings)
    assert ready.data["available"] is True and "checkpointed with its memory after 300 s" in ready.message
    monkeypatch.setattr(checkpoint, "RUNSC_ROOTS", (tmp_path / "absent",))
    blocked = doctor.check_checkpoint({"ExperimentalBuild": True}, settings)
    assert blocked.data["available"] is False and "runsc's state directory" in blocked.message


class _Images:
    def __init__(self, present: set[str]) -> None:
        self.present = present

    def get(self, name: str) -> object:
        import docker.errors

        if name not in self.present:
            raise docker.errors.ImageNotFound(name)
        return object()


def _probe_with(*images: str) -> doctor.Probe:
    return doctor.Probe(doctor.Endpoint("unix:///fake.sock", "test"), client=argparse.Namespace(images=_Images(set(images))))


def test_the_egress_proxy_check_skips_without_the_allowlist_and_passes_when_the_image_is_built(tmp_path) -> None:
    from mcp_codeexec.egress import proxy_image_tag

    plain = doctor.check_egress_proxy(_probe_with(), load_settings(data_dir=str(tmp_path), config_file=None), 1.0)
    assert plain.status == "SKIP" and "allowlist" in plain.message
    allowlist = load_settings(data_dir=str(tmp_path), network="allowlist", allow_hosts=["pypi.org"], config_file=None)
    ok = doctor.check_egress_proxy(_probe_with(proxy_image_tag()), allowlist, 1.0)
    assert ok.status == "OK" and ok.data == {"image": proxy_image_tag(), "present": True}
    custom = allowlist.model_copy(update={"egress_image": "my-squid:1"})
    assert doctor.check_egress_proxy(_probe_with("my-squid:1"), custom, 1.0).status == "OK"


def test_a_missing_egress_proxy_image_says_whether_it_can_be_built_and_the_command_that_builds_it(tmp_path, monkeypatch) -> None:
    from mcp_codeexec.image import DEBIAN_BASE

    allowlist = load_settings(data_dir=str(tmp_path), network="allowlist", allow_hosts=["pypi.org"], config_file=None)
    from_base = doctor.check_egress_proxy(_probe_with(DEBIAN_BASE), allowlist, 1.0)
    assert from_base.status == "WARN" and from_base.data["buildable"] is True and DEBIAN_BASE in from_base.message
    assert from_base.fix and from_base.fix.startswith("mcp-codeexec doctor --build-egress-proxy")

    monkeypatch.setattr(doctor.shutil, "which", lambda name: "/usr/sbin/debootstrap")
    monkeypatch.setattr(doctor.os, "geteuid", lambda: 0)
    bootstrap = doctor.check_egress_proxy(_probe_with(), allowlist, 1.0)
    assert bootstrap.status == "WARN" and "debootstrap" in bootstrap.message and bootstrap.data["buildable"] is True

    monkeypatch.setattr(doctor.os, "geteuid", lambda: 1000)
    not_root = doctor.check_egress_proxy(_probe_with(), allowlist, 1.0)
    assert not_root.status == "FAIL" and "needs root" in not_root.message and not_root.data["buildable"] is False
    assert not_root.fix and "sudo mcp-codeexec doctor --build-egress-proxy" in not_root.fix

    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    monkeypatch.setattr(doctor.os, "access", lambda path, mode: False)
    missing = doctor.check_egress_proxy(_probe_with(), allowlist, 1.0)
    assert missing.status == "FAIL" and "debootstrap is not installed" in missing.message


def test_doctor_build_egress_proxy_builds_the_image_before_checking(isolated: Path, monkeypatch, capsys) -> None:
    from mcp_codeexec import egress
    from mcp_codeexec.engines import docker as engine

    built: list[str] = []
    monkeypatch.setattr(engine, "connect", lambda timeout: "client")
    monkeypatch.setattr(egress, "ensure_proxy_image", lambda client, tag: built.append(tag) or tag)
    monkeypatch.setattr(doctor, "run_checks", lambda get_settings, timeout, start: [doctor.Check("config", "OK", "fine")])
    settings = load_settings(network="allowlist", allow_hosts=["pypi.org"], egress_image="my-squid:2")
    ns = argparse.Namespace(build_egress_proxy=True, json=False, timeout=1.0, start=False)
    assert doctor.cmd_doctor(ns, lambda: settings) == 0
    assert built == ["my-squid:2"] and "egress proxy image: my-squid:2" in capsys.readouterr().err
