"""An Anthropic Messages API adapter: the hosted code-execution tools as client tools, run locally.

    import anthropic
    from mcp_codeexec import Sandbox
    from mcp_codeexec.anthropic_tools import tool_definitions, tool_results

    client = anthropic.AsyncAnthropic()
    async with Sandbox() as sb:
        messages = [{"role": "user", "content": "What is 2**100? Use bash."}]
        while True:
            reply = await client.messages.create(model=..., max_tokens=2048, tools=tool_definitions(),
                                                 messages=messages)
            messages.append({"role": "assistant", "content": reply.content})
            if reply.stop_reason != "tool_use":
                break
            messages.append({"role": "user", "content": await tool_results(sb, reply)})

The model sees ``bash_code_execution``, ``text_editor_code_execution`` and ``code_execution`` (a
persistent Python interpreter: variables survive between tool_use blocks) with the hosted inputs;
each ``tool_result`` carries the hosted result block (``bash_code_execution_result``,
``code_execution_result``, ...) as JSON text, so the conversation has the hosted tool's shape while
the code runs in local containers.

**Programmatic tool calling, locally** (``run_ptc_loop``): the user's tools that carry
``allowed_callers: ["code_execution_20260120"]`` (or ``_20260521``) are not sent to the API as
tools; they become async functions in the sandbox's Python REPL, listed in the description of a
``code_execution`` client tool that this adapter adds. The model's ``code_execution`` call runs
in the sandbox; each function call the code makes is executed here, on the host, by the tool's
Python implementation, and only the cell's output goes back to the model — the intermediate
results never enter its context, and the calls never appear as ``tool_use`` turns. A tool that
also allows ``"direct"`` stays an ordinary tool as well.

    reply = await run_ptc_loop(client, sb, model=..., messages=[...], tools=[weather_tool, ...],
                               implementations={"get_weather": get_weather})

Skills: pass the request's ``container`` param (``{"id"?, "skills": [{"type", "skill_id",
"version"?}]}``) to ``sandbox_for_container`` to get a ``Sandbox`` with those skills at
``/skills/<name>/``; ``container_of(sandbox)`` is the response's ``container`` (``id``,
``expires_at``, ``skills`` as ``{skill_id, type, version}``), the way the hosted response echoes it.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from jsonschema import SchemaError
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for
from pydantic_core import to_jsonable_python

from .backends.base import CodeTools, ToolFunction
from .config import Settings, load_settings
from .errors import CodeExecError, error_block
from .schemas import CodeInput

BASH = "bash_code_execution"
EDITOR = "text_editor_code_execution"
CODE = "code_execution"
TOOL_NAMES = (BASH, EDITOR, CODE)


def tool_definitions(settings: Settings | None = None) -> list[dict[str, Any]]:
    """The published tools (by default ``bash_code_execution``, ``text_editor_code_execution`` and
    ``code_execution``, the persistent Python REPL) as Messages API client tool params:
    ``{"name", "description", "input_schema"}``.

    The schemas are the MCP server's, minus ``container_id``: the sandbox a tool_use runs in is
    the one given to ``run_tool_use``.
    """
    from .server import tool_definitions as mcp_tools

    definitions = []
    for tool in mcp_tools(settings or load_settings()):
        schema = json.loads(json.dumps(tool.input_schema))
        schema.get("properties", {}).pop("container_id", None)
        definitions.append({"name": tool.name, "description": tool.description, "input_schema": schema})
    return definitions


def _field(block: Any, name: str) -> Any:
    return block.get(name) if isinstance(block, dict) else getattr(block, name, None)


async def run_tool_use(sandbox: Any, block: Any) -> dict[str, Any]:
    """Run one ``tool_use`` block (an SDK ``ToolUseBlock`` or its dict form) in ``sandbox`` (an
    ``api.Sandbox``); return the matching ``tool_result`` content block param."""
    tool_use_id = _field(block, "id")
    name = _field(block, "name")
    arguments = _field(block, "input")
    if name not in TOOL_NAMES:
        return {
            "type": "tool_result",
            "tool_use_id": tool_use_id,
            "content": [{"type": "text", "text": f"unknown tool {name!r}; available: {', '.join(TOOL_NAMES)}"}],
            "is_error": True,
        }
    if not isinstance(arguments, dict):
        arguments = {"__input__": arguments}  # fails validation: answered as invalid_tool_input
    result = await sandbox.call_tool(name, arguments)
    payload = result.model_dump(mode="json", exclude_none=True)
    return {
        "type": "tool_result",
        "tool_use_id": tool_use_id,
        "content": [{"type": "text", "text": json.dumps(payload, ensure_ascii=False)}],
        "is_error": payload["type"].endswith("_tool_result_error"),
    }


def sandbox_for_container(container: dict[str, Any] | str | None = None, **kwargs: Any) -> Any:
    """An ``api.Sandbox`` for a Messages request's ``container`` param: its ``id`` (a string or
    ``{"id": ...}``) attaches to that container; its ``skills`` are loaded into a new one."""
    from .api import Sandbox

    if isinstance(container, str):
        return Sandbox(container_id=container, **kwargs)
    container = container or {}
    skills = container.get("skills")
    return Sandbox(container_id=container.get("id"), skills=list(skills) if skills is not None else None, **kwargs)


def container_of(sandbox: Any) -> dict[str, Any] | None:
    """The hosted response's ``container`` for ``sandbox`` (SDK ``BetaContainer``), after a call."""
    outcome = sandbox.last_outcome
    info = outcome.container if outcome is not None else None
    if info is None:
        return None
    meta = info.meta()
    return {"id": meta["id"], "expires_at": meta["expires_at"], "skills": meta.get("skills", [])}


