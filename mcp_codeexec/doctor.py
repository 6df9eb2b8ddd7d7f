"""``mcp-codeexec doctor``: is everything in place, and if not, exactly what to do.

Each check prints one line — OK, WARN, FAIL or SKIP — and, unless it is OK, the fix. The exit
status is 1 when any check FAILs. Every engine call has a short deadline (a stopped, missing or
hung engine costs seconds, never a hang), and nothing here needs the ``docker`` CLI.

Engine discovery (``candidate_endpoints``), in the order the server itself uses:
``DOCKER_HOST``; the current docker context (``DOCKER_CONTEXT`` or ``currentContext`` in
``~/.docker/config.json``, endpoints read from ``~/.docker/contexts/meta``); the default socket
``/var/run/docker.sock``; Docker Desktop (``~/.docker/run/docker.sock``), colima, OrbStack,
Rancher Desktop, rootless Docker and Podman sockets; on Windows the ``docker_engine`` named pipe.
``local_docker_host()`` is the stat-only part of this that ``engines.docker.connect`` uses when
``DOCKER_HOST`` is not set.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from . import __version__
from .config import Settings
from .engines.docker_endpoints import (  # noqa: F401 - engine discovery lives with the Docker engine
    DEFAULT_SOCKET,
    WINDOWS_PIPE,
    Endpoint,
    _socket_exists,
    candidate_endpoints,
    context_host,
    contexts,
    current_context,
    docker_config_dir,
    local_docker_host,
    local_endpoint,
    server_endpoint,
    well_known_sockets,
)

Status = Literal["OK", "WARN", "FAIL", "SKIP"]
T = TypeVar("T")

MIN_ENGINE = (20, 10)
PROBE_TIMEOUT = 3.0
START_DOCKER = (
    "start the Docker engine: Docker Desktop (macOS/Windows), `colima start`, OrbStack, "
    "or `sudo systemctl start docker` (Linux); install it from https://docs.docker.com/engine/install/"
)


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class Check:
    name: str
    status: Status
    message: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# deadlines


class Deadline(Exception):
    pass


def with_deadline(fn: Callable[[], T], seconds: float) -> T:
    """Run ``fn`` in a daemon thread; raise ``Deadline`` if it has not finished in ``seconds``
    (the thread is abandoned, and never keeps the process alive)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="doctor-probe").start()
    if not done.wait(seconds):
        raise Deadline(f"no answer within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---------------------------------------------------------------------------------------------
# probing an engine


@dataclass
class Probe:
    endpoint: Endpoint
    client: Any = None
    version: dict[str, Any] | None = None
    error: str | None = None


def probe(endpoint: Endpoint, timeout: float = PROBE_TIMEOUT) -> Probe:
    """Connect to ``endpoint`` and read ``/version``; never longer than about ``timeout``."""
    url = endpoint.url
    if url.startswith("unix://") and not Path(url[len("unix://"):]).exists():
        return Probe(endpoint, error=f"no socket at {url[len('unix://'):]}")

    def connect() -> tuple[Any, dict[str, Any]]:
        import docker

        if endpoint.source == "DOCKER_HOST":
            client = docker.from_env(timeout=max(1, int(timeout)))  # honours DOCKER_TLS_VERIFY / DOCKER_CERT_PATH
        else:
            client = docker.DockerClient(base_url=url, timeout=max(1, int(timeout)))
        return client, client.version()

    try:
        client, version = with_deadline(connect, timeout + 0.5)
    except Deadline as exc:
        return Probe(endpoint, error=f"the engine did not answer ({exc})")
    except Exception as exc:  # docker-py, requests and OS errors alike: reported, not raised
        return Probe(endpoint, error=_short_error(exc))
    return Probe(endpoint, client=client, version=version)


def _short_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    for pattern, meaning in (
        (r"Connection refused|ConnectionRefused", "connection refused (the engine is not running)"),
        (r"No such file|FileNotFound", "no socket there"),
        (r"Permission denied|PermissionError", "permission denied on the socket"),
        (r"timed out|Timeout", "the engine did not answer (timed out)"),
    ):
        if re.search(pattern, text):
            return meaning
    return text.splitlines()[0][:200]


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2]) or (0,)


