"""Tool calls for the direct paths' parity tests (direct_calls.py): each transport sends them with
its direct path on and off and requires the same answers."""

from __future__ import annotations

from typing import Any

BASH, EDITOR, CODE = "bash_code_execution", "text_editor_code_execution", "code_execution"

Case = tuple[str, Any, "dict[str, Any] | None"]  # tool, arguments, params._meta

PLAIN: list[Case] = [  # answered past the SDK's pipeline where the path is on
    (BASH, {"command": "echo hi"}, None),
    (BASH, {"command": "true", "restart": True}, None),
    (BASH, {"command": "x", "container_id": "container_" + "9" * 24}, None),  # an error result (expired)
    (BASH, {}, None),  # invalid input: a hosted error block
    (BASH, {"command": "é ü"}, None),
    (EDITOR, {"command": "create", "path": "/workspace/a.txt", "file_text": "a\nb\n"}, None),
    (EDITOR, {"command": "view", "path": "/workspace/a.txt"}, None),
    (EDITOR, {"command": "view", "path": "/workspace/missing"}, None),
    (CODE, {"code": "print(1)"}, None),
    (BASH, {"command": "ls"}, {"codeexec/mounts": []}),
]
SDK_ONLY: list[Case] = [  # the SDK's to answer either way
    ("no_such_tool", {}, None),  # the SDK's error
    (BASH, [1, 2], None),  # the SDK's error: arguments must be an object
    (BASH, {"command": "true"}, {"progressToken": "p1"}),  # progress is reported by the SDK's session
]