async def tool_results(sandbox: Any, message: Any) -> list[dict[str, Any]]:
    """Every ``tool_use`` block of an assistant ``message`` run in order: the next user turn's content."""
    content = _field(message, "content") or []
    return [await run_tool_use(sandbox, block) for block in content if _field(block, "type") == "tool_use"]


# --- programmatic tool calling, run locally ---------------------------------------------------------

CODE_TOOL = "code_execution"
PTC_CALLERS = frozenset({"code_execution_20260120", "code_execution_20260521"})
"""``allowed_callers`` values that make a tool callable from code (interchangeable, as hosted)."""
CODE_TOOL_TYPES = PTC_CALLERS | {"code_execution_20250825", "code_execution_20250522"}

CODE_TOOL_DESCRIPTION = (
    "Run Python code in a persistent sandboxed REPL (variables persist between calls). "
    "Top-level `await` works. The functions below are predefined: each is async, takes one dict "
    "and returns a string (parse JSON results with json.loads); run several at once with "
    "asyncio.gather. Only what the code prints comes back to you, so filter and summarise there."
)


def _get(tool: Any, key: str) -> Any:
    if isinstance(tool, Mapping):
        return tool.get(key)
    return getattr(tool, key, None)


def _definition(tool: Any) -> dict[str, Any]:
    """A tool as its Messages API param dict (dicts as they are, SDK function tools via ``to_dict``)."""
    if isinstance(tool, Mapping):
        return dict(tool)
    to_dict = getattr(tool, "to_dict", None)
    if to_dict is None:
        raise TypeError(f"not a tool definition: {tool!r}")
    return dict(to_dict())


def code_callable(definition: Mapping[str, Any]) -> bool:
    return bool(PTC_CALLERS & set(definition.get("allowed_callers") or []))


def direct_callable(definition: Mapping[str, Any]) -> bool:
    callers = definition.get("allowed_callers")
    return callers is None or "direct" in callers


