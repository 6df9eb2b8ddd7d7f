"""mcp-codeexec: Anthropic's hosted code-execution tools, served over MCP from local Docker sandboxes."""

__version__ = "0.1.0"
