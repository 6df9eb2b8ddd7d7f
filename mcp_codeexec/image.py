"""The sandbox image: its tag, building it (`mcp-codeexec image build`) and checking it
(`mcp-codeexec image check`).

Builds go through docker-py's low-level API (`APIClient.build`, classic builder, streamed) with
a build context assembled in memory from `sandbox/`, plus `ca-bundle.crt`: an extra CA bundle
for TLS-intercepting proxies (auto-detected from PIP_CERT / REQUESTS_CA_BUNDLE / SSL_CERT_FILE,
or given), empty when there is none. Where no container registry is reachable the base can be
bootstrapped from Debian's packages (`--base debian`, see `ensure_base_debian`).

Everything here blocks: it is for the CLI and CI, never for the server's event loop. `docker`
is imported inside the functions that need it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import docker

IMAGE_REPO = "mcp-codeexec-sandbox"
TARGETS = ("full", "minimal")
PYTHON_BASE = "python:3.11.12-slim-bookworm"
DEBIAN_BASE_REPO = "mcp-codeexec-base"
DEBIAN_SUITE = "bookworm"
DEBIAN_BASE = f"{DEBIAN_BASE_REPO}:{DEBIAN_SUITE}"
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
CA_ENV_VARS = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
CHECK_LABEL = "io.mcp-codeexec.role"
IMAGE_LABEL = "io.mcp-codeexec.image"
DERIVED_LABEL = "io.mcp-codeexec.derived"
DERIVED_FROM_LABEL = "io.mcp-codeexec.derived-from"
AGENT_PATH = "/opt/codeexec/agent.py"
SANDBOX_USER = "1000:1000"
BASE_ARG = "SANDBOX_IMAGE"
_NAME_OK = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_DOCKER_TAG_OK = re.compile(r"[^A-Za-z0-9_.-]")
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class ImageError(RuntimeError):
    """Building, bootstrapping or checking the image failed; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# names


def package_version() -> str:
    """The mcp-codeexec version (`mcp_codeexec.__version__`, else the installed distribution's)."""
    try:
        from mcp_codeexec import __version__ as version
    except ImportError:
        from importlib import metadata

        try:
            version = metadata.version("mcp-codeexec")
        except metadata.PackageNotFoundError:
            version = "0.0.0.dev0"
    return str(version)


def image_tag(target: str = "full") -> str:
    """The tag the server expects: `mcp-codeexec-sandbox:<version>` (full) or `...:<version>-minimal`."""
    if target not in TARGETS:
        raise ValueError(f"unknown image target {target!r} (expected one of {', '.join(TARGETS)})")
    version = _DOCKER_TAG_OK.sub("-", package_version())[:100]
    return f"{IMAGE_REPO}:{version}" if target == "full" else f"{IMAGE_REPO}:{version}-minimal"


def is_bare_name(image: str) -> bool:
    """A derived image's NAME (what `image build --name` takes), not a tag or a reference."""
    return bool(_NAME_OK.match(image)) and image not in TARGETS


def derived_tag(name: str) -> str:
    """`mcp-codeexec-sandbox:<version>-NAME`: the tag of the image `image build --name NAME` makes."""
    if not is_bare_name(name):
        raise ImageError(f"image name {name!r}: use lower-case letters, digits, '.', '_' or '-' (not full or minimal)")
    return f"{image_tag('full')}-{name}"