def _result_text(value: Any) -> str:
    """A tool implementation's return value as the text the code (or the model) receives."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(_get(b, "type") == "text" for b in value):
        return "".join(str(_get(b, "text")) for b in value)  # the SDK's list-of-text-blocks form
    return json.dumps(to_jsonable_python(value), ensure_ascii=False)


@dataclass
class _Implementation:
    definition: dict[str, Any]
    run: Callable[[dict[str, Any]], Any]
    validator: Any | None

    async def __call__(self, arguments: dict[str, Any]) -> tuple[str, bool]:
        if self.validator is not None:
            errors = list(self.validator.iter_errors(arguments))
            if errors:
                best = best_match(errors)
                where = "/".join(str(p) for p in best.absolute_path)
                return f"invalid arguments for {self.definition['name']}: {best.message}{f' at {where}' if where else ''}", True
        try:
            value = self.run(arguments)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:  # noqa: BLE001 - the user's tool failed: its caller sees an error result
            return f"{type(exc).__name__}: {exc}", True
        return _result_text(value), False


def _implementation(definition: dict[str, Any], tool: Any, fn: Callable[..., Any] | None) -> _Implementation:
    name = definition["name"]
    if fn is not None:
        if inspect.iscoroutinefunction(fn):
            async def run(arguments: dict[str, Any]) -> Any:
                return await fn(**arguments)
        else:
            async def run(arguments: dict[str, Any]) -> Any:
                return await anyio.to_thread.run_sync(lambda: fn(**arguments))
    elif callable(getattr(tool, "call", None)):  # an SDK @beta_tool / @beta_async_tool
        call = tool.call
        if inspect.iscoroutinefunction(call):
            async def run(arguments: dict[str, Any]) -> Any:
                return await call(arguments)
        else:
            async def run(arguments: dict[str, Any]) -> Any:
                return await anyio.to_thread.run_sync(lambda: call(arguments))
    else:
        raise ValueError(f"tool {name!r} has no implementation: pass implementations={{{name!r}: fn}}")
    schema = definition.get("input_schema") or {"type": "object"}
    try:
        cls = validator_for(schema)
        cls.check_schema(schema)
        validator = cls(schema)
    except SchemaError as exc:
        raise ValueError(f"tool {name!r} has an invalid input_schema: {exc.message}") from None
    return _Implementation(definition, run, validator)


@dataclass
class PTCTools:
    """The user's tools split the way the hosted API presents them."""

    api_tools: list[dict[str, Any]]
    """What the Messages API receives: the ``code_execution`` client tool, then the direct tools."""
    code_tools: CodeTools | None
    """What the sandbox code may call (tools allowing a code-execution caller)."""
    direct: dict[str, _Implementation] = field(default_factory=dict)
    """Tools the model calls itself (``tool_use`` turns), by name."""
    code_calls: list[str] = field(default_factory=list)
    """Every function the code called, in order (for inspection; never sent to the model)."""


def ptc_tools(
    tools: Sequence[Any],
    implementations: Mapping[str, Callable[..., Any]] | None = None,
    *,
    max_in_flight: int = 16,
    pending_timeout: float = 270.0,
) -> PTCTools:
    """Split ``tools`` (Messages API tool dicts or SDK ``@beta_tool`` functions) for the local loop.

    A ``{"type": "code_execution_2026…", "name": "code_execution"}`` entry, if present, is replaced
    by this adapter's client tool. ``implementations`` maps tool names to Python functions called
    with the tool input as keyword arguments (SDK function tools bring their own).
    """
    impls = dict(implementations or {})
    in_code: dict[str, _Implementation] = {}
    direct: dict[str, _Implementation] = {}
    api_direct: list[dict[str, Any]] = []
    for tool in tools:
        definition = _definition(tool)
        if definition.get("type") in CODE_TOOL_TYPES or definition.get("name") == CODE_TOOL:
            continue
        name = definition.get("name")
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"tool name {name!r} is not a Python identifier; the code could not call it")
        implementation = _implementation(definition, tool, impls.pop(name, None))
        if code_callable(definition):
            in_code[name] = implementation
        if direct_callable(definition):
            direct[name] = implementation
            api_direct.append({k: v for k, v in definition.items() if k != "allowed_callers"})
    if impls:
        raise ValueError(f"implementations for unknown tools: {sorted(impls)}")
    result = PTCTools(api_tools=[], code_tools=None, direct=direct)
    if in_code:
        async def call(name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
            implementation = in_code.get(name)
            if implementation is None:
                return f"no tool function named {name!r}", True
            result.code_calls.append(name)
            return await implementation(arguments)

        functions = [
            ToolFunction(name, _one_line(impl.definition.get("description")), impl.definition.get("input_schema") or {"type": "object"})
            for name, impl in in_code.items()
        ]
        result.code_tools = CodeTools(functions, call, max_in_flight=max_in_flight, pending_timeout=pending_timeout)
    result.api_tools = [code_execution_tool(result.code_tools), *api_direct]
    return result


def _one_line(text: Any) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0][:200] if lines else ""


def code_execution_tool(tools: CodeTools | None) -> dict[str, Any]:
    """The ``code_execution`` client tool: input ``{"code"}``, its description listing ``tools``."""
    from .tools.listing import render_listing

    description = CODE_TOOL_DESCRIPTION
    if tools is not None and tools.functions:
        description += "\n\nFunctions:\n" + render_listing(tools.functions)
    return {
        "name": CODE_TOOL,
        "description": description,
        "input_schema": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "Python code to run."}},
            "required": ["code"],
        },
    }


