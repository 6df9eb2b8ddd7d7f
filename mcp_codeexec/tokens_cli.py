"""``mcp-codeexec tokens add | ls | rm`` — HTTP bearer tokens kept in the store (see tokens.py).

``add PRINCIPAL`` prints a new token once (only its digest is kept); ``ls`` shows ids, principals,
labels and ages, never a token; ``rm ID|PRINCIPAL`` revokes one token, or all of a principal's.
With ``--database-url`` (or ``MCP_CODEEXEC_DATABASE_URL``) the tokens are the replicas' shared ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from .config import Settings
from .containers_cli import _err, _human_duration


def register_cli(subparsers: Any, get_settings: Callable[..., Settings]) -> argparse.ArgumentParser:
    tokens = subparsers.add_parser(
        "tokens",
        help="HTTP bearer tokens for principals, kept in the store (every replica sees them at once)",
        description="Bearer tokens beside `auth_tokens`: added and revoked without restarting the server.",
    )
    sub = tokens.add_subparsers(dest="tokens_command", metavar="COMMAND")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="the server's data directory (default: the configured one)")
        p.add_argument("--database-url", help="the replicas' PostgreSQL database (default: the configured one)")

    p = sub.add_parser("add", help="make a token for PRINCIPAL and print it (once)")
    p.add_argument("principal", metavar="PRINCIPAL")
    p.add_argument("--label", default="", help="a note shown by `ls` (whose laptop, which agent)")
    p.add_argument("--json", action="store_true", help="print {id, principal, token} as JSON")
    common(p)
    p.set_defaults(func=lambda ns: _run(lambda: _add(ns, get_settings)))

    p = sub.add_parser("ls", help="list tokens: id, principal, label, age (never the token)")
    p.add_argument("--json", action="store_true", help="one JSON array")
    common(p)
    p.set_defaults(func=lambda ns: _run(lambda: _ls(ns, get_settings)))

    p = sub.add_parser("rm", help="revoke the token with id ID, or every token of PRINCIPAL")
    p.add_argument("which", metavar="ID|PRINCIPAL")
    common(p)
    p.set_defaults(func=lambda ns: _run(lambda: _rm(ns, get_settings)))
    return tokens


def _run(action: Callable[[], int]) -> int:
    from .tokens import TokenError

    try:
        return action()
    except TokenError as exc:
        _err(str(exc))
        return 2


def _store(ns: argparse.Namespace, get_settings: Callable[..., Settings]) -> Any:
    from .database import open_token_store

    overrides = {k: v for k, v in (("data_dir", ns.data_dir), ("database_url", ns.database_url)) if v}
    return open_token_store(get_settings(**overrides) if overrides else get_settings())


def _add(ns: argparse.Namespace, get_settings: Callable[..., Settings]) -> int:
    token, record = _store(ns, get_settings).add(ns.principal, ns.label)
    if ns.json:
        print(json.dumps({"id": record.id, "principal": record.principal, "token": token}))
    else:
        print(f"made {record.id} for {record.principal}; the token (shown only now):", file=sys.stderr)
        print(token)
    return 0


def _ls(ns: argparse.Namespace, get_settings: Callable[..., Settings]) -> int:
    records = _store(ns, get_settings).list()
    if ns.json:
        print(json.dumps([{"id": r.id, "principal": r.principal, "label": r.label, "created": r.created} for r in records]))
        return 0
    if not records:
        print("no stored tokens (tokens in the configuration's auth_tokens are not listed)", file=sys.stderr)
        return 0
    print(f"{'ID':<17} {'PRINCIPAL':<24} {'AGE':>8}  LABEL")
    for r in records:
        print(f"{r.id:<17} {r.principal:<24} {_human_duration(time.time() - r.created):>8}  {r.label}")
    return 0


def _rm(ns: argparse.Namespace, get_settings: Callable[..., Settings]) -> int:
    removed = _store(ns, get_settings).revoke(ns.which)
    if not removed:
        _err(f"no stored token has id or principal {ns.which!r}")
        return 1
    print(f"revoked {removed} token(s); every server refuses them within a few seconds", file=sys.stderr)
    return 0
