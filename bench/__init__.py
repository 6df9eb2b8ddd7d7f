"""mcp-codeexec benchmark: our warm path against `docker exec`, the warm pool, concurrency, memory.

Run ``python -m bench`` (``--json`` for one JSON object, ``--smoke`` for a quick version). See
bench/README.md for what each number means and how it is measured.
"""