# ---------------------------------------------------------------------------------------------
# the checks


def check_engine(timeout: float) -> tuple[Check, Probe | None]:
    target = server_endpoint()
    result = probe(target, timeout)
    if result.version is not None:
        v = result.version
        message = (
            f"Docker {v.get('Version', '?')} (API {v.get('ApiVersion', '?')}, {v.get('Os', '?')}/{v.get('Arch', '?')}) "
            f"at {target.url} ({target.source})"
        )
        return Check("engine", "OK", message, data={"url": target.url, "source": target.source, **_pick(v)}), result
    others = []
    for endpoint in candidate_endpoints():
        if endpoint.url == target.url:
            continue
        other = probe(endpoint, timeout)
        if other.version is not None:
            others.append(other)
            break
    if others:
        alt = others[0].endpoint
        if target.source == "DOCKER_HOST":
            fix = f"DOCKER_HOST points at no engine; unset it, or set DOCKER_HOST={alt.url} ({alt.source} answers there)"
        else:
            fix = (
                f"export DOCKER_HOST={alt.url} ({alt.source} answers there); for Claude Desktop and other MCP "
                f'clients put "DOCKER_HOST": "{alt.url}" in the server\'s "env" block'
            )
        return Check("engine", "FAIL", f"no engine at {target.url} ({target.source}): {result.error}", fix,
                     data={"url": target.url, "error": result.error, "alternative": alt.url}), None
    fix = START_DOCKER
    if result.error and "permission denied" in result.error:
        fix = "add yourself to the docker group (`sudo usermod -aG docker $USER`, then log in again), or run as root"
    elif target.source == "DOCKER_HOST":
        fix = f"DOCKER_HOST={target.url} answers nothing: fix or unset it, or {START_DOCKER}"
    return Check("engine", "FAIL", f"no Docker engine at {target.url} ({target.source}): {result.error}", fix,
                 data={"url": target.url, "error": result.error}), None


def _pick(version: dict[str, Any]) -> dict[str, Any]:
    return {k: version.get(k) for k in ("Version", "ApiVersion", "Os", "Arch", "KernelVersion")}


def check_engine_version(p: Probe) -> Check:
    v = p.version or {}
    version = str(v.get("Version", "0"))
    if v.get("Os") not in (None, "linux"):
        return Check("engine version", "FAIL", f"the engine runs {v.get('Os')} containers",
                     "switch Docker Desktop to Linux containers (tray menu: 'Switch to Linux containers')")
    if _version_tuple(version) < MIN_ENGINE:
        return Check("engine version", "WARN", f"Docker {version} is older than {MIN_ENGINE[0]}.{MIN_ENGINE[1]}",
                     "upgrade Docker Engine (https://docs.docker.com/engine/install/)")
    arch = str(v.get("Arch", ""))
    note = "" if arch in ("amd64", "x86_64", "") else f"; sandboxes run {arch} Python (the hosted tool runs x86_64)"
    return Check("engine version", "OK", f"Docker {version} (>= {MIN_ENGINE[0]}.{MIN_ENGINE[1]}){note}")


