"""An empty workspace is cheap on the host's disk (the loop-mounted ext4 image is sparse and its
metadata is not zeroed) while its hard 5 GiB limit stays."""

from __future__ import annotations

import os

import pytest

from mcp_codeexec.backends.sandbox import SandboxBackend
from mcp_codeexec.files import FileStore
from mcp_codeexec.schemas import BashInput
from tests.integration.test_pool import ctx

pytestmark = pytest.mark.anyio

MiB = 2**20


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


async def test_an_empty_workspace_costs_at_most_8_mib_of_disk_and_still_holds_5_gib(settings):
    async with SandboxBackend(settings, FileStore(settings.files_dir, 30)) as b:
        volumes = b._manager.volumes if b._manager else None
        if volumes is None or volumes.mode != "loop":
            pytest.skip("workspaces are plain volumes here (no loop-mounted images)")
        out = await b.bash(BashInput(command="echo hi > /workspace/a.txt; df -B1 --output=size,avail /workspace | tail -1"), ctx(1))
        sandbox = await b.sandbox_for(ctx(1), None)
        size, avail = (int(v) for v in out.block.stdout.split())
        image, mnt = volumes.paths(sandbox.record.id)
        os.sync()
        used = allocated(str(image.resolve()))
        print(f"workspace image: {used / MiB:.2f} MiB allocated, filesystem {size / 2**30:.3f} GiB")
        assert used <= 8 * MiB, used
        # The hard limit: the filesystem is the promised size (within its metadata), not more.
        assert 0.99 * settings.disk_bytes <= avail <= size <= 1.03 * settings.disk_bytes, (size, avail)
