"""The tools config: upstream MCP servers in Claude Desktop's ``mcpServers`` JSON format.

    {
      "mcpServers": {
        "weather": {"command": "uvx", "args": ["weather-mcp"], "env": {"API_KEY": "${WEATHER_KEY}"},
                    "allowed_tools": ["get_forecast"]},
        "issues":  {"url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"},
                    "principals": ["alice"]}
      }
    }

A server is stdio (``command``, ``args``, ``env``, ``cwd``) or streamable HTTP (``url``,
``headers``); ``type`` (``stdio`` / ``http`` / ``streamable-http``) may say which, as in Claude
Code's ``.mcp.json``. Additions of this project, beside them:

* ``allowed_tools``: the tool names the sandbox code may call (default: all the server lists);
* ``principals``: the HTTP token holders that may call them (default: all). The ``local``
  principal (stdio, ``--no-auth``, the Python API) is the operator and sees every server;
* ``disabled: true`` skips a server.

``${VAR}`` in ``env``, ``headers``, ``url`` and ``args`` values is replaced by the server's own
environment variable when the file is loaded, so secrets need not be written in the file. The
values of ``env`` and ``headers`` go to the upstream only; every text this package shows (logs,
errors, results) has the credentials among them redacted (``Redactor``: every header value, and
env or ``${VAR}`` values whose name or shape says credential, see ``secretish``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NOT_IDENT = re.compile(r"[^0-9A-Za-z_]")


class ToolsConfigError(ValueError):
    """The tools config file cannot be used (the server refuses to start)."""


def principal_allowed(principal: str, principals: list[str] | None) -> bool:
    """The per-principal rule of ``principals`` lists (upstreams here, named mounts in
    mount_choice.py): ``local`` (the operator) always; others when the list is absent or names them."""
    return principal == "local" or principals is None or principal in principals


class ServerConfig(BaseModel):
    """One entry of ``mcpServers``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["stdio", "http", "streamable-http", "streamable_http"] | None = None
    command: str | None = None
    args: list[str] = Field(default_factory=list, repr=False)
    env: dict[str, str] = Field(default_factory=dict, repr=False)
    cwd: str | None = None
    url: str | None = Field(default=None, repr=False)
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    allowed_tools: list[str] | None = None
    principals: list[str] | None = None
    disabled: bool = False

    @field_validator("allowed_tools", "principals")
    @classmethod
    def _no_empty_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not v.strip() for v in value):
            raise ValueError("names must be non-empty")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> ServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of `command` (stdio) or `url` (streamable HTTP)")
        if self.type == "stdio" and self.command is None:
            raise ValueError("type stdio needs `command`")
        if self.type not in (None, "stdio") and self.url is None:
            raise ValueError(f"type {self.type} needs `url`")
        if self.url is not None and not re.match(r"https?://", self.url):
            raise ValueError("url must be http:// or https:// (SSE and other transports are not supported)")
        if self.command is not None and (self.headers):
            raise ValueError("`headers` apply to url servers only")
        if self.url is not None and (self.env or self.args or self.cwd):
            raise ValueError("`env`, `args` and `cwd` apply to command servers only")
        return self

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.command is not None else "http"

    def secrets(self) -> list[str]:
        """Values that must never be shown: header values, credential-like env values (see
        ``secretish``), the URL's userinfo and query."""
        values = [v for k, v in self.env.items() if secretish(k, v)] + list(self.headers.values())
        for value in self.headers.values():  # "Bearer abc" → also "abc"
            values.extend(value.split()[1:])
        if self.url:
            m = re.match(r"https?://([^/@]+)@", self.url)
            if m:
                values.extend([m.group(1), *m.group(1).split(":", 1)])
            if "?" in self.url:
                values.append(self.url.split("?", 1)[1])
        return [v for v in values if len(v) >= 4]

    def allows(self, principal: str) -> bool:
        return principal_allowed(principal, self.principals)

    def display_url(self) -> str | None:
        """The URL without userinfo and query, for messages."""
        if self.url is None:
            return None
        url = re.sub(r"(https?://)[^/@]+@", r"\1", self.url)
        return url.split("?", 1)[0]