def check_image(p: Probe, settings: Settings, timeout: float) -> Check:
    import docker.errors

    from .image import image_tag

    def labels_of(tag: str) -> dict[str, str] | None:
        try:
            image = with_deadline(lambda: p.client.images.get(tag), timeout)
        except docker.errors.ImageNotFound:
            return None
        return dict(image.labels or {})

    build = "mcp-codeexec image build (or just start `mcp-codeexec serve`, which builds it on first use)"
    try:
        if settings.image:
            from .image import derived_tag, is_bare_name

            if is_bare_name(settings.image) and labels_of(derived_tag(settings.image)) is not None:
                return Check("image", "OK", f"{derived_tag(settings.image)} (the derived image {settings.image!r})")
            labels = labels_of(settings.image)
            if labels is None:
                return Check("image", "FAIL", f"the configured image {settings.image} is not on the engine",
                             f"build or pull {settings.image}, or unset MCP_CODEEXEC_IMAGE to use the default")
            return Check("image", "OK", f"{settings.image} (configured), version label "
                         f"{labels.get('io.mcp-codeexec.version', 'none')}")
        full, minimal = image_tag("full"), image_tag("minimal")
        labels = labels_of(full)
        if labels is None:
            if labels_of(minimal) is not None:
                return Check("image", "WARN", f"only {minimal} is built: no pandas, numpy, matplotlib, ... "
                             "(the hosted tool's libraries)", f"{build} --target full", data={"image": minimal})
            return Check("image", "FAIL", f"the sandbox image {full} is not built", build)
        label = labels.get("io.mcp-codeexec.version")
        if label != __version__:
            return Check("image", "WARN", f"{full} carries version label {label!r}, this is mcp-codeexec {__version__}",
                         f"rebuild it: {build}", data={"image": full})
        return Check("image", "OK", f"{full} (version {label})", data={"image": full})
    except Deadline as exc:
        return Check("image", "FAIL", f"the engine did not list images ({exc})", "restart the Docker engine")
    except docker.errors.DockerException as exc:
        return Check("image", "FAIL", f"could not inspect the image: {_short_error(exc)}", "restart the Docker engine")


def check_derived_images(p: Probe, settings: Settings, timeout: float) -> Check:
    """Each derived image (`image build --name`) still has its base, entrypoint, user and agent."""
    import docker.errors

    from .image import ImageError, derived_images, verify_derived

    try:
        rows = with_deadline(lambda: derived_images(p.client.api), timeout)
        names = {row["name"] for row in rows}
        missing = [n for n in settings.images if n not in names]
        bad = []
        for row in rows:
            problems = with_deadline(lambda r=row: verify_derived(r["tag"], r["from"], p.client.api), timeout)
            if problems:
                bad.append(f"{row['name']}: {'; '.join(problems)}")
    except Deadline as exc:
        return Check("derived images", "FAIL", f"the engine did not answer ({exc})", "restart the Docker engine")
    except (docker.errors.DockerException, ImageError) as exc:
        return Check("derived images", "FAIL", f"could not inspect them: {_short_error(exc)}",
                     "rebuild them with `mcp-codeexec image build --name NAME ...` (their base image may be gone)")
    if missing:
        return Check("derived images", "FAIL", f"allowed in `images` but not built: {', '.join(missing)}",
                     "mcp-codeexec image build --name NAME --from Dockerfile (or --extra-requirements FILE)")
    if bad:
        return Check("derived images", "FAIL", "; ".join(bad), "rebuild them with `mcp-codeexec image build --name NAME ...`")
    if not rows:
        return Check("derived images", "SKIP", "none built (optional: `mcp-codeexec image build --name NAME ...`)")
    return Check("derived images", "OK", ", ".join(sorted(names)) + " (entrypoint, user 1000 and agent as their base's)")


BUILD_EGRESS = "mcp-codeexec doctor --build-egress-proxy"


def _debootstrap_blocker() -> str | None:
    """Why this host cannot debootstrap the proxy's Debian base (None: it can), as ``image.ensure_base_debian`` needs."""
    found = shutil.which("debootstrap") or next(
        (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.access(p, os.X_OK)), None
    )
    if found is None:
        return "debootstrap is not installed"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "debootstrap needs root"
    return None