def sandbox_dir() -> Path:
    """Where the Dockerfile lives: $MCP_CODEEXEC_SANDBOX_DIR, the package's bundled copy, or the
    source tree's `sandbox/`."""
    env = os.environ.get("MCP_CODEEXEC_SANDBOX_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    candidates += [here / "_sandbox", here.parent / "sandbox"]
    for candidate in candidates:
        if (candidate / "Dockerfile").is_file():
            return candidate
    raise ImageError(
        "sandbox/Dockerfile not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); set MCP_CODEEXEC_SANDBOX_DIR to the directory holding it"
    )


def find_ca_bundle(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The extra CA bundle to inject: `explicit` ("none" disables), else the first of
    PIP_CERT, REQUESTS_CA_BUNDLE, SSL_CERT_FILE that names a file, else None."""
    if explicit is not None:
        if str(explicit).lower() in ("", "none"):
            return None
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ImageError(f"CA bundle {path} is not a file")
        return path
    for var in CA_ENV_VARS:
        value = os.environ.get(var)
        if value and Path(value).is_file():
            return Path(value)
    return None


def _api(client: docker.APIClient | None = None) -> docker.APIClient:
    if client is not None:
        return client
    import docker

    try:
        api = docker.from_env(timeout=600).api
        api.ping()
    except docker.errors.DockerException as exc:
        raise ImageError(f"cannot reach the Docker engine ({exc}); is dockerd running?") from exc
    return api


def image_exists(tag: str, client: docker.APIClient | None = None) -> bool:
    import docker

    try:
        _api(client).inspect_image(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# progress display


class _Progress:
    """One line per Dockerfile step (with its time and whether it was cached) on stderr; on a
    terminal the step's latest output line is shown in place, elsewhere a heartbeat line every
    30 s; the last lines of output are printed when a step fails."""

    def __init__(self, enabled: bool = True, verbose: bool = False, stream: IO[str] | None = None) -> None:
        self.enabled = enabled
        self.verbose = verbose
        self.out = stream or sys.stderr
        self.tty = self.out.isatty()
        self.tail: deque[str] = deque(maxlen=40)
        self.started = time.monotonic()
        self.step: str | None = None
        self.step_started = self.started
        self.cached = False
        self.last_beat = self.started
        self._partial = ""
        self._status_shown = False

    def _write(self, text: str) -> None:
        if self.enabled:
            self._clear_status()
            self.out.write(text)
            self.out.flush()

    def _clear_status(self) -> None:
        if self._status_shown:
            self.out.write("\r\033[K")
            self._status_shown = False

    def info(self, message: str) -> None:
        self._write(f"{message}\n")

    def _finish_step(self) -> None:
        if self.step is None:
            return
        took = time.monotonic() - self.step_started
        if self.cached:
            self._write("    cached\n")
        elif took >= 1:
            self._write(f"    done in {took:.1f}s\n")
        self.step = None

    def line(self, text: str) -> None:
        """One line of build output (a step header, builder chatter or RUN output)."""
        text = _ANSI.sub("", text).rstrip("\r\n")
        match = _STEP.match(text)
        if match:
            self._finish_step()
            num, total, instruction = match.groups()
            self.step, self.step_started, self.cached = num, time.monotonic(), False
            self.last_beat = self.step_started
            elapsed = time.monotonic() - self.started
            self._write(f"[{num:>2}/{total}] {_shorten(instruction, 110)}  (t+{elapsed:.0f}s)\n")
            return
        if text.strip() == "---> Using cache":
            self.cached = True
            return
        if not text.strip() or text.startswith((" ---> ", "Removing intermediate container")):
            return
        self.tail.append(text)
        if not self.enabled:
            return
        if self.verbose:
            self._write(f"      {text}\n")
        elif self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 8
            self.out.write(f"\r\033[K      {_shorten(text.strip(), width)}")
            self.out.flush()
            self._status_shown = True
        elif time.monotonic() - self.last_beat >= 30:
            self.last_beat = time.monotonic()
            took = self.last_beat - self.step_started
            self._write(f"      ... {took:.0f}s: {_shorten(text.strip(), 100)}\n")

    def feed(self, chunk: str) -> None:
        """Build output arrives in arbitrary chunks; split it into lines."""
        data = self._partial + chunk
        *lines, self._partial = re.split(r"\r?\n|\r", data)
        for line in lines:
            self.line(line)

    def done(self, message: str) -> None:
        if self._partial:
            self.line(self._partial)
            self._partial = ""
        self._finish_step()
        self._write(f"{message} ({time.monotonic() - self.started:.0f}s)\n")

    def failed(self, message: str) -> str:
        self._finish_step()
        tail = "\n".join(f"      {line}" for line in self.tail)
        if tail and not self.verbose:
            self._write(f"last output:\n{tail}\n")
        return message


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


# ---------------------------------------------------------------------------------------------
# build


def build_context(ca_bundle: Path | None, source: Path | None = None) -> io.BytesIO:
    """A tar of `sandbox/` (minus caches and any stray `ca-bundle.crt`) plus `ca-bundle.crt`.
    Entries are normalised (owner, mtime) so unchanged files keep the builder's cache."""
    source = source or sandbox_dir()
    agent = source / "agent" / "codeexec_agent.py"
    if not agent.is_file():
        raise ImageError(f"{agent} is missing: the image cannot be built without the agent")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_bytes(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))

        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source).as_posix()
            if not path.is_file() or "__pycache__" in path.parts or rel == "ca-bundle.crt":
                continue
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            add_bytes(rel, path.read_bytes(), mode)
        add_bytes("ca-bundle.crt", ca_bundle.read_bytes() if ca_bundle else b"")
    buf.seek(0)
    return buf


