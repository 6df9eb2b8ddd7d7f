"""Named mounts: MCP clients choose among host folders the operator declared (issue 17 item 1).

The operator declares ``named_mounts = ["NAME=HOST[:SANDBOX_PATH][:ro|rw]", ...]`` (TOML, or
``MCP_CODEEXEC_NAMED_MOUNTS`` comma-separated), checked at start-up exactly like ``mounts``
(inside ``allowed_mount_roots``, never ``/``, /proc, the Docker socket, the data dir, ...). A
client selects some by name in the tool call's request ``_meta``::

    {"_meta": {"io.mcp-codeexec/mounts": ["src", "data"]}}

on the call that creates its session's sandbox; the chosen folders are added to the operator's
``mounts`` for that sandbox and fixed for its lifetime (recorded with it, as all mounts are). A
client never sends a host path, only a name; an unknown name is ``invalid_tool_input`` naming the
declared ones, and a later call naming folders its existing sandbox was not made with is refused
the same way, never a silent change. Without the key nothing changes: the hosted tools' inputs stay
exactly hosted (the selection is request metadata, not an argument).

Per principal (HTTP token holders), ``named_mount_principals = {src = ["alice"]}`` limits who may
choose a mount, with the rule of an upstream's ``principals`` (``tools.config.principal_allowed``):
a mount not listed there is everyone's, the ``local`` principal (stdio, ``--no-auth``, the Python
API) may choose all. To a principal, a mount it may not choose does not exist: naming one is
``invalid_tool_input`` listing only the names it may choose (never another principal's names or
any host path), worded alike whether the name is declared for someone else or not at all.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import InvalidToolInput
from .mounts import MountError, ResolvedMount, resolve_all
from .tools.config import principal_allowed

META_KEY = "io.mcp-codeexec/mounts"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def parse_named(specs: list[str]) -> dict[str, str]:
    """``{name: HOST[:SANDBOX_PATH][:ro|rw]}``; MountError for a malformed or repeated name."""
    found: dict[str, str] = {}
    for text in specs:
        name, sep, spec = text.partition("=")
        name = name.strip()
        if not sep or not NAME.fullmatch(name) or not spec.strip():
            raise MountError(f"named mount {text!r}: expected NAME=HOST[:SANDBOX_PATH][:ro|rw] (NAME: letters, digits, _ . -)")
        if name in found:
            raise MountError(f"named mounts: {name!r} is declared twice")
        found[name] = spec.strip()
    return found


def check_named(settings: Any) -> None:
    """Config time: each named mount is valid, and valid beside the operator's ``mounts``."""
    for name, spec in parse_named(settings.named_mounts).items():
        try:
            resolve_all([*settings.mounts, spec], settings.allowed_mount_roots, settings.data_dir, settings.runtime)
        except MountError as exc:
            raise MountError(f"named mount {name!r}: {exc}") from None
    declared = parse_named(settings.named_mounts)
    for name, principals in settings.named_mount_principals.items():
        if name not in declared:
            raise MountError(f"named_mount_principals: {name!r} is not one of the named_mounts")
        if any(not p.strip() for p in principals):
            raise MountError(f"named_mount_principals[{name!r}]: principal names must be non-empty")


def available(settings: Any, principal: str) -> dict[str, str]:
    """The named mounts ``principal`` may see and choose: ``{name: spec}``."""
    limits = settings.named_mount_principals
    return {name: spec for name, spec in parse_named(settings.named_mounts).items()
            if principal_allowed(principal, limits.get(name))}


def raw_selection(meta: Any) -> Any:
    """What a request's ``_meta`` says under META_KEY (checked later, where errors become results)."""
    return meta.get(META_KEY) if isinstance(meta, dict) else None


def selection(value: Any) -> tuple[str, ...] | None:
    """The names ``raw_selection`` found; None when nothing is selected."""
    if value in (None, [], ""):
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidToolInput(f"_meta[{META_KEY!r}] must be a list of mount names")
    return tuple(dict.fromkeys(value))


def resolve_selected(settings: Any, names: tuple[str, ...], principal: str = "local") -> list[ResolvedMount]:
    """The checked mounts ``names`` select for ``principal`` (resolved now, on the host)."""
    declared = available(settings, principal)
    unknown = [n for n in names if n not in declared]
    if unknown:
        offered = ", ".join(sorted(declared)) or "none"
        whose = "" if principal == "local" else f" for principal {principal!r}"
        raise InvalidToolInput(f"unknown mount name(s) {', '.join(map(repr, unknown))}: the operator declared {offered}{whose}")
    try:
        both = resolve_all([*settings.mounts, *(declared[n] for n in names)], settings.allowed_mount_roots,
                           settings.data_dir, settings.runtime)
    except MountError as exc:
        raise InvalidToolInput(f"mounts {', '.join(names)}: {exc}") from None
    return both[len(settings.mounts):]


def matches(settings: Any, have_encoded: str, value: Any, principal: str = "local") -> bool:
    """Whether a sandbox made with ``have_encoded`` mounts has every folder ``value`` selects
    (an unknown or malformed selection answers True: the call that uses it reports the error)."""
    try:
        check_existing(settings, have_encoded, value, "", principal)
    except InvalidToolInput as exc:
        return "created without" not in str(exc)
    return True


def check_existing(settings: Any, have_encoded: str, value: Any, cid: str, principal: str = "local") -> None:
    """An existing sandbox keeps the folders it was made with: selecting others is refused."""
    from .mounts import decode

    names = selection(value)
    if names is None:
        return
    wanted = resolve_selected(settings, names, principal)
    have = decode(have_encoded)
    missing = [n for n, m in zip(names, wanted) if m not in have]
    if missing:
        raise InvalidToolInput(
            f"container {cid} was created without the mount(s) {', '.join(missing)}; a container's mounts are fixed "
            "when it is created. Select them on the first call of a new session."
        )
