"""Host Python functions as tools the sandbox code may call (``Sandbox(tools={...})``).

    def add(a: int, b: int = 0) -> int:
        "Add two integers."
        return a + b

    tools = code_tools_from_callables({"add": add})
    # in the sandbox:  await add({"a": 2, "b": 3})  → "5"

The input schema comes from the signature via pydantic: each parameter is a key of the one dict
the code passes (a function with a single parameter annotated with a pydantic model or TypedDict
receives that object instead, and one annotated ``dict`` receives the dict as is). Arguments are
validated (and coerced the pydantic way) before the function runs; a sync function runs in a
worker thread. The result: a ``str`` as is, ``None`` as ``""``, anything else as JSON. An
exception in the function is an error result ``"TypeName: message"`` raised inside the code.
"""

from __future__ import annotations

import inspect
import json
import keyword
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, get_origin, get_type_hints, is_typeddict

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model
from pydantic_core import to_jsonable_python

from ..backends.base import HOST_TIMEOUT_MARGIN, CodeTools, ToolFunction


@dataclass(frozen=True)
class _Callable:
    function: ToolFunction
    fn: Callable[..., Any]
    adapter: TypeAdapter[Any]
    mode: str
    """``"kwargs"``: call ``fn(**validated)``; ``"single"``: call ``fn(validated)``."""


def _first_line(fn: Callable[..., Any]) -> str:
    doc = (inspect.getdoc(fn) or "").strip().splitlines()
    return doc[0][:200] if doc else ""


def _describe(name: str, fn: Callable[..., Any]) -> _Callable:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"tool name {name!r} is not a Python identifier")
    if not callable(fn):
        raise TypeError(f"tool {name!r} is not callable")
    signature = inspect.signature(fn)
    try:
        hints = get_type_hints(fn)
    except (NameError, TypeError):
        hints = {}
    params = [p for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL,)]
    positional = [p for p in params if p.kind is not p.VAR_KEYWORD]
    if len(positional) == 1:
        annotation = hints.get(positional[0].name, positional[0].annotation)
        if (inspect.isclass(annotation) and issubclass(annotation, BaseModel)) or is_typeddict(annotation):
            adapter: TypeAdapter[Any] = TypeAdapter(annotation)
            return _Callable(_function(name, fn, adapter, hints), fn, adapter, "single")
        if annotation is dict or get_origin(annotation) is dict:
            adapter = TypeAdapter(dict[str, Any])
            return _Callable(_function(name, fn, adapter, hints), fn, adapter, "single")
    fields: dict[str, Any] = {}
    for p in positional:
        if p.kind is p.POSITIONAL_ONLY:
            raise TypeError(f"tool {name!r}: positional-only parameter {p.name!r} cannot come from a dict")
        annotation = hints.get(p.name, p.annotation)
        annotation = Any if annotation is inspect.Parameter.empty else annotation
        fields[p.name] = (annotation, ... if p.default is inspect.Parameter.empty else p.default)
    extra = "allow" if any(p.kind is p.VAR_KEYWORD for p in params) else "forbid"
    model = create_model(f"{name}_input", __config__=ConfigDict(extra=extra), **fields)
    adapter = TypeAdapter(model)
    return _Callable(_function(name, fn, adapter, hints), fn, adapter, "kwargs")


def _function(name: str, fn: Callable[..., Any], adapter: TypeAdapter[Any], hints: dict[str, Any]) -> ToolFunction:
    schema = adapter.json_schema()
    schema.pop("title", None)
    output: dict[str, Any] | None = None
    returns = hints.get("return", inspect.Parameter.empty)
    if returns not in (inspect.Parameter.empty, str, None, type(None), Any):
        try:
            output = TypeAdapter(returns).json_schema()
        except (TypeError, ValueError):  # pydantic cannot describe it: no output schema
            output = None
    return ToolFunction(name, _first_line(fn), schema, output)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(to_jsonable_python(value), ensure_ascii=False)


def code_tools_from_callables(
    tools: Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]],
    *,
    max_in_flight: int = 16,
    pending_timeout: float = 270.0,
) -> CodeTools:
    """``{name: function}`` (or functions, named by ``__name__``) as ``CodeTools``."""
    items = tools.items() if isinstance(tools, Mapping) else ((fn.__name__, fn) for fn in tools)
    described = {name: _describe(name, fn) for name, fn in items}

    async def call(name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        entry = described.get(name)
        if entry is None:
            return f"no tool function named {name!r}", True
        if not isinstance(arguments, dict):
            return f"{name} takes one dict argument, got {type(arguments).__name__}", True
        try:
            validated = entry.adapter.validate_python(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            return f"invalid arguments for {name}: {problems}", True
        if entry.mode == "kwargs":
            kwargs = dict(validated)
            args: tuple[Any, ...] = ()
        else:
            kwargs, args = {}, (validated,)
        try:
            with anyio.fail_after(pending_timeout + HOST_TIMEOUT_MARGIN):
                if inspect.iscoroutinefunction(entry.fn) or inspect.iscoroutinefunction(type(entry.fn).__call__):
                    value = await entry.fn(*args, **kwargs)
                else:
                    value = await anyio.to_thread.run_sync(lambda: entry.fn(*args, **kwargs), abandon_on_cancel=True)
                    if inspect.isawaitable(value):
                        value = await value
        except TimeoutError:
            return f"{name} did not return within {pending_timeout + HOST_TIMEOUT_MARGIN:g}s", True
        except Exception as exc:  # noqa: BLE001 - the user's function failed: the code sees it as an error
            return f"{type(exc).__name__}: {exc}", True
        return _as_text(value), False

    return CodeTools(
        functions=[d.function for d in described.values()],
        call=call,
        max_in_flight=max_in_flight,
        pending_timeout=pending_timeout,
    )



def combine_code_tools(*sets: CodeTools | None) -> CodeTools | None:
    """Several ``CodeTools`` as one: a later set's function wins over an earlier one of the same
    name; the limits are the strictest of the sets."""
    present = [s for s in sets if s is not None]
    if len(present) <= 1:
        return present[0] if present else None
    owner: dict[str, CodeTools] = {}
    functions: dict[str, ToolFunction] = {}
    for tools in present:
        for function in tools.functions:
            owner[function.name] = tools
            functions[function.name] = function

    async def call(name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        tools = owner.get(name)
        if tools is None:
            return f"no tool function named {name!r}", True
        return await tools.call(name, arguments)

    return CodeTools(
        functions=list(functions.values()),
        call=call,
        max_in_flight=min(t.max_in_flight for t in present),
        pending_timeout=min(t.pending_timeout for t in present),
    )