def resolve_base(base: str, progress: _Progress | None = None, client: docker.APIClient | None = None) -> str:
    """`python` -> the official image, `debian` -> the debootstrapped base (made if missing),
    `auto` -> the official image if it is already here, else the Debian one; anything else -> that
    image name. `auto` looks only at local images: it never asks a registry (which may be
    unreachable, slow to time out, or must not be contacted at all)."""
    if base == "auto":
        base = "python" if image_exists(PYTHON_BASE, client) else "debian"
        if progress is not None:
            progress.info(f"base auto: {PYTHON_BASE if base == 'python' else DEBIAN_BASE} "
                          f"({'present locally' if base == 'python' else 'the official image is not here; no registry is asked'})")
    if base == "python":
        return PYTHON_BASE
    if base == "debian":
        return ensure_base_debian(progress=progress, client=client)
    return base


def build_image(
    target: str = "full",
    base: str = "auto",
    ca_bundle: str | os.PathLike[str] | None = None,
    progress: bool = True,
    *,
    nocache: bool = False,
    unrar: str = "nonfree",
    verbose: bool = False,
    tag: str | None = None,
    client: docker.APIClient | None = None,
) -> str:
    """Build `target` of sandbox/Dockerfile on `base` (auto | python | debian | IMAGE) and tag it as
    `image_tag(target)` (or `tag`). Returns the tag; raises ImageError on failure."""
    if target not in TARGETS:
        raise ImageError(f"unknown target {target!r} (expected one of {', '.join(TARGETS)})")
    api = _api(client)
    display = _Progress(enabled=progress, verbose=verbose)
    tag = tag or image_tag(target)
    base_image = resolve_base(base, display, api)
    ca = find_ca_bundle(ca_bundle)
    context = build_context(ca)
    display.info(
        f"building {tag} (target {target}, base {base_image}, "
        f"extra CA {'from ' + str(ca) if ca else 'none'}{', no cache' if nocache else ''})"
    )
    stream = api.build(
        fileobj=context,
        custom_context=True,
        dockerfile="Dockerfile",
        target=target,
        tag=tag,
        buildargs={"BASE": base_image, "VERSION": package_version(), **({"UNRAR": unrar} if target == "full" else {})},
        nocache=nocache,
        rm=True,
        forcerm=True,
        pull=False,
        decode=True,
    )
    image_id = _consume_build(stream, display, base_image)
    display.done(f"built {tag} ({image_id[:19] if image_id else 'no id'})")
    return tag