def check_egress_proxy(p: Probe, settings: Settings, timeout: float) -> Check:
    """With ``network = "allowlist"``: the allow-list proxy image (egress.py) is on the engine, or
    can be built there (the server builds it on the first allow-list sandbox, which then waits)."""
    if settings.network != "allowlist":
        return Check("egress proxy", "SKIP", 'not used (network is not "allowlist")')
    import docker.errors

    from .egress import proxy_image_tag
    from .image import DEBIAN_BASE

    tag = settings.egress_image or proxy_image_tag()

    def present(name: str) -> bool:
        try:
            with_deadline(lambda: p.client.images.get(name), timeout)
        except docker.errors.ImageNotFound:
            return False
        return True

    later = "or let the server build it when it makes the first allow-list sandbox (that call waits for the build)"
    try:
        if present(tag):
            return Check("egress proxy", "OK", f"{tag} (the allow-list proxy, {len(settings.allow_hosts)} allowed host(s))",
                         data={"image": tag, "present": True})
        if present(DEBIAN_BASE):
            return Check("egress proxy", "WARN", f"{tag} is not built; buildable from {DEBIAN_BASE} "
                         "(its apt-get needs a Debian mirror reachable from the build)",
                         f"{BUILD_EGRESS}, {later}", data={"image": tag, "present": False, "buildable": True})
        blocker = _debootstrap_blocker()
        if blocker is None:
            return Check("egress proxy", "WARN", f"{tag} is not built; buildable after bootstrapping its base "
                         f"{DEBIAN_BASE} with debootstrap (1-3 min)", f"{BUILD_EGRESS}, {later}",
                         data={"image": tag, "present": False, "buildable": True})
        return Check("egress proxy", "FAIL", f"{tag} is not built and cannot be: its base {DEBIAN_BASE} is missing "
                     f"and {blocker}", f"install debootstrap and run `sudo {BUILD_EGRESS}`, or build "
                     f"{DEBIAN_BASE} elsewhere and load it", data={"image": tag, "present": False, "buildable": False})
    except Deadline as exc:
        return Check("egress proxy", "FAIL", f"the engine did not list images ({exc})", "restart the Docker engine")
    except docker.errors.DockerException as exc:
        return Check("egress proxy", "FAIL", f"could not inspect {tag}: {_short_error(exc)}", "restart the Docker engine")


def build_egress_proxy(settings: Settings) -> int:
    """``doctor --build-egress-proxy``: build the allow-list proxy image now (egress.ensure_proxy_image)."""
    from .egress import ensure_proxy_image, proxy_image_tag
    from .engines.docker import connect
    from .errors import CodeExecError

    try:
        tag = ensure_proxy_image(connect(timeout=600), settings.egress_image or proxy_image_tag())
    except CodeExecError as exc:
        print(f"mcp-codeexec: {exc.message}", file=sys.stderr)
        return 1
    print(f"egress proxy image: {tag}", file=sys.stderr)
    return 0


def check_mounts(settings: Settings) -> Check:
    """Host folders the operator declared (the config check already refused bad ones)."""
    if not settings.mounts:
        return Check("mounts", "SKIP", "no host folders are mounted (optional: `allowed_mount_roots` and `mounts`)")
    from .mounts import resolve_all, staging_supported

    found = resolve_all(settings.mounts, settings.allowed_mount_roots, settings.data_dir, settings.runtime)
    text = ", ".join(f"{m.host} -> {m.target} ({'rw' if m.rw else 'ro'})" for m in found)
    if not staging_supported():
        return Check("mounts", "WARN", f"{text}: not root, so mounts are plain binds (rw refused)",
                     "run the server as root on the engine's host for checked, idmapped mounts")
    return Check("mounts", "OK", text)


def check_runtime(p: Probe, settings: Settings, timeout: float) -> tuple[Check, dict[str, Any]]:
    try:
        info = with_deadline(p.client.info, timeout)
    except Exception as exc:  # any engine failure is this check's FAIL
        return Check("runtime", "FAIL", f"`docker info` failed: {_short_error(exc)}", "restart the Docker engine"), {}
    runtimes = sorted((info.get("Runtimes") or {}).keys())
    default = info.get("DefaultRuntime", "runc")
    listed = ", ".join(r for r in runtimes if not r.startswith("io.containerd")) or "none listed"
    wanted = settings.runtime or default
    gvisor_fix = (
        "install gVisor (https://gvisor.dev/docs/user_guide/install/), run `sudo runsc install` "
        "and restart dockerd (`sudo systemctl restart docker`)"
    )
    if wanted not in runtimes:
        return Check("runtime", "FAIL", f"runtime {wanted!r} is configured but the engine has only: {listed}",
                     gvisor_fix if wanted == "runsc" else "unset MCP_CODEEXEC_RUNTIME"), info
    hint = ""
    status: Status = "OK"
    if wanted != "runsc":
        hint = "; runsc (gVisor) available: `--runtime runsc` for a stronger boundary" if "runsc" in runtimes else ""
    return Check("runtime", status, f"{wanted} (engine runtimes: {listed}){hint}",
                 data={"runtime": wanted, "runtimes": runtimes}), info


