"""The one-line-per-function listing shown in the ``code_execution`` tool description."""

from __future__ import annotations

from typing import Any

from ..backends.base import ToolFunction

MAX_LINE = 240


def _type_of(schema: Any) -> str:
    if not isinstance(schema, dict):
        return "any"
    kind = schema.get("type")
    if isinstance(kind, list):
        return "|".join(str(k) for k in kind)
    if kind == "array":
        return f"array[{_type_of(schema.get('items'))}]"
    if kind:
        return str(kind)
    if "enum" in schema:
        return "|".join(repr(v) for v in schema["enum"][:5])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return "|".join(_type_of(s) for s in schema[key][:4])
    return "any"


def signature(function: ToolFunction) -> str:
    """``name({city: string, days?: integer})``: the argument keys, ``?`` marking optional ones."""
    schema = function.input_schema or {}
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = set(schema.get("required") or [])
    args = ", ".join(f"{k}{'' if k in required else '?'}: {_type_of(v)}" for k, v in props.items())
    return f"{function.name}({{{args}}})"


def render_listing(functions: list[ToolFunction]) -> str:
    """One line per function: ``- await name({...}) -> str: description`` (capped in length)."""
    lines = []
    for function in sorted(functions, key=lambda f: f.name):
        line = f"- await {signature(function)} -> str"
        if function.description:
            line += f": {function.description}"
        lines.append(line if len(line) <= MAX_LINE else line[: MAX_LINE - 1] + "…")
    return "\n".join(lines)
