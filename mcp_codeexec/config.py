"""Settings: the one place configuration is read.

Sources, highest first: CLI flags (passed as init kwargs), environment variables
``MCP_CODEEXEC_*``, a TOML file (``--config PATH`` or ``MCP_CODEEXEC_CONFIG``, default
``<config dir>/config.toml`` when it exists), then the defaults below.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

GiB = 1024**3
MiB = 1024**2


def default_data_dir() -> Path:
    if xdg := os.environ.get("XDG_DATA_HOME"):
        return Path(xdg) / "mcp-codeexec"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "mcp-codeexec"
    return Path.home() / ".local" / "share" / "mcp-codeexec"


def default_config_file() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "mcp-codeexec" / "config.toml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MCP_CODEEXEC_", extra="forbid", validate_default=True)

    # --- serving
    backend: Literal["docker", "kubernetes", "hosted"] = "docker"
    transport: Literal["stdio", "http"] = "stdio"
    host: str = "127.0.0.1"
    port: int = 8000
    auth_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list, description="HTTP bearer tokens; 'principal:token' or 'token'.")
    no_auth: bool = False
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_request_bytes: int = Field(default=64 * MiB, description="Largest MCP request body.")
    max_upload_bytes: int = Field(default=2 * GiB, description="Largest Files API upload.")
    http_calls_per_minute: float = Field(
        default=1200.0, ge=0, description="Tool calls each HTTP token holder may make a minute on average (0 = unlimited)."
    )
    http_call_burst: int = Field(default=120, ge=1, description="Tool calls an HTTP token holder may make back to back.")
    http_max_sessions_per_principal: int = Field(
        default=256, ge=1, description="Open MCP sessions (with an Mcp-Session-Id) each HTTP token holder may hold."
    )
    database_url: str | None = Field(
        default=None,
        description="Shared metadata store for N HTTP replicas: postgresql://… (default: embedded SQLite under data_dir).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    trace_requests: Path | None = Field(
        default=None, description="HTTP: append every request's arrive/body/start/end events (JSON lines, monotonic "
        "times, JSON-RPC ids) to this file (request_trace.py); unset: no tracing.",
    )
    data_dir: Path = Field(default_factory=default_data_dir)

    # --- calls
    call_timeout: float = Field(default=50.0, gt=0, le=3600, description="Seconds a tool call may run.")
    max_output_bytes: int = Field(default=40_000, ge=1000, description="stdout/stderr bytes kept per stream (both fit max_result_chars).")
    max_spill_bytes: int = 256 * MiB
    max_output_file_bytes: int = 100 * MiB
    max_view_bytes: int = Field(
        default=90_000, ge=1024, description="Text bytes a view returns (within max_result_chars); larger files show the lines that fit."
    )
    max_view_media_bytes: int = Field(default=5 * MiB, description="Largest image or PDF a view returns (base64).")
    max_image_bytes: int = Field(default=1 * MiB, description="Images above this are downscaled for MCP image content.")
    max_result_chars: int = Field(
        default=100_000, ge=1000, le=500_000,
        description="Characters a result's text and its structuredContent JSON stay within; announced as "
        "anthropic/maxResultSizeChars on each tool, so Claude Code shows results up to this whole (it caps the value at 500,000).",
    )
    progress_interval: float = 2.0
    tools: Annotated[list[Literal["bash_code_execution", "text_editor_code_execution", "code_execution"]], NoDecode] = Field(
        default_factory=lambda: ["bash_code_execution", "text_editor_code_execution", "code_execution"],
        description="The tools published (a comma-separated list in the environment).",
    )
    legacy_tool: bool = Field(
        default=False, description="Deprecated alias: make sure `code_execution` is published (it is by default)."
    )
    code_cell_timeout: float = Field(
        default=90.0, gt=0, le=3600,
        description="Wall-clock seconds one code_execution cell may run before it is interrupted (detection_timeout).",
    )

    # --- services: processes that outlive a call (opt-in; see mcp_codeexec/services.py)
    services: bool = Field(
        default=False, description="Publish the `services` tool (start/list/logs/stop processes that outlive a call)."
    )
    services_max: int = Field(default=4, ge=1, le=64, description="Services one sandbox may run at once.")
    services_log_bytes: int = Field(
        default=256 * 1024, ge=1024, le=16 * MiB, description="Output bytes kept per service (a ring buffer: the newest)."
    )
    services_max_memory_bytes: int = Field(
        default=0, ge=0,
        description="The services' own memory cap (their RSS summed; over it the largest is stopped). "
        "0: only the sandbox's memory limit, which holds them in any case.",
    )

    # --- snapshots of workspaces (snapshots.py)
    snapshots: bool = Field(
        default=False, description="Publish the `snapshots` tool (save / list / remove / start / fork workspaces)."
    )
    max_snapshots_per_principal: int = Field(default=16, ge=0, description="Workspace snapshots each principal may keep.")
    max_snapshot_disk_bytes_per_principal: int = Field(
        default=50 * GiB, ge=0, description="Host disk a principal's snapshots may take (allocated blocks)."
    )

    # --- tools the sandbox code may call (programmatic tool calling)
    tools_config: Path | None = Field(
        default=None, description="Upstream MCP servers the sandbox code may call: a file in the mcpServers JSON format."
    )
    tools_pending_timeout: float = Field(
        default=270.0, gt=0, le=3600, description="Seconds a tool call from code may stay pending (then TimeoutError)."
    )
    tools_max_in_flight: int = Field(default=16, ge=1, le=1024, description="Tool calls one container may have pending.")
    tools_max_argument_bytes: int = Field(default=1 * MiB, ge=1024, description="Largest JSON arguments of one tool call.")
    tools_max_result_bytes: int = Field(default=1 * MiB, ge=1024, description="Largest result text of one tool call.")
    skills: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="Skills folders: each subfolder with a SKILL.md is read-only at /skills/<name>/ in every sandbox."
    )

    # --- sandboxes on Kubernetes (backend = "kubernetes"; the image, limits and lifetimes below apply too)
    kubeconfig: str | None = Field(default=None, description="Kubeconfig file (unset: the in-cluster service account).")
    k8s_context: str | None = Field(default=None, description="Kubeconfig context (unset: its current context).")
    k8s_namespace: str = Field(default="default", description="Namespace the sandbox pods, policies and claims live in.")
    k8s_runtime_class: str | None = Field(default=None, description="runtimeClassName of sandbox pods (e.g. gvisor).")
    k8s_storage_class: str | None = Field(
        default=None, description="StorageClass of a PVC per /workspace (hard size, survives pod loss); unset: emptyDir sizeLimit (soft)."
    )
    k8s_image_pull_policy: Literal["Never", "IfNotPresent", "Always"] = "IfNotPresent"
    k8s_lease_seconds: float = Field(
        default=15.0, gt=0, description="Lease (coordination.k8s.io) duration: a server that stops renewing it loses pool and reaper after this."
    )
    k8s_lease_namespace: str | None = Field(
        default=None, description="Namespace of the leader Lease (unset: the server's own namespace in a cluster, else k8s_namespace)."
    )
    k8s_network_check: Literal["refuse", "warn", "off"] = Field(
        default="refuse", description="Start-up canary pod: refuse to serve (or warn) unless it shows the sandbox network isolated."
    )

    # --- sandboxes (docker backend)
    image: str | None = Field(
        default=None,
        description="Sandbox image: a tag, or the NAME of an image derived with `image build --name NAME`; "
        "default: the tag matching this version.",
    )
    images: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Derived image names sandboxes may use (empty: any the operator built); when set, "
        "`image` must be one of them or a full tag.",
    )
    allowed_mount_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="Host folders under which `mounts` may lie (comma-separated in the environment)."
    )
    mounts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host folders every sandbox gets: HOST[:SANDBOX_PATH][:ro|rw], read-only unless rw "
        "(default path /workspace/<folder name>).",
    )
    named_mounts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host folders MCP clients may choose by name per sandbox: NAME=HOST[:SANDBOX_PATH][:ro|rw] "
        "(selected with _meta 'io.mcp-codeexec/mounts'; see mount_choice.py).",
    )
    named_mount_principals: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per named mount, the HTTP principals that may see and choose it, like an upstream's "
        "`principals` (a name not listed here: every principal; stdio / the local user: all).",
    )
    runtime: Literal["runc", "runsc"] | None = None
    cpus: float = 1.0
    memory_bytes: int = 5 * GiB
    disk_bytes: int = 5 * GiB
    tmp_bytes: int = 512 * MiB
    pids_limit: int = 512
    network: bool | Literal["allowlist"] = Field(
        default=False,
        description="Sandbox network: false (none, the default), true (Docker's bridge: everything), or "
        "\"allowlist\" (only HTTPS to `allow_hosts`, through a confining proxy; see SECURITY.md).",
    )
    allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="With network = \"allowlist\": the exact host names sandboxes may reach over HTTPS (port 443) "
        "through the proxy (comma-separated in the environment).",
    )
    mirrors: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="With network = \"allowlist\": allowed host = \"ADDRESS:PORT\" to reach instead of the host's "
        "own address (a company mirror); HOST=ADDRESS:PORT,... in the environment.",
    )
    egress_network: str = Field(
        default="bridge", description="The Docker network the allow-list proxy reaches allowed hosts through."
    )
    egress_image: str | None = Field(
        default=None, description="The allow-list proxy image (default mcp-codeexec-egress:<version>-<recipe>, built when missing; the tag carries the recipe digest)."
    )
    quota: Literal["auto", "loop", "none"] = "auto"
    container_ttl_seconds: float = 30 * 24 * 3600
    pool_size: int = Field(default=1, ge=0, le=64, description="Warm containers kept ready when idle (0 = no pool).")
    pool_max: int = Field(
        default=64, ge=0, le=512,
        description="The most warm containers the pool grows to after a burst of new sessions (also bounded by "
        "free memory); it shrinks back to pool_size when idle.",
    )
    create_concurrency: int = Field(
        default=4, ge=1, le=64, description="Sandbox containers started at once (pool and new sessions alike)."
    )
    pool_shrink_seconds: float = Field(
        default=300.0, gt=0, description="A pool grown by a burst gives back its extra containers after this long without one."
    )
    direct_calls: bool = Field(
        default=True,
        description="The stdio transport answers plain hosted-tool calls itself, past the SDK's per-request "
        "pipeline (same results; progress, other methods and anything unusual still go through the SDK).",
    )
    max_containers_per_principal: int = 16
    reap_interval_seconds: float = 300.0
    idle_stop_seconds: float = Field(default=900.0, description="Stop sandboxes idle this long (0 = never); files stay.")
    repl_idle_stop_seconds: float = Field(
        default=4 * 3600.0,
        description="Stop a sandbox whose Python interpreter holds state only after it was idle this long (0 = never); "
        "stopping loses the interpreter's variables.",
    )
    checkpoint_idle: bool = Field(
        default=True,
        description="Under runsc, an idle sandbox whose Python interpreter holds state is checkpointed with its memory "
        "at the idle stop and restored, variables intact, on its next call (needs dockerd experimental mode).",
    )
    checkpoint_max_bytes: int = Field(
        default=2 * GiB, ge=0,
        description="A sandbox using more memory than this is not checkpointed (its image would be as large, on the "
        "engine's disk): it keeps running up to repl_idle_stop_seconds instead.",
    )
    file_retention_days: float = 30.0
    auto_build_image: bool = Field(default=True, description="`serve` builds the sandbox image when it is missing.")
    image_base: str = Field(
        default="auto", description="Base of an image `serve` builds: auto (python if present locally, else debian) | python | debian | IMAGE."
    )
    resume_sandbox: bool = Field(
        default=True,
        description="A new stdio session resumes the local user's most recent sandbox that no other server is using "
        "(clients that start a server per call keep their files and shell); false (or `serve --fresh`): a fresh one.",
    )
    max_kept_sandboxes_per_principal: int = Field(
        default=8, ge=1, description="Stopped sandboxes a principal keeps; beyond it the least recently used are removed."
    )
    max_kept_disk_bytes_per_principal: int = Field(
        default=20 * GiB, ge=0, description="Workspace disk a principal's stopped sandboxes keep; beyond it the least recently used are removed."
    )

    # --- hosted backend
    anthropic_api_key: str | None = Field(default=None, validation_alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = None
    hosted_model: str = "claude-sonnet-4-5"
    hosted_tool_version: str = "code_execution_20250825"
    hosted_code_tool_version: Literal["code_execution_20260120", "code_execution_20260521"] = Field(
        default="code_execution_20260120", description="The hosted tool version the passthrough requests for code_execution (the REPL)."
    )
    hosted_max_tokens: int = 4096
    hosted_max_retries: int = 3

    config_file: Path | None = Field(default=None, exclude=True)

    @field_validator("auth_tokens", "allowed_origins", "tools", "skills", "images", "allowed_mount_roots", "mounts",
                     "named_mounts", "allow_hosts", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.startswith("["):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, str):
            return json.loads(value)
        return value

    @field_validator("mirrors", mode="before")
    @classmethod
    def _split_pairs(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.lstrip().startswith("{"):
            pairs = [v.strip() for v in value.split(",") if v.strip()]
            if any("=" not in p for p in pairs):
                raise ValueError("mirrors: want HOST=ADDRESS:PORT[,HOST=ADDRESS:PORT...]")
            return dict(p.split("=", 1) for p in pairs)
        if isinstance(value, str):
            return json.loads(value)
        if isinstance(value, list):  # repeated --mirror HOST=ADDRESS:PORT
            return cls._split_pairs(",".join(value))
        return value

    @model_validator(mode="after")
    def _check_egress(self) -> Settings:
        if self.network != "allowlist":
            if self.allow_hosts or self.mirrors:
                raise ValueError('allow_hosts / mirrors are used only with network = "allowlist"')
            return self
        from .egress import EgressError, Policy

        if self.runtime == "runsc":
            raise ValueError(
                'network = "allowlist" is not supported under runsc: this project registers gVisor with '
                "--network=none, so its sandboxes cannot reach the allow-list proxy; use runc"
            )
        if not self.allow_hosts:
            raise ValueError('network = "allowlist" needs allow_hosts (the host names sandboxes may reach)')
        try:
            Policy.from_settings(self.allow_hosts, self.mirrors, self.egress_network)
        except EgressError as exc:
            raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _legacy_tool_alias(self) -> Settings:
        if self.legacy_tool and "code_execution" not in self.tools:
            self.tools = [*self.tools, "code_execution"]
        if not self.tools:
            raise ValueError("tools: publish at least one tool")
        return self

    @model_validator(mode="after")
    def _check_mounts_and_images(self) -> Settings:
        from .mounts import MountError, resolve_all

        if self.mounts:
            try:
                resolve_all(self.mounts, self.allowed_mount_roots, self.data_dir, self.runtime)
            except MountError as exc:
                raise ValueError(str(exc)) from None
        if self.named_mounts or self.named_mount_principals:
            from .mount_choice import check_named

            try:
                check_named(self)
            except MountError as exc:
                raise ValueError(str(exc)) from None
        if self.images and self.image and ":" not in self.image and "/" not in self.image and self.image not in self.images:
            raise ValueError(f"image {self.image!r} is not one of the allowed derived images ({', '.join(self.images)})")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = os.environ.get("MCP_CODEEXEC_CONFIG") or str(default_config_file())
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=path))

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value and value.split("://", 1)[0] not in ("postgres", "postgresql", "sqlite"):
            raise ValueError("database_url: only postgresql://… (or sqlite://, the embedded default) is supported")
        return value or None

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def volumes_dir(self) -> Path:
        return self.data_dir / "volumes"


def load_settings(**overrides: Any) -> Settings:
    """Build settings; ``overrides`` (from CLI flags) win over env and file. ``None`` means unset."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