def check_checkpoint(info: Mapping[str, Any], settings: Settings) -> Check:
    """Is an idle sandbox checkpointed with its memory (the REPL's variables) and restored?

    Under runsc with dockerd's experimental mode, an idle sandbox whose interpreter holds state is
    checkpointed at the idle stop and restored on its next call (see ``checkpoint.py``). Elsewhere
    it is kept running for ``repl_idle_stop_seconds`` instead of the normal idle stop."""
    from .checkpoint import unavailable_reason

    runtime = settings.runtime or info.get("DefaultRuntime", "runc")
    reason = unavailable_reason(info, settings)
    data = {"available": reason is None, "runtime": runtime, "experimental": bool(info.get("ExperimentalBuild"))}
    if reason:
        fallback = (f"a sandbox whose Python interpreter holds state is kept running up to "
                    f"{settings.repl_idle_stop_seconds:g} s idle (repl_idle_stop_seconds) instead")
        return Check("checkpoint", "OK", f"REPL checkpointing unavailable: {reason}; {fallback}", data=data)
    return Check("checkpoint", "OK", f"an idle {runtime} sandbox holding REPL state is checkpointed with its memory "
                 f"after {settings.idle_stop_seconds:g} s (idle_stop_seconds) and restored, variables intact, "
                 "on its next call", data=data)


def check_quota(settings: Settings, engine_up: bool) -> Check:
    from .engines.docker import QuotaVolumes

    limit = f"{settings.disk_bytes / 2**30:g} GiB"
    if settings.quota == "none":
        return Check("disk quota", "WARN", f"disabled by configuration (quota=none): the {limit} workspace limit "
                     "is not enforced", "set MCP_CODEEXEC_QUOTA=auto where the server runs as root next to the engine")
    detected = QuotaVolumes.detect()
    if detected != "loop":
        why = _why_no_loop()
        status: Status = "FAIL" if settings.quota == "loop" else "WARN"
        return Check("disk quota", status, f"no loop-mounted workspaces ({why}): the {limit} workspace limit is "
                     "not enforced (workspaces are plain Docker volumes)",
                     "run the server as root on the engine's host (Linux) for hard per-workspace limits"
                     + ("; or set quota=auto" if settings.quota == "loop" else "; otherwise nothing to do"))
    if not engine_up:
        return Check("disk quota", "SKIP", "loop volumes available (not tried: no engine)")
    root = settings.volumes_dir / f".doctor-{secrets.token_hex(4)}"
    cid = f"doctor-probe-{secrets.token_hex(4)}"
    volumes = None
    started = time.monotonic()
    try:
        volumes = QuotaVolumes(root, "loop")
        with_deadline(lambda: volumes.create(cid, 16 * 2**20), 30)
        image, mnt = volumes.paths(cid)
        if not os.path.ismount(mnt):
            raise RuntimeError("the test volume was created but is not mounted")
        return Check("disk quota", "OK", f"loop-mounted ext4 workspaces ({limit} each): a test volume was created, "
                     f"mounted and removed in {time.monotonic() - started:.2f} s")
    except Exception as exc:  # mkfs / mount failures of any kind are this check's FAIL
        return Check("disk quota", "FAIL", f"creating a loop volume failed: {getattr(exc, 'message', None) or exc}",
                     "check that loop devices are available (`losetup -f`, `modprobe loop`) or set MCP_CODEEXEC_QUOTA=none")
    finally:
        if volumes is not None:
            try:
                volumes.remove(cid)
            except Exception:  # best effort: the probe must not mask the result
                pass
        shutil.rmtree(root, ignore_errors=True)


