"""mcp-codeexec: Anthropic's hosted code-execution tools, served over MCP from local Docker sandboxes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import Sandbox

__all__ = ["Sandbox", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `import mcp_codeexec` stays cheap (no docker, no mcp) until the API is used.
    if name == "Sandbox":
        from .api import Sandbox

        return Sandbox
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
