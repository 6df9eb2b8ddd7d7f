"""``mcp-codeexec serve`` with one ``SandboxManager`` method held until the test releases it.

Run as ``python -m tests.support.held_server serve``. ``HELD_METHOD`` names the method and
``HELD_DIR`` a directory: ``<method>.entered`` appears when the server calls it, the call waits
until the test creates ``release`` (60 s at most), and ``<method>.done`` appears once it returned.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from mcp_codeexec.shutdown import hold_signals

hold_signals()

from mcp_codeexec.engines import docker as sandboxes  # noqa: E402
from mcp_codeexec.cli import main  # noqa: E402

NAME = os.environ["HELD_METHOD"]
DIR = Path(os.environ["HELD_DIR"])
ORIGINAL = getattr(sandboxes.SandboxManager, NAME)


def held(self: sandboxes.SandboxManager, *args: Any, **kwargs: Any) -> Any:
    (DIR / f"{NAME}.entered").touch()
    deadline = time.monotonic() + 60
    while not (DIR / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    result = ORIGINAL(self, *args, **kwargs)
    (DIR / f"{NAME}.done").touch()
    return result


setattr(sandboxes.SandboxManager, NAME, held)
sys.exit(main())
