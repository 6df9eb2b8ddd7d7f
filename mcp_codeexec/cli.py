"""Command line: ``mcp-codeexec serve | image | files | containers | doctor | config | parity``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from . import __version__
from .config import Settings, load_settings


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        "backend": getattr(args, "backend", None),
        "transport": getattr(args, "transport", None),
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "no_auth": True if getattr(args, "no_auth", False) else None,
        "runtime": getattr(args, "runtime", None),
        "image": getattr(args, "image", None),
        "call_timeout": getattr(args, "timeout", None),
        "pool_size": getattr(args, "pool_size", None),
        "data_dir": getattr(args, "data_dir", None),
        "anthropic_base_url": getattr(args, "base_url", None),
        "hosted_model": getattr(args, "model", None),
        "legacy_tool": True if getattr(args, "legacy_tool", False) else None,
        "resume_sandbox": False if getattr(args, "fresh", False) else None,
        "services": True if getattr(args, "services", False) else None,
        "snapshots": True if getattr(args, "snapshots", False) else None,
        "tools": getattr(args, "tools", None),
        "code_cell_timeout": getattr(args, "cell_timeout", None),
        "tools_config": getattr(args, "tools_config", None),
        "skills": getattr(args, "skills", None) or None,
        "mounts": getattr(args, "mount", None),
        "allowed_mount_roots": getattr(args, "allowed_mount_root", None),
        "database_url": getattr(args, "database_url", None),
        "network": {"none": False, "on": True, "allowlist": "allowlist", None: None}[getattr(args, "network", None)],
        "allow_hosts": getattr(args, "allow_host", None),
        "mirrors": getattr(args, "mirror", None),
        "kubeconfig": getattr(args, "kubeconfig", None),
        "k8s_namespace": getattr(args, "namespace", None),
        "k8s_runtime_class": getattr(args, "runtime_class", None),
        "k8s_storage_class": getattr(args, "storage_class", None),
    }
    if getattr(args, "legacy_tool", False):
        print("mcp-codeexec: --legacy-tool is deprecated: code_execution (the Python REPL) is published by "
              "default; choose tools with --tools", file=sys.stderr)
    return load_settings(**overrides)


def _configure_logging(settings: Settings) -> None:
    # stdout belongs to the MCP stdio transport: logs always go to stderr.
    logging.basicConfig(
        stream=sys.stderr, level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    # A signal from here on is handled by shutdown.py once the event loop listens (exit 0, no traceback).
    from .shutdown import hold_signals

    hold_signals()
    settings = _settings_from(args)
    _configure_logging(settings)
    if settings.backend == "docker" and settings.auto_build_image and not _image_ready(settings):
        return 1
    from .skills import SkillInvalid, catalog_for

    try:
        catalog = catalog_for(settings)  # a bad SKILL.md stops the server here, naming the file and rule
    except SkillInvalid as exc:
        print(f"mcp-codeexec: refusing to start: invalid skill: {exc}", file=sys.stderr)
        return 2
    if catalog.folder:
        logging.getLogger(__name__).info("skills: %s", ", ".join(s.name for s in catalog.folder))
    if settings.transport == "http":
        from .http_app import serve_http

        serve_http(settings)
        return 0
    import anyio

    from .server import create_server
    from .shutdown import Shutdown, stop_on_signals
    from .stdio import serve_stdio

    shutdown = Shutdown()
    server = create_server(settings, shutdown=shutdown)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as serving:
                await tg.start(stop_on_signals, shutdown, serving.cancel)
                async with serve_stdio(server) as (read_stream, write_stream):
                    await server.run(read_stream, write_stream, server.create_initialization_options())
            tg.cancel_scope.cancel()  # the client closed stdin, or a signal stopped serving: done

    anyio.run(main)
    return 0


def _image_ready(settings: Settings) -> bool:
    """Build the sandbox image on first use (progress on stderr); False when that build failed."""
    import docker

    from .image import ImageError, ensure_image

    try:
        ensure_image(settings.image, base=settings.image_base)
    except (ImageError, docker.errors.DockerException) as exc:
        print(f"mcp-codeexec: building the sandbox image failed: {exc}", file=sys.stderr)
        return False
    return True


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["docker", "kubernetes", "hosted"], help="where calls run (default docker)")
    p.add_argument("--kubeconfig", help="kubernetes backend: kubeconfig file (default: in-cluster service account)")
    p.add_argument("--namespace", help="kubernetes backend: namespace of the sandbox pods (default: default)")
    p.add_argument("--runtime-class", help="kubernetes backend: runtimeClassName of sandbox pods (e.g. gvisor)")
    p.add_argument("--storage-class", help="kubernetes backend: StorageClass of a /workspace PVC per sandbox")
    p.add_argument("--runtime", choices=["runc", "runsc"], help="container runtime (runsc = gVisor)")
    p.add_argument("--image", help="sandbox image tag, or the NAME of an image made by `image build --name`")
    p.add_argument("--mount", action="append", metavar="HOST[:SANDBOX_PATH][:ro|rw]",
                   help="a host folder every sandbox gets (repeatable; read-only unless rw; inside an allowed root)")
    p.add_argument("--allowed-mount-root", action="append", metavar="DIR",
                   help="a host folder under which --mount may lie (repeatable; default: none, so no mounts)")
    p.add_argument("--network", choices=["none", "on", "allowlist"],
                   help="sandbox network: none (default), on (everything), allowlist (HTTPS to --allow-host names only)")
    p.add_argument("--allow-host", action="append", metavar="NAME",
                   help="with --network allowlist: a host name sandboxes may reach over HTTPS (repeatable)")
    p.add_argument("--mirror", action="append", metavar="HOST=ADDRESS:PORT",
                   help="with --network allowlist: reach allowed HOST at ADDRESS:PORT instead (a mirror; repeatable)")
    p.add_argument("--timeout", type=float, help="seconds a tool call may run")
    p.add_argument("--pool-size", type=int, help="warm containers kept ready")
    p.add_argument("--data-dir", help="where files, workspaces and state live")
    p.add_argument("--base-url", help="hosted backend: Anthropic API base URL (gateways)")
    p.add_argument("--model", help="hosted backend: model that drives the hosted tool")
    p.add_argument("--tools", help="comma-separated tools to publish (default: bash_code_execution,"
                   "text_editor_code_execution,code_execution)")
    p.add_argument("--cell-timeout", type=float, help="seconds one code_execution cell may run (default 90)")
    p.add_argument("--legacy-tool", action="store_true", help="deprecated alias: make sure code_execution is published")
    p.add_argument("--tools-config", metavar="PATH", help="upstream MCP servers (mcpServers JSON) the sandbox code may call")
    p.add_argument("--skills", action="append", metavar="DIR",
                   help="a folder of skills (each subfolder with a SKILL.md), read-only at /skills/<name>/ in every sandbox; repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-codeexec", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mcp-codeexec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the MCP server (stdio by default)")
    serve.add_argument("--transport", choices=["stdio", "http"], help="stdio (default) or streamable HTTP at /mcp")
    serve.add_argument("--host", help="HTTP bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default 8000)")
    serve.add_argument("--no-auth", action="store_true", help="HTTP without bearer tokens (loopback only)")
    serve.add_argument("--database-url", metavar="postgresql://…",
                       help="share files, ownership, sessions and pacing with other replicas through PostgreSQL")
    serve.add_argument("--fresh", action="store_true",
                       help="stdio: start in a fresh sandbox instead of resuming the most recent idle one")
    serve.add_argument("--services", action="store_true",
                       help="publish the `services` tool: processes that outlive a call (not a hosted tool)")
    serve.add_argument("--snapshots", action="store_true",
                       help="publish the `snapshots` tool: save, start from and fork workspaces (not a hosted tool)")
    _add_server_flags(serve)
    serve.set_defaults(func=cmd_serve)

    get_settings: Callable[[], Settings] = load_settings
    for module_name in ("image", "files_cli", "containers_cli", "snapshots_cli", "tokens_cli", "doctor", "parity", "config_cli"):
        register = _optional_register(module_name)
        if register is not None:
            if module_name == "image":
                register(sub)
            elif module_name == "files_cli":
                register(sub, get_settings, attach=_attach_upload)
            else:
                register(sub, get_settings)
    return parser


def _attach_upload(record: Any, container_id: str) -> None:
    """`files upload --container`: check the container exists, then queue the file for it."""
    from .backends.sandbox import queue_upload
    from .engines import build_engine

    settings = load_settings()
    build_engine(settings).find(container_id)  # the configured backend's (a pod on kubernetes)
    queue_upload(settings.data_dir / "pending", record.id, record.filename, container_id)
    print(f"queued for {container_id}: it appears in /workspace/inputs/{record.filename} before the next call", file=sys.stderr)


def _optional_register(module_name: str) -> Callable[..., Any] | None:
    import importlib

    try:
        module = importlib.import_module(f"mcp_codeexec.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"mcp_codeexec.{module_name}":
            return None
        raise
    return getattr(module, "register_cli", None)


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
            status = int(args.func(args) or 0)
        finally:
            sys.stdout.flush()  # output still buffered meets a closed pipe here, not at interpreter exit
    except BrokenPipeError:
        return _reader_went_away()
    return status


def _reader_went_away() -> int:
    """`mcp-codeexec files ls | head -5`: the reader closed the pipe. Stop quietly, as `ls` would."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    os.close(devnull)
    return 141  # 128 + SIGPIPE, what a shell reports for a command its reader left


if __name__ == "__main__":
    sys.exit(main())
