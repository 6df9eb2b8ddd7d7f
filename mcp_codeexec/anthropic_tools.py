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

Skills: pass the request's ``container`` param (``{"id"?, "skills": [{"type", "skill_id",
"version"?}]}``) to ``sandbox_for_container`` to get a ``Sandbox`` with those skills at
``/skills/<name>/``; ``container_of(sandbox)`` is the response's ``container`` (``id``,
``expires_at``, ``skills`` as ``{skill_id, type, version}``), the way the hosted response echoes it.

The model sees ``bash_code_execution`` and ``text_editor_code_execution`` with the hosted inputs;
each ``tool_result`` carries the hosted result block (``bash_code_execution_result``, ...) as JSON
text, so the conversation has the hosted tool's shape while the code runs in local containers.
"""

from __future__ import annotations

import json
from typing import Any

from .config import Settings, load_settings

BASH = "bash_code_execution"
EDITOR = "text_editor_code_execution"
TOOL_NAMES = (BASH, EDITOR)


def tool_definitions(settings: Settings | None = None) -> list[dict[str, Any]]:
    """The two tools as Messages API client tool params: ``{"name", "description", "input_schema"}``.

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


__all__ = ["TOOL_NAMES", "container_of", "run_tool_use", "sandbox_for_container", "tool_definitions", "tool_results"]
