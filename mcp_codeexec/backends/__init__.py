"""Execution backends: ``docker`` (local sandboxes) and ``hosted`` (Anthropic's hosted tool)."""
