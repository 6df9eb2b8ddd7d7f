"""Hypothesis strategies for hostile tool arguments, and a blocking MCP client for property tests.

Hypothesis drives synchronous test functions; the MCP client is async. ``blocking_client`` keeps one
client session open on an event loop in a background thread for the whole test, so each example is
one call (not one connection)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import anyio.from_thread
from hypothesis import strategies as st
from mcp import Client

from mcp_codeexec.schemas import BashInput, EditorInput

BASH = "bash_code_execution"
EDITOR = "text_editor_code_execution"

# --- scalars -------------------------------------------------------------------------------------

lone_surrogate = st.integers(0xD800, 0xDFFF).map(chr)
any_char = st.one_of(st.characters(codec=None), lone_surrogate)  # every code point, lone surrogates included
hostile_char = st.one_of(
    st.sampled_from(["\x00", "\n", "\r", "\t", "\x1b", "\u2028", "\u202e", "\ufeff", "\ufffd", "/", "\\", "'", '"', "$", "`",
                     "*", "~", "-", ".", " ", "%", "\udc80", "\udcff", "\ud800", "\udfff", "語", "😀"]),
    any_char,
)
hostile_text = st.text(hostile_char, max_size=60)
surrogateescaped = st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape"))
"""What a careless client makes of invalid UTF-8: lone surrogates U+DC80..U+DCFF."""


def _repeat(parts: tuple[str, int]) -> str:
    return parts[0] * parts[1]


huge_text = st.tuples(st.text(hostile_char, min_size=1, max_size=4), st.integers(10_000, 300_000)).map(_repeat)
path_text = st.one_of(
    hostile_text,
    surrogateescaped,
    st.lists(st.sampled_from(["..", ".", "", "a", "b c", "-rf", "\n", "x\x00y", "😀", "\udcff", "/", "~", "$(id)", "*",
                              "/workspace", "/etc", "/proc/self", "/dev/zero", "a" * 255, "b" * 300]), max_size=12).map("/".join),
    st.integers(1, 5000).map(lambda n: "d/" * n),
)
big_int = st.integers(min_value=-(2**70), max_value=2**70)
scalars = st.one_of(st.none(), st.booleans(), big_int, st.floats(allow_nan=False), hostile_text, surrogateescaped)


def _nest(args: tuple[Any, int, bool]) -> Any:
    value, depth, as_dict = args
    for _ in range(depth):
        value = {"k": value} if as_dict else [value]
    return value


deep = st.tuples(scalars, st.integers(50, 400), st.booleans()).map(_nest)  # deeper breaks hypothesis's own repr
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(hostile_text, inner, max_size=4)), max_leaves=12)
any_value = st.one_of(json_values, deep, huge_text)
extra_keys = st.dictionaries(st.one_of(hostile_text, st.sampled_from(["command", "path", "restart", "type", "__class__", "_meta"])),
                             any_value, max_size=3)

# --- arguments -------------------------------------------------------------------------------------


def _maybe(key: str, strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(st.just({}), strategy.map(lambda v: {key: v}))


def _merge(parts: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        out.update(part)
    return out


def bash_arguments(container_ids: st.SearchStrategy[Any] = any_value) -> st.SearchStrategy[dict[str, Any]]:
    command = st.one_of(hostile_text, surrogateescaped, huge_text, any_value, st.sampled_from(["echo hi", "", "   ", "\x00"]))
    shaped = st.tuples(_maybe("command", command), _maybe("restart", st.one_of(st.booleans(), any_value)),
                       _maybe("container_id", container_ids), st.one_of(st.just({}), extra_keys)).map(_merge)
    return st.one_of(shaped, st.dictionaries(hostile_text, any_value, max_size=4))


def editor_arguments(container_ids: st.SearchStrategy[Any] = any_value) -> st.SearchStrategy[dict[str, Any]]:
    command = st.one_of(st.sampled_from(["view", "create", "str_replace"]), st.sampled_from(["delete", "insert", "undo_edit", "VIEW", ""]),
                        any_value)
    text = st.one_of(hostile_text, surrogateescaped, huge_text, any_value)
    view_range = st.one_of(st.lists(big_int, max_size=3), any_value)
    shaped = st.tuples(
        _maybe("command", command), _maybe("path", st.one_of(path_text, any_value)), _maybe("file_text", text),
        _maybe("old_str", text), _maybe("new_str", text), _maybe("view_range", view_range), _maybe("container_id", container_ids),
        st.one_of(st.just({}), extra_keys),
    ).map(_merge)
    return st.one_of(shaped, st.dictionaries(hostile_text, any_value, max_size=4))


content_text = st.one_of(hostile_text, surrogateescaped, huge_text, st.sampled_from(["", "\n", "\r\n", "a\x00b", "x" * 5000]))


def well_shaped_bash(container_ids: st.SearchStrategy[Any] = any_value) -> st.SearchStrategy[dict[str, Any]]:
    """Right field names and types, hostile values."""
    command = st.one_of(hostile_text, surrogateescaped, huge_text, st.sampled_from(["echo hi", "   ", "\x00", "exit 3", "printf '\\377'"]))
    return st.fixed_dictionaries({"command": command}, optional={"restart": st.booleans(), "container_id": container_ids})


def well_shaped_editor(container_ids: st.SearchStrategy[Any] = any_value) -> st.SearchStrategy[dict[str, Any]]:
    optional = {"container_id": container_ids}
    return st.one_of(
        st.fixed_dictionaries({"command": st.just("view"), "path": path_text},
                              optional={"view_range": st.one_of(st.none(), st.lists(big_int, min_size=2, max_size=2)), **optional}),
        st.fixed_dictionaries({"command": st.just("create"), "path": path_text, "file_text": content_text}, optional=optional),
        st.fixed_dictionaries({"command": st.just("str_replace"), "path": path_text, "old_str": content_text,
                               "new_str": content_text}, optional=optional),
    )


def tool_calls(container_ids: st.SearchStrategy[Any] = any_value) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    return st.one_of(
        st.tuples(st.just(BASH), well_shaped_bash(container_ids)), st.tuples(st.just(EDITOR), well_shaped_editor(container_ids)),
        st.tuples(st.just(BASH), bash_arguments(container_ids)), st.tuples(st.just(EDITOR), editor_arguments(container_ids)),
    )


def sdk_sendable(value: Any, depth: int = 0) -> Any:
    """What the SDK client can serialize: lone surrogates become U+FFFD, nesting is cut at 100."""
    if depth > 100:
        return None
    if isinstance(value, str):
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value) if any(
            0xD800 <= ord(c) <= 0xDFFF for c in value) else value
    if isinstance(value, dict):
        return {sdk_sendable(k, depth + 1): sdk_sendable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [sdk_sendable(v, depth + 1) for v in value]
    return value


def is_valid_input(tool: str, arguments: dict[str, Any]) -> bool:
    """Whether the server's own input model accepts ``arguments`` (the server may still refuse more)."""
    try:
        (BashInput if tool == BASH else EditorInput).model_validate(arguments)
    except Exception:  # noqa: BLE001 - any failure (including RecursionError) means "invalid"
        return False
    return True


# --- a blocking MCP client -------------------------------------------------------------------------


class BlockingClient:
    def __init__(self, portal: Any, client: Client) -> None:
        self.portal = portal
        self.client = client

    def call_tool(self, name: str, arguments: dict[str, Any], timeout: float = 120.0) -> Any:
        async def call() -> Any:
            with anyio.fail_after(timeout):
                return await self.client.call_tool(name, arguments)

        return self.portal.call(call)


@contextlib.contextmanager
def blocking_client(server: Any) -> Iterator[BlockingClient]:
    """An in-memory MCP client session on ``server`` usable from synchronous code."""
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        with portal.wrap_async_context_manager(Client(server)) as client:
            yield BlockingClient(portal, client)