def ensure_image(image: str | None, *, base: str = "auto", client: docker.APIClient | None = None) -> str | None:
    """`serve`'s first use: build the sandbox image the server expects when it is missing, with
    progress on stderr. Returns the tag built, or None when nothing was built: the image is there,
    the server was told to use some other image, or no engine answers (the server then starts
    anyway and each call says what is wrong). Raises ImageError when the build fails."""
    targets = {image_tag(t): t for t in TARGETS}
    wanted = image or image_tag("full")
    if wanted not in targets:
        return None  # a custom image is the user's to build
    try:
        api = _api(client)
        present = image_exists(wanted, api) or (image is None and image_exists(image_tag("minimal"), api))
    except ImageError:
        return None
    if present:
        return None
    print(f"mcp-codeexec: the sandbox image {wanted} is not built yet; building it now (once, a few minutes)",
          file=sys.stderr, flush=True)
    return build_image(targets[wanted], base, None, True, client=api)


def _consume_build(stream: Iterable[dict[str, Any]], display: _Progress, base_image: str) -> str | None:
    image_id = None
    for event in stream:
        if "stream" in event:
            display.feed(event["stream"])
        elif "status" in event:  # pulling the base image
            detail = f" {event['id']}" if event.get("id") else ""
            display.line(f"pull: {event['status']}{detail}")
        elif "aux" in event and isinstance(event["aux"], dict):
            image_id = event["aux"].get("ID", image_id)
        elif "error" in event:
            message = str(event["error"]).strip()
            hint = ""
            if any(
                s in message for s in ("pull access denied", "no such host", "dial tcp", "repository does not exist")
            ):
                hint = (
                    f"\nhint: the base image {base_image} is not available locally and could not be pulled;"
                    " where no registry is reachable use `mcp-codeexec image build --base debian`"
                )
            raise ImageError(display.failed(f"docker build failed: {message}{hint}"))
    return image_id


# ---------------------------------------------------------------------------------------------
# Debian base via debootstrap


