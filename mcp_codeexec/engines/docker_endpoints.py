"""Where a Docker engine listens: DOCKER_HOST, docker contexts, Docker Desktop / colima / OrbStack
sockets. Only looks at files and environment (no connection is made); ``engines.docker.connect``
and ``doctor`` both use it, so neither imports the other.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SOCKET = "/var/run/docker.sock"
WINDOWS_PIPE = "npipe:////./pipe/docker_engine"


@dataclass
class Endpoint:
    url: str
    source: str


def docker_config_dir(env: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"])
    return (home or Path.home()) / ".docker"


def current_context(env: Mapping[str, str] | None = None, home: Path | None = None) -> str | None:
    """The docker CLI's current context name (None or "default" = the platform default)."""
    env = os.environ if env is None else env
    if env.get("DOCKER_CONTEXT"):
        return env["DOCKER_CONTEXT"]
    try:
        config = json.loads((docker_config_dir(env, home) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = config.get("currentContext") if isinstance(config, dict) else None
    return name if isinstance(name, str) and name else None


def contexts(env: Mapping[str, str] | None = None, home: Path | None = None) -> dict[str, str]:
    """Every docker context with a docker endpoint: name -> host URL, from the CLI's metadata files."""
    found: dict[str, str] = {}
    meta_dir = docker_config_dir(env, home) / "contexts" / "meta"
    try:
        entries = sorted(meta_dir.iterdir())
    except OSError:
        return found
    for entry in entries:
        try:
            meta = json.loads((entry / "meta.json").read_text())
            host = meta["Endpoints"]["docker"]["Host"]
            name = meta["Name"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(name, str) and isinstance(host, str) and host:
            found[name] = host
    return found


def context_host(name: str, env: Mapping[str, str] | None = None, home: Path | None = None) -> str | None:
    """The endpoint of context ``name``: from its metadata file (stored under sha256(name)), else
    from ``docker context inspect`` (3 s deadline) when the CLI is installed."""
    meta = docker_config_dir(env, home) / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest() / "meta.json"
    try:
        return str(json.loads(meta.read_text())["Endpoints"]["docker"]["Host"]) or None
    except (OSError, ValueError, KeyError, TypeError):
        pass
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        return None
    try:
        proc = subprocess.run(
            [docker_cli, "context", "inspect", name, "--format", "{{.Endpoints.docker.Host}}"],
            capture_output=True, text=True, timeout=3,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    host = proc.stdout.strip()
    return host if proc.returncode == 0 and host else None


def well_known_sockets(env: Mapping[str, str] | None = None, home: Path | None = None) -> list[Endpoint]:
    env = os.environ if env is None else env
    home = home or Path.home()
    found = [
        Endpoint(f"unix://{DEFAULT_SOCKET}", "the default socket"),
        Endpoint(f"unix://{home}/.docker/run/docker.sock", "Docker Desktop"),
        Endpoint(f"unix://{home}/.docker/desktop/docker.sock", "Docker Desktop for Linux"),
        Endpoint(f"unix://{home}/.colima/default/docker.sock", "colima"),
        Endpoint(f"unix://{home}/.colima/docker.sock", "colima"),
        Endpoint(f"unix://{home}/.orbstack/run/docker.sock", "OrbStack"),
        Endpoint(f"unix://{home}/.rd/docker.sock", "Rancher Desktop"),
    ]
    if runtime_dir := env.get("XDG_RUNTIME_DIR"):
        found.append(Endpoint(f"unix://{runtime_dir}/docker.sock", "rootless Docker"))
        found.append(Endpoint(f"unix://{runtime_dir}/podman/podman.sock", "Podman"))
    return found


def candidate_endpoints(
    env: Mapping[str, str] | None = None, home: Path | None = None, platform: str | None = None
) -> list[Endpoint]:
    """Every place an engine may listen, most specific first (no network access)."""
    env = os.environ if env is None else env
    platform = platform or sys.platform
    out: list[Endpoint] = []
    if env.get("DOCKER_HOST"):
        out.append(Endpoint(env["DOCKER_HOST"], "DOCKER_HOST"))
    current = current_context(env, home)
    if current and current != "default" and (host := context_host(current, env, home)):
        out.append(Endpoint(host, f"docker context {current!r}"))
    for name, host in contexts(env, home).items():
        out.append(Endpoint(host, f"docker context {name!r}"))
    if platform == "win32":
        out.append(Endpoint(WINDOWS_PIPE, "Docker Desktop (named pipe)"))
        out.append(Endpoint("npipe:////./pipe/dockerDesktopLinuxEngine", "Docker Desktop (Linux engine pipe)"))
    else:
        out += well_known_sockets(env, home)
    seen: set[str] = set()
    unique = []
    for endpoint in out:
        if endpoint.url not in seen:
            seen.add(endpoint.url)
            unique.append(endpoint)
    return unique


def _socket_exists(url: str) -> bool:
    return url.startswith("unix://") and Path(url[len("unix://"):]).exists()


def local_endpoint(
    env: Mapping[str, str] | None = None, home: Path | None = None, platform: str | None = None
) -> Endpoint | None:
    """The engine to use when ``DOCKER_HOST`` is unset: the current docker context's endpoint, else
    None when the default socket exists (or on Windows), else the first existing Docker Desktop /
    colima / OrbStack / ... socket. Only looks at files: no connection is made."""
    env = os.environ if env is None else env
    platform = platform or sys.platform
    if env.get("DOCKER_HOST"):
        return None
    current = current_context(env, home)
    host = context_host(current, env, home) if current and current != "default" else None
    if host and host.startswith(("unix://", "npipe://")):  # TLS and ssh contexts need the CLI's key material
        return Endpoint(host, f"docker context {current!r}")
    if platform == "win32" or Path(DEFAULT_SOCKET).exists():
        return None
    for endpoint in well_known_sockets(env, home)[1:]:
        if _socket_exists(endpoint.url):
            return endpoint
    return None


def local_docker_host(env: Mapping[str, str] | None = None, home: Path | None = None, platform: str | None = None) -> str | None:
    """``local_endpoint``'s URL: what ``engines.docker.connect`` uses when ``DOCKER_HOST`` is unset
    (None = docker-py's default)."""
    endpoint = local_endpoint(env, home, platform)
    return endpoint.url if endpoint else None


def server_endpoint(env: Mapping[str, str] | None = None, home: Path | None = None, platform: str | None = None) -> Endpoint:
    """The endpoint the server (``engines.docker.connect``) will talk to."""
    env = os.environ if env is None else env
    platform = platform or sys.platform
    if env.get("DOCKER_HOST"):
        return Endpoint(env["DOCKER_HOST"], "DOCKER_HOST")
    if endpoint := local_endpoint(env, home, platform):
        return endpoint
    if platform == "win32":
        return Endpoint(WINDOWS_PIPE, "Docker Desktop (named pipe)")
    return Endpoint(f"unix://{DEFAULT_SOCKET}", "the default socket")