def _why_no_loop() -> str:
    if not hasattr(os, "geteuid"):
        return "not on Linux"
    if sys.platform != "linux":
        return f"the engine runs in a VM on {sys.platform}"
    if os.geteuid() != 0:
        return "the server does not run as root"
    host = os.environ.get("DOCKER_HOST", f"unix://{DEFAULT_SOCKET}")
    if not _socket_exists(host):
        return f"the engine is not local ({host})"
    if not shutil.which("mkfs.ext4"):
        return "mkfs.ext4 is missing (apt-get install e2fsprogs)"
    return "mount is missing"


def check_file_store(settings: Settings) -> Check:
    from .files import FileStore

    root = settings.files_dir
    try:
        with FileStore(root, settings.file_retention_days) as store:
            record = store.add_bytes(b"mcp-codeexec doctor probe\n", filename="doctor-probe.txt", origin="upload",
                                     principal="doctor")
            store.delete(record.id)
            stats = store.stats()
    except Exception as exc:  # any I/O or SQLite failure is this check's FAIL
        return Check("file store", "FAIL", f"{root}: {exc}",
                     f"make {settings.data_dir} writable, or point MCP_CODEEXEC_DATA_DIR at a writable directory")
    return Check("file store", "OK", f"{root}: writable ({stats['files']} files, {stats['bytes'] / 2**20:.1f} MiB)")


def check_hosted(settings: Settings) -> Check:
    if settings.anthropic_api_key:
        return Check("hosted backend", "OK", f"ANTHROPIC_API_KEY is set; model {settings.hosted_model}")
    return Check("hosted backend", "FAIL", "backend=hosted but ANTHROPIC_API_KEY is not set",
                 "export ANTHROPIC_API_KEY=... (or use the docker backend)")


def check_sandbox(settings: Settings, timeout: float) -> Check:
    """Start a real sandbox, run one command through its agent, remove it (``--start``)."""
    import anyio

    from .api import Sandbox
    from .errors import CodeExecError

    async def start() -> tuple[str, str, float]:
        began = time.monotonic()
        with anyio.fail_after(timeout):
            async with Sandbox(settings) as sb:
                result = await sb.bash("echo ok; uname -m")
        if result.type != "bash_code_execution_result":
            raise RuntimeError(f"the command failed: {result.error_code}")  # type: ignore[union-attr]
        return result.stdout.split()[-1], settings.runtime or "runc", time.monotonic() - began  # type: ignore[union-attr]

    try:
        arch, runtime, took = anyio.run(start)
    except CodeExecError as exc:
        return Check("sandbox", "FAIL", exc.message, "run `mcp-codeexec doctor` without --start and fix what it reports")
    except TimeoutError:
        return Check("sandbox", "FAIL", f"no sandbox answered within {timeout:g} s", "check `docker ps -a` and the engine's log")
    except Exception as exc:  # any other failure of the round trip is this check's FAIL
        return Check("sandbox", "FAIL", f"{type(exc).__name__}: {exc}", "check `docker ps -a` and the engine's log")
    return Check("sandbox", "OK", f"started a sandbox ({runtime}, {arch}), ran a command, removed it: {took:.1f} s")