def ensure_base_debian(
    mirror: str | None = None,
    *,
    name: str = DEBIAN_BASE,
    suite: str = DEBIAN_SUITE,
    progress: _Progress | bool | None = True,
    client: docker.APIClient | None = None,
) -> str:
    """Return `name` (default `mcp-codeexec-base:bookworm`), creating it when missing: debootstrap
    a minbase Debian `suite` from `mirror` ($MCP_CODEEXEC_DEBIAN_MIRROR, else deb.debian.org) and
    `docker import` it. Needs root and debootstrap on the host."""
    display = progress if isinstance(progress, _Progress) else _Progress(enabled=bool(progress))
    api = _api(client)
    if image_exists(name, api):
        display.info(f"base {name}: present, reused")
        return name
    debootstrap = shutil.which("debootstrap") or next(
        (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.access(p, os.X_OK)), None
    )
    if debootstrap is None:
        raise ImageError(
            f"base image {name} is missing and debootstrap is not installed; install it "
            "(Debian/Ubuntu: `apt-get install debootstrap`, Fedora: `dnf install debootstrap`) "
            "or build with `--base IMAGE` naming a Debian bookworm image you have"
        )
    if os.geteuid() != 0:
        raise ImageError(f"bootstrapping {name} with debootstrap needs root: rerun as root (e.g. with sudo)")
    mirror = mirror or os.environ.get("MCP_CODEEXEC_DEBIAN_MIRROR") or DEFAULT_DEBIAN_MIRROR
    repo, _, tag = name.partition(":")
    workdir = Path(tempfile.mkdtemp(prefix="mcp-codeexec-debootstrap-"))
    rootfs = workdir / "rootfs"
    started = time.monotonic()
    try:
        display.info(f"base {name}: debootstrap --variant=minbase {suite} from {mirror} (1-3 min)")
        proc = subprocess.Popen(
            [debootstrap, "--variant=minbase", suite, str(rootfs), mirror],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            display.line(line)
        if proc.wait() != 0:
            raise ImageError(display.failed(f"debootstrap exited {proc.returncode}"))
        _slim_rootfs(rootfs, suite, mirror)
        display.info(f"base {name}: importing into Docker")
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        result = api.import_image_from_stream(
            tar.stdout,
            repository=repo,
            tag=tag or "latest",
            changes=[
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                'CMD ["/bin/bash"]',
            ],
        )
        if tar.wait() != 0:
            raise ImageError(f"tar of {rootfs} failed (exit {tar.returncode})")
        if "error" in str(result).lower() and not image_exists(name, api):
            raise ImageError(f"docker import failed: {result}")
    finally:
        _unmount_under(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
    display.info(f"base {name}: ready ({time.monotonic() - started:.0f}s)")
    return name


def _slim_rootfs(rootfs: Path, suite: str, mirror: str) -> None:
    """Drop the downloaded .debs and package lists; list main, -updates and -security."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
        for path in rootfs.glob(pattern):
            if path.is_file():
                path.unlink()
    mirror = mirror.rstrip("/")
    (rootfs / "etc/apt/sources.list").write_text(
        f"deb {mirror} {suite} main\ndeb {mirror} {suite}-updates main\ndeb {mirror}-security {suite}-security main\n"
    )


def _unmount_under(path: Path) -> None:
    """debootstrap mounts /proc and /sys in the target; if it died they may still be mounted."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    prefix = str(path.resolve()) + "/"
    points = [m.split()[1] for m in mounts if len(m.split()) > 1 and m.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


# ---------------------------------------------------------------------------------------------
# derived images: the sandbox image plus the user's own layers


REQUIREMENTS_DOCKERFILE = f"""\
ARG {BASE_ARG}
FROM ${{{BASE_ARG}}}
USER 0:0
COPY . /tmp/codeexec-extra/
RUN set -eu; cd /tmp/codeexec-extra; \\
    cert=/etc/ssl/certs/ca-certificates.crt; \\
    if [ -s ca-bundle.crt ]; then cat "$cert" ca-bundle.crt > /tmp/codeexec-ca.crt; cert=/tmp/codeexec-ca.crt; fi; \\
    pip=/opt/venv/bin/pip; [ -x "$pip" ] || pip="python3 -m pip"; \\
    PIP_CERT="$cert" PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1 \\
        $pip install -r "$CODEEXEC_REQUIREMENTS"; \\
    cd /; rm -rf /tmp/codeexec-extra /tmp/codeexec-ca.crt /root/.cache
USER {SANDBOX_USER}
"""


def _dir_context(folder: Path, extra: dict[str, bytes], skip: Iterable[str] = ()) -> io.BytesIO:
    """A tar of ``folder`` (without .git and caches) plus ``extra`` files."""
    buf = io.BytesIO()
    skipped = set(skip) | set(extra)
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if not path.is_file() or rel in skipped or {".git", "__pycache__"} & set(path.parts):
                continue
            tar.add(path, arcname=rel, recursive=False)
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def build_derived(
    name: str,
    *,
    dockerfile: str | os.PathLike[str] | None = None,
    requirements: str | os.PathLike[str] | None = None,
    base: str | None = None,
    ca_bundle: str | os.PathLike[str] | None = None,
    progress: bool = True,
    verbose: bool = False,
    nocache: bool = False,
    client: docker.APIClient | None = None,
) -> str:
    """Build `derived_tag(name)` from the sandbox image `base` (default: the full image) with the
    user's Dockerfile (its `FROM ${SANDBOX_IMAGE}` gets the base) or a pip requirements file, then
    verify it kept the sandbox's entrypoint, user and agent; a derived image that did not is
    removed and refused. Returns the tag."""
    if (dockerfile is None) == (requirements is None):
        raise ImageError("image build --name: give exactly one of --from DOCKERFILE or --extra-requirements FILE")
    tag = derived_tag(name)
    api = _api(client)
    base = base or image_tag("full")
    if not image_exists(base, api):
        raise ImageError(f"base image {base} not found; build it first with `mcp-codeexec image build`")
    ca = find_ca_bundle(ca_bundle)
    extra = {"ca-bundle.crt": ca.read_bytes() if ca else b""}
    if dockerfile is not None:
        path = Path(dockerfile).expanduser().resolve()
        if not path.is_file():
            raise ImageError(f"Dockerfile {path} not found")
        text = path.read_text()
        if f"${{{BASE_ARG}}}" not in text and f"${BASE_ARG}" not in text:
            raise ImageError(f"{path}: start it with `ARG {BASE_ARG}` and `FROM ${{{BASE_ARG}}}` (the sandbox image is passed there)")
        folder, what = path.parent, f"Dockerfile {path}"
    else:
        req = Path(requirements).expanduser().resolve()  # type: ignore[arg-type]
        if not req.is_file():
            raise ImageError(f"requirements file {req} not found")
        text = REQUIREMENTS_DOCKERFILE.replace('"$CODEEXEC_REQUIREMENTS"', shlex.quote(req.name))
        folder, what = req.parent, f"requirements {req}"
    context = _dir_context(folder, {**extra, "Dockerfile.codeexec": text.encode()})
    buildargs = {BASE_ARG: base}
    display = _Progress(enabled=progress, verbose=verbose)
    display.info(f"building {tag} from {base} ({what})")
    stream = api.build(
        fileobj=context,
        custom_context=True,
        dockerfile="Dockerfile.codeexec",
        tag=tag,
        buildargs=buildargs,
        labels={DERIVED_LABEL: name, DERIVED_FROM_LABEL: base},
        nocache=nocache,
        rm=True,
        forcerm=True,
        pull=False,
        decode=True,
    )
    _consume_build(stream, display, base)
    problems = verify_derived(tag, base, api)
    if problems:
        import docker as docker_mod

        with contextlib.suppress(docker_mod.errors.DockerException):
            api.remove_image(tag, force=True)
        raise ImageError(f"{tag} refused (and removed): " + "; ".join(problems)
                         + f". A derived image must end as the sandbox does: `USER {SANDBOX_USER}`, the base's ENTRYPOINT, "
                         f"and {AGENT_PATH} unchanged")
    display.done(f"built {tag}")
    return tag


def _agent_digest(tag: str, api: docker.APIClient) -> str | None:
    """sha256 of the agent file in ``tag`` (read from a created, never started, container)."""
    import hashlib

    import docker as docker_mod

    container = api.create_container(tag, entrypoint=["true"], network_disabled=True)
    try:
        stream, _ = api.get_archive(container["Id"], AGENT_PATH)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile(tar.getmembers()[0])
            return hashlib.sha256(member.read()).hexdigest() if member else None
    except docker_mod.errors.NotFound:
        return None
    finally:
        with contextlib.suppress(docker_mod.errors.DockerException):
            api.remove_container(container["Id"], force=True)


def verify_derived(tag: str, base: str, client: docker.APIClient | None = None) -> list[str]:
    """What ``tag`` changed that a sandbox depends on (empty: it is fit to run)."""
    api = _api(client)
    mine, theirs = api.inspect_image(tag)["Config"], api.inspect_image(base)["Config"]
    problems = []
    if mine.get("Entrypoint") != theirs.get("Entrypoint"):
        problems.append(f"ENTRYPOINT is {mine.get('Entrypoint')}, not {theirs.get('Entrypoint')}")
    if mine.get("User") != SANDBOX_USER:
        problems.append(f"USER is {mine.get('User') or 'root'!r}, not {SANDBOX_USER}")
    if (mine.get("Labels") or {}).get(IMAGE_LABEL) != "sandbox":
        problems.append(f"label {IMAGE_LABEL}=sandbox is missing")
    agent, expected = _agent_digest(tag, api), _agent_digest(base, api)
    if agent is None or agent != expected:
        problems.append(f"{AGENT_PATH} differs from the base image's" if agent else f"{AGENT_PATH} is missing")
    return problems


def list_images(client: docker.APIClient | None = None) -> list[dict[str, Any]]:
    """The sandbox images on this engine (the ones built here and derived ones), newest first."""
    api = _api(client)
    rows = []
    for image in api.images(filters={"label": f"{IMAGE_LABEL}=sandbox"}):
        labels = image.get("Labels") or {}
        for tag in image.get("RepoTags") or []:
            if not tag.startswith(f"{IMAGE_REPO}:"):
                continue
            rows.append({
                "tag": tag,
                "name": labels.get(DERIVED_LABEL, ""),
                "from": labels.get(DERIVED_FROM_LABEL, ""),
                "size": int(image.get("Size") or 0),
                "created": int(image.get("Created") or 0),
            })
    return sorted(rows, key=lambda r: r["created"], reverse=True)


def derived_images(client: docker.APIClient | None = None) -> list[dict[str, Any]]:
    return [row for row in list_images(client) if row["name"]]


# ---------------------------------------------------------------------------------------------
# check


def check_image(
    tag: str | None = None,
    *,
    out: IO[str] | None = None,
    timeout: float = 600,
    client: docker.APIClient | None = None,
) -> bool:
    """Run sandbox/check_image.py inside a throwaway container of `tag` (default: the full image)
    under the server's constraints (network none, uid 1000, read-only root, tmpfs /tmp and
    /workspace, no capabilities, 1 CPU, 5 GiB). Prints its `OK ...`/`FAIL ...` lines to `out`
    as they come; True when every item passed."""
    import docker

    out = out or sys.stdout
    api = _api(client)
    tag = tag or image_tag("full")
    if not image_exists(tag, api):
        raise ImageError(f"image {tag} not found; build it with `mcp-codeexec image build`")
    script = (sandbox_dir() / "check_image.py").read_text()
    host_config = api.create_host_config(
        network_mode="none",
        read_only=True,
        tmpfs={
            "/tmp": "rw,exec,nosuid,nodev,size=1g,mode=1777",
            "/workspace": "rw,exec,nosuid,nodev,size=1g,mode=0755,uid=1000,gid=1000",
        },
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        pids_limit=1024,
        mem_limit="5g",
        memswap_limit="5g",
        nano_cpus=1_000_000_000,
    )
    container = api.create_container(
        tag,
        entrypoint=["python3", "-c", script],
        user="1000:1000",
        working_dir="/workspace",
        network_disabled=True,
        host_config=host_config,
        labels={CHECK_LABEL: "image-check"},
    )
    cid = container["Id"]
    counts = {"OK": 0, "FAIL": 0}
    try:
        api.start(cid)
        buffer = ""
        for chunk in api.logs(cid, stream=True, follow=True, stdout=True, stderr=True):
            buffer += chunk.decode("utf-8", "replace")
            *lines, buffer = buffer.split("\n")
            for line in lines:
                word = line.split(" ", 1)[0]
                if word in counts:
                    counts[word] += 1
                out.write(line + "\n")
                out.flush()
        if buffer:
            out.write(buffer + "\n")
        status = api.wait(cid, timeout=timeout)
        code = int(status.get("StatusCode", 1))
    except docker.errors.DockerException as exc:
        raise ImageError(f"running the image check failed: {exc}") from exc
    finally:
        try:
            api.remove_container(cid, force=True)
        except docker.errors.DockerException:
            pass
    ok = code == 0 and counts["FAIL"] == 0 and counts["OK"] > 0
    out.write(f"image check {tag}: {'passed' if ok else 'FAILED'} (exit {code})\n")
    out.flush()
    return ok


# ---------------------------------------------------------------------------------------------
# CLI


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add `image build|check|tag` to an argparse subparsers object; every leaf sets `func`
    (namespace -> exit code)."""
    parser = subparsers.add_parser("image", help="build and check the sandbox image")
    sub = parser.add_subparsers(dest="image_command", metavar="{build,check,ls,tag}")
    sub.required = True

    build = sub.add_parser("build", help="build the sandbox image with live progress")
    build.add_argument("--target", choices=TARGETS, default="full", help="image target (default: full)")
    build.add_argument(
        "--base",
        default="auto",
        metavar="auto|python|debian|IMAGE",
        help=f"auto (default): {PYTHON_BASE} if it is already present locally, else debian; "
        f"python: {PYTHON_BASE} (needs a registry); debian: bootstrap {DEBIAN_BASE} with "
        "debootstrap (needs root; reused when present); or any Debian bookworm image name",
    )
    build.add_argument(
        "--ca-bundle",
        metavar="PATH",
        help="extra CA bundle trusted during the build (default: $PIP_CERT, $REQUESTS_CA_BUNDLE "
        "or $SSL_CERT_FILE; 'none' disables)",
    )
    build.add_argument("--no-cache", action="store_true", help="do not use the build cache")
    build.add_argument(
        "--unrar",
        choices=("nonfree", "free"),
        default="nonfree",
        help="RARLAB unrar from Debian non-free (default, hosted CLI) or unrar-free",
    )
    build.add_argument("--tag", help="tag to give the image (default: the one the server expects)")
    build.add_argument("--name", help=f"derive a named image {IMAGE_REPO}:<version>-NAME from the sandbox image "
                       "(with --from or --extra-requirements)")
    build.add_argument("--from", dest="from_dockerfile", metavar="DOCKERFILE",
                       help=f"with --name: your Dockerfile, starting `ARG {BASE_ARG}` / `FROM ${{{BASE_ARG}}}`; "
                       "its folder is the build context")
    build.add_argument("--extra-requirements", metavar="FILE",
                       help="with --name: pip requirements installed into the sandbox's venv (its folder is the context)")
    build.add_argument("--from-image", metavar="TAG", help="with --name: the sandbox image to derive from (default: the full one)")
    build.add_argument("-v", "--verbose", action="store_true", help="show all build output")
    build.set_defaults(func=_cmd_build)

    check = sub.add_parser("check", help="run the library/tool/workload check inside the image")
    check.add_argument("--tag", help="image to check (default: the full image the server expects)")
    check.add_argument("--name", help="check the derived image NAME")
    check.set_defaults(func=_cmd_check)

    ls = sub.add_parser("ls", help="list the sandbox images here (derived ones with their NAME)")
    ls.set_defaults(func=_cmd_ls)

    tag = sub.add_parser("tag", help="print the tag the server expects")
    tag.add_argument("--target", choices=TARGETS, default="full")
    tag.set_defaults(func=_cmd_tag)
    return parser


def _cmd_build(args: argparse.Namespace) -> int:
    if args.name or args.from_dockerfile or args.extra_requirements:
        if not args.name:
            print("error: --from / --extra-requirements need --name NAME", file=sys.stderr)
            return 2
        return _guarded(lambda: print(build_derived(
            args.name, dockerfile=args.from_dockerfile, requirements=args.extra_requirements, base=args.from_image,
            ca_bundle=args.ca_bundle, verbose=args.verbose, nocache=args.no_cache)))
    return _guarded(
        lambda: print(
            build_image(
                args.target,
                args.base,
                args.ca_bundle,
                True,
                nocache=args.no_cache,
                unrar=args.unrar,
                verbose=args.verbose,
                tag=args.tag,
            )
        )
    )


def _cmd_check(args: argparse.Namespace) -> int:
    result: list[bool] = []
    code = _guarded(lambda: result.append(check_image(derived_tag(args.name) if args.name else args.tag)))
    return code if code else (0 if result and result[0] else 1)


def _cmd_ls(args: argparse.Namespace) -> int:
    def show() -> None:
        print(f"{'TAG':<48} {'NAME':<16} {'SIZE':>9}  FROM")
        for row in list_images():
            print(f"{row['tag']:<48} {row['name'] or '-':<16} {row['size'] / 1e6:>7.0f}MB  {row['from'] or '-'}")

    return _guarded(show)


def _cmd_tag(args: argparse.Namespace) -> int:
    print(image_tag(args.target))
    return 0


def _guarded(action: Any) -> int:
    import docker

    try:
        action()
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except docker.errors.DockerException as exc:
        print(f"error: Docker: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m mcp_codeexec.image build|check|tag ...` (the same as `mcp-codeexec image ...`)."""
    parser = argparse.ArgumentParser(prog="python -m mcp_codeexec.image")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["image", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