@dataclass(frozen=True)
class ToolsConfig:
    servers: dict[str, ServerConfig] = field(default_factory=dict)
    source: str = "<none>"
    expanded: tuple[str, ...] = field(default=(), repr=False)
    """Values substituted for ``${VAR}``: secrets too, wherever they were used."""

    def redactor(self) -> Redactor:
        values = [s for server in self.servers.values() for s in server.secrets()]
        return Redactor(values + list(self.expanded))


class Redactor:
    """Replaces every configured credential in a text by ``[redacted]``."""

    def __init__(self, secrets: list[str]) -> None:
        self._secrets = sorted(set(secrets), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text


_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASS|AUTH|CRED|COOKIE|SESSION|PRIVATE|PAT\b|CERT", re.IGNORECASE)


def secretish(name: str, value: str) -> bool:
    """Whether an env value is treated as a credential: its name says so (``API_KEY``, ``*_TOKEN``,
    ``PASSWORD``...), or it looks like a token (20+ characters, no space or ``/``). Other values
    (``DEBUG=true``, paths) are not redacted, so results that contain them stay intact."""
    if len(value) < 4:
        return False
    return bool(_SECRET_NAME.search(name)) or (len(value) >= 20 and not re.search(r"[\s/]", value))


def identifier(name: str) -> str:
    """``name`` with every character not valid in a Python identifier replaced by ``_``
    (and a leading ``_`` when it would start with a digit)."""
    out = _NOT_IDENT.sub("_", name)
    return f"_{out}" if not out or out[0].isdigit() else out


def function_name(server: str, tool: str) -> str:
    """The sandbox-side name of an upstream tool: ``<server>__<tool>``."""
    return identifier(f"{server}__{tool}")


def _expand(value: str, environ: dict[str, str], where: str, used: list[str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in environ:
            if secretish(name, environ[name]):
                used.append(environ[name])
            return environ[name]
        if default is not None:
            return default
        raise ToolsConfigError(f"{where} refers to ${{{name}}}, which is not set in the environment")

    return _VAR.sub(sub, value)


def parse_tools_config(data: Any, *, source: str = "<data>", environ: dict[str, str] | None = None) -> ToolsConfig:
    """The config from its JSON value (``{"mcpServers": {...}}``); raises ``ToolsConfigError``."""
    env = dict(os.environ if environ is None else environ)
    if not isinstance(data, dict) or not isinstance(data.get("mcpServers"), dict):
        raise ToolsConfigError(f"{source}: expected an object with an `mcpServers` object")
    unknown = set(data) - {"mcpServers"}
    if unknown:
        raise ToolsConfigError(f"{source}: unknown top-level keys {sorted(unknown)}")
    servers: dict[str, ServerConfig] = {}
    seen: dict[str, str] = {}
    used: list[str] = []
    for name, raw in data["mcpServers"].items():
        where = f"{source}: mcpServers.{name}"
        if not name or not isinstance(raw, dict):
            raise ToolsConfigError(f"{where}: expected a non-empty name and an object")
        if raw.get("disabled") is True:
            continue  # not checked: it may name variables only set where it is enabled
        raw = dict(raw)
        for key in ("env", "headers"):
            if isinstance(raw.get(key), dict):
                raw[key] = {k: _expand(str(v), env, f"{where}.{key}.{k}", used) for k, v in raw[key].items()}
        if isinstance(raw.get("url"), str):
            raw["url"] = _expand(raw["url"], env, f"{where}.url", used)
        if isinstance(raw.get("args"), list):
            raw["args"] = [_expand(str(a), env, f"{where}.args", used) for a in raw["args"]]
        try:
            server = ServerConfig.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors(include_input=False)
            )
            raise ToolsConfigError(f"{where}: {problems}") from None
        if server.disabled:
            continue
        prefix = identifier(name)
        if prefix in seen:
            raise ToolsConfigError(
                f"{source}: servers {seen[prefix]!r} and {name!r} both become `{prefix}__…` in the sandbox; rename one"
            )
        seen[prefix] = name
        servers[name] = server
    return ToolsConfig(servers, source, tuple(used))


def load_tools_config(path: str | Path | None) -> ToolsConfig:
    """Read the file at ``path`` (``None``: no upstream servers)."""
    if path is None:
        return ToolsConfig()
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ToolsConfigError(f"tools config {p} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ToolsConfigError(f"tools config {p} cannot be read as JSON: {exc}") from None
    return parse_tools_config(data, source=str(p))