def run_checks(get_settings: Callable[[], Settings], timeout: float = PROBE_TIMEOUT, start: bool = False) -> list[Check]:
    checks: list[Check] = []
    try:
        settings = get_settings()
    except Exception as exc:  # pydantic ValidationError, TOML errors: reported as a FAIL
        where = os.environ.get("MCP_CODEEXEC_CONFIG") or "the config file"
        what = f"{where} is not valid TOML" if type(exc).__name__ == "TOMLDecodeError" else "invalid configuration"
        errors = getattr(exc, "errors", None)
        detail = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors()
        ) if callable(errors) else str(exc).splitlines()[0]
        checks.append(Check("config", "FAIL", f"{what}: {detail}",
                            "run `mcp-codeexec config` to see every value and where it comes from"))
        return checks
    checks.append(Check("config", "OK", f"backend {settings.backend}, data dir {settings.data_dir}"))
    if settings.backend == "hosted":
        checks.append(check_hosted(settings))
    if settings.backend == "kubernetes":  # the cluster instead of a Docker engine
        from .engines.k8s_doctor import kubernetes_checks

        checks.extend(kubernetes_checks(settings, timeout, start=start))
        checks.append(check_file_store(settings))
        if start:
            ready = not any(c.status == "FAIL" for c in checks)
            checks.append(check_sandbox(settings, 120) if ready else Check("sandbox", "SKIP", "not started: fix the failures above first"))
        return checks
    engine, p = check_engine(timeout)
    checks.append(engine)
    if p is None:
        for name in ("engine version", "image", "derived images", "runtime", "checkpoint", "egress proxy"):
            checks.append(Check(name, "SKIP", "no engine to ask"))
    else:
        checks.append(check_engine_version(p))
        checks.append(check_image(p, settings, timeout * 3))
        checks.append(check_derived_images(p, settings, timeout * 10))
        runtime, info = check_runtime(p, settings, timeout * 3)
        checks.append(runtime)
        checks.append(check_checkpoint(info, settings) if info else Check("checkpoint", "SKIP", "no `docker info`"))
        checks.append(check_egress_proxy(p, settings, timeout * 3))
    checks.append(check_mounts(settings))
    checks.append(check_quota(settings, engine_up=p is not None))
    checks.append(check_file_store(settings))
    if start:
        ready = p is not None and not any(c.status == "FAIL" for c in checks)
        checks.append(check_sandbox(settings, 120) if ready else Check("sandbox", "SKIP", "not started: fix the failures above first"))
    if p is not None:
        try:
            p.client.close()
        except Exception:  # closing a half-dead client: nothing to report
            pass
    return checks


# ---------------------------------------------------------------------------------------------
# CLI


_COLORS = {"OK": "\033[32m", "WARN": "\033[33m", "FAIL": "\033[31m", "SKIP": "\033[2m"}


def render(checks: list[Check], elapsed: float, color: bool = False) -> str:
    lines = [f"mcp-codeexec {__version__} doctor"]
    width = max(len(c.name) for c in checks)
    for c in checks:
        status = f"{_COLORS[c.status]}{c.status:<4}\033[0m" if color else f"{c.status:<4}"
        lines.append(f"{status}  {c.name:<{width}}  {c.message}")
        if c.fix and c.status != "OK":
            lines.append(f"      {'':<{width}}  fix: {c.fix}")
    fails = sum(c.status == "FAIL" for c in checks)
    warns = sum(c.status == "WARN" for c in checks)
    verdict = "not ready" if fails else "ready"
    lines.append(f"{verdict}: {fails} failure{'s' * (fails != 1)}, {warns} warning{'s' * (warns != 1)} ({elapsed:.1f} s)")
    return "\n".join(lines)


def cmd_doctor(args: argparse.Namespace, get_settings: Callable[[], Settings]) -> int:
    if getattr(args, "build_egress_proxy", False) and build_egress_proxy(get_settings()):
        return 1
    started = time.monotonic()
    checks = run_checks(get_settings, timeout=args.timeout, start=getattr(args, "start", False))
    elapsed = time.monotonic() - started
    failed = any(c.status == "FAIL" for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "version": __version__, "elapsed_seconds": round(elapsed, 3),
                          "checks": [asdict(c) for c in checks]}, indent=2, default=str))
    else:
        print(render(checks, elapsed, color=sys.stdout.isatty() and not os.environ.get("NO_COLOR")))
    return 1 if failed else 0


def register_cli(subparsers: Any, get_settings: Callable[[], Settings]) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "doctor", help="check the Docker engine, image, runtime, disk quota and file store",
        description="Check everything mcp-codeexec needs; print OK/WARN/FAIL with the fix. Exit 1 on any FAIL.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=float, default=PROBE_TIMEOUT, help="seconds to wait for the engine (default 3)")
    p.add_argument("--start", action="store_true", help="also start a sandbox, run a command in it and remove it")
    p.add_argument("--build-egress-proxy", action="store_true",
                   help='first build the allow-list proxy image (network = "allowlist") when it is missing')
    p.set_defaults(func=lambda ns: cmd_doctor(ns, get_settings))
    return p


__all__ = ["Check", "Endpoint", "candidate_endpoints", "local_docker_host", "register_cli", "run_checks", "server_endpoint"]
