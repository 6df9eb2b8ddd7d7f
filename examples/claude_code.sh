#!/usr/bin/env bash
# Register mcp-codeexec with Claude Code (https://docs.anthropic.com/en/docs/claude-code/mcp).
# Add `--scope user` after `add` to have it in every project, not only this one.
set -euo pipefail
claude mcp add codeexec -- mcp-codeexec serve

# A shared HTTP server instead (started with `mcp-codeexec serve --transport http`):
#   claude mcp add --transport http codeexec http://127.0.0.1:8000/mcp --header "Authorization: Bearer $TOKEN"
