"""``mcp-codeexec config``: every effective setting and where its value comes from.

Sources, highest first (as ``config.Settings`` applies them): a command-line flag, an environment
variable (``MCP_CODEEXEC_*``, ``ANTHROPIC_API_KEY``), the TOML file (``MCP_CODEEXEC_CONFIG`` or
``~/.config/mcp-codeexec/config.toml``), the default. The attribution asks each source for its
own values, the way pydantic-settings does, and takes the first that has the field. Secrets (API
key, bearer tokens) are never printed.

``mcp-codeexec config`` takes the same flags as ``serve``: it shows what ``serve`` with those flags
would run with.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import EnvSettingsSource, TomlConfigSettingsSource

from .config import Settings, default_config_file

SECRETS = {"anthropic_api_key", "auth_tokens", "database_url"}  # a database URL may carry its password


def config_file_path() -> Path:
    return Path(os.environ.get("MCP_CODEEXEC_CONFIG") or default_config_file())


def _field_of(key: str) -> str | None:
    """Map a source's key (field name or validation alias) to the field name."""
    for name, info in Settings.model_fields.items():
        if key == name or key == info.validation_alias:
            return name
    return None


def _env_var(name: str) -> str:
    alias = Settings.model_fields[name].validation_alias
    return alias if isinstance(alias, str) else f"MCP_CODEEXEC_{name.upper()}"


def source_values() -> tuple[dict[str, Any], dict[str, Any]]:
    """(env values, TOML values), each keyed by field name, as the settings sources see them."""
    env = {}
    for key, value in EnvSettingsSource(Settings)().items():
        if (name := _field_of(key)) is not None:
            env[name] = value
    toml: dict[str, Any] = {}
    path = config_file_path()
    if path.is_file():
        for key, value in TomlConfigSettingsSource(Settings, toml_file=path)().items():
            if (name := _field_of(key)) is not None:
                toml[name] = value
    return env, toml


def attribute(flags: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """field -> (source, detail) for every field: ``flag``, ``env``, ``toml`` or ``default``."""
    env, toml = source_values()
    path = config_file_path()
    out = {}
    for name in Settings.model_fields:
        if name in flags:
            out[name] = ("flag", "command line")
        elif name in env:
            out[name] = ("env", _env_var(name))
        elif name in toml:
            out[name] = ("toml", str(path))
        else:
            out[name] = ("default", "")
    return out


def mask(name: str, value: Any) -> Any:
    if name not in SECRETS or not value:
        return value
    if isinstance(value, list):
        return [f"{v.partition(':')[0]}:<hidden>" if ":" in v else "<hidden>" for v in value]
    return f"<hidden, {len(str(value))} characters>"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    return value


def settings_and_flags(args: argparse.Namespace) -> tuple[Settings, dict[str, Any]]:
    """What ``serve`` would build from ``args`` (``cli._settings_from``), and the overrides its flags
    passed to ``load_settings`` (the "flag" source)."""
    from . import cli

    flags: dict[str, Any] = {}
    real_load = cli.load_settings

    def recording_load(**overrides: Any) -> Settings:
        flags.update({k: v for k, v in overrides.items() if v is not None})
        return real_load(**overrides)

    cli.load_settings = recording_load  # type: ignore[assignment]
    try:
        return cli._settings_from(args), flags
    finally:
        cli.load_settings = real_load  # type: ignore[assignment]


def _given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """Best effort when validation failed before the overrides were seen: the flags' dests that
    name a settings field directly (``--runtime``, ``--pool-size``, ...) or through ``serve``'s
    renames (``--timeout``, ``--base-url``, ``--model``)."""
    renames = {"timeout": "call_timeout", "base_url": "anthropic_base_url", "model": "hosted_model"}
    given = {}
    for dest, value in vars(args).items():
        name = renames.get(dest, dest)
        if name in Settings.model_fields and value not in (None, False):
            given[name] = value
    return given


def _invalid(exc: ValidationError, sources: dict[str, tuple[str, str]]) -> int:
    print("mcp-codeexec: invalid configuration:", file=sys.stderr)
    for error in exc.errors():
        loc = str(error["loc"][0]) if error["loc"] else ""
        name = _field_of(loc) or loc
        source, detail = sources.get(name, ("?", ""))
        print(f"  {name}: {error['msg']} (from {source}{': ' + detail if detail else ''})", file=sys.stderr)
    return 2


def cmd_config(args: argparse.Namespace, get_settings: Callable[[], Settings]) -> int:
    path = config_file_path()
    flags: dict[str, Any] = {}
    try:
        settings, flags = settings_and_flags(args)
        sources = attribute(flags)
    except ValidationError as exc:
        return _invalid(exc, attribute(_given_flags(args)))
    except tomllib.TOMLDecodeError as exc:
        print(f"mcp-codeexec: {path} is not valid TOML: {exc}", file=sys.stderr)
        return 2
    rows = []
    for name in Settings.model_fields:
        if Settings.model_fields[name].exclude:
            continue
        value = mask(name, getattr(settings, name))
        source, detail = sources[name]
        rows.append((name, _jsonable(value), source, detail))
    if args.json:
        print(json.dumps({
            "config_file": {"path": str(path), "exists": path.is_file()},
            "settings": {n: {"value": v, "source": s, "detail": d or None} for n, v, s, d in rows},
        }, indent=2, default=str))
        return 0
    print(f"config file: {path} ({'found' if path.is_file() else 'not found'})")
    shown = [(n, "-" if v is None else json.dumps(v) if isinstance(v, (list, bool)) else str(v), s, d) for n, v, s, d in rows]
    widths = [max(len(r[i]) for r in shown) for i in range(2)]
    for name, value, source, detail in shown:
        print(f"{name:<{widths[0]}}  {value:<{widths[1]}}  {source}{' (' + detail + ')' if detail and source != 'toml' else ''}")
    return 0


def register_cli(subparsers: Any, get_settings: Callable[[], Settings]) -> argparse.ArgumentParser:
    from .cli import _add_server_flags

    p = subparsers.add_parser(
        "config", help="print the effective settings and where each comes from (flag/env/toml/default)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--transport", choices=["stdio", "http"], help=argparse.SUPPRESS)
    p.add_argument("--host", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--no-auth", action="store_true", help=argparse.SUPPRESS)
    _add_server_flags(p)
    p.set_defaults(func=lambda ns: cmd_config(ns, get_settings))
    return p


__all__ = ["attribute", "mask", "register_cli"]