async def run_code_tool_use(sandbox: Any, block: Any, tools: CodeTools | None) -> dict[str, Any]:
    """Run a ``code_execution`` tool_use in ``sandbox``'s REPL with ``tools`` callable from the code;
    the ``tool_result`` carries the hosted ``code_execution_result`` block as JSON text."""
    tool_use_id = _field(block, "id")
    arguments = _field(block, "input")
    code = arguments.get("code") if isinstance(arguments, dict) else None
    if not isinstance(code, str):
        payload: dict[str, Any] = {"type": "code_execution_tool_result_error", "error_code": "invalid_tool_input"}
    else:
        try:
            outcome = await sandbox._run_code(CodeInput(code=code), tools)
            payload = outcome.block.model_dump(mode="json", exclude_none=True)
        except CodeExecError as exc:
            payload = error_block(CODE_TOOL, exc).model_dump(mode="json", exclude_none=True)
    return {
        "type": "tool_result",
        "tool_use_id": tool_use_id,
        "content": [{"type": "text", "text": json.dumps(payload, ensure_ascii=False)}],
        "is_error": str(payload.get("type", "")).endswith("_error"),
    }


@dataclass
class LoopResult:
    reply: Any
    """The final assistant message (its ``stop_reason`` is not ``tool_use``)."""
    messages: list[dict[str, Any]]
    """The whole conversation as sent, plus the final reply."""
    requests: int
    code_calls: list[str]
    """The functions the code called, in order (none of their results was sent to the model)."""


def _as_param(block: Any) -> Any:
    if hasattr(block, "model_dump"):
        return block.model_dump(mode="json", exclude_none=True)
    return block


async def run_ptc_loop(
    client: Any,
    sandbox: Any,
    *,
    model: str,
    messages: list[dict[str, Any]],
    tools: Sequence[Any] = (),
    implementations: Mapping[str, Callable[..., Any]] | None = None,
    max_tokens: int = 4096,
    max_turns: int = 20,
    on_reply: Callable[[Any], Any] | None = None,
    **create_kwargs: Any,
) -> LoopResult:
    """A local agent loop with programmatic tool calling (see the module docstring).

    ``client``: an ``anthropic.AsyncAnthropic``; ``sandbox``: an entered ``api.Sandbox``. Each
    ``code_execution`` call runs in the sandbox with the code-callable tools; direct tools and the
    bash / editor tools answer their ``tool_use`` blocks as usual.
    """
    split = ptc_tools(
        tools,
        implementations,
        max_in_flight=sandbox.settings.tools_max_in_flight,
        pending_timeout=sandbox.settings.tools_pending_timeout,
    )
    conversation = list(messages)
    requests = 0
    reply: Any = None
    for _ in range(max_turns):
        reply = await client.messages.create(
            model=model, max_tokens=max_tokens, tools=split.api_tools, messages=conversation, **create_kwargs
        )
        requests += 1
        if on_reply is not None:
            on_reply(reply)
        conversation.append({"role": "assistant", "content": [_as_param(b) for b in _field(reply, "content") or []]})
        if _field(reply, "stop_reason") != "tool_use":
            break
        results = []
        for block in _field(reply, "content") or []:
            if _field(block, "type") != "tool_use":
                continue
            name = _field(block, "name")
            if name == CODE_TOOL:
                results.append(await run_code_tool_use(sandbox, block, split.code_tools))
            elif name in split.direct:
                arguments = _field(block, "input")
                text, is_error = await split.direct[name](arguments if isinstance(arguments, dict) else {})
                results.append({"type": "tool_result", "tool_use_id": _field(block, "id"),
                                "content": [{"type": "text", "text": text}], "is_error": is_error})
            else:
                results.append(await run_tool_use(sandbox, block))
        conversation.append({"role": "user", "content": results})
    return LoopResult(reply=reply, messages=conversation, requests=requests, code_calls=list(split.code_calls))


__all__ = [
    "CODE_TOOL",
    "PTC_CALLERS",
    "LoopResult",
    "PTCTools",
    "code_execution_tool",
    "ptc_tools",
    "run_code_tool_use",
    "run_ptc_loop",
    "TOOL_NAMES",
    "container_of",
    "run_tool_use",
    "sandbox_for_container",
    "tool_definitions",
    "tool_results",
]
