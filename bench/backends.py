"""Docker beside Kubernetes in one run: cold create -> first result, pooled first call, warm call
p50/p99, through the server's own lifecycle (``Sandbox``), the same image and limits on both.

    python -m bench.backends --kubeconfig "$(tests/k8s/cluster.sh up | tail -1)" [--calls 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from mcp_codeexec import Sandbox
from mcp_codeexec.backends.base import CallContext
from mcp_codeexec.backends.sandbox import SandboxBackend
from mcp_codeexec.config import Settings, load_settings
from mcp_codeexec.engines import build_engine
from mcp_codeexec.files import FileStore
from mcp_codeexec.schemas import BashInput


def _settings(backend: str, data_dir: Path, kubeconfig: str | None, pool_size: int) -> Settings:
    extra: dict[str, Any] = {}
    if backend == "kubernetes":
        extra = {"kubeconfig": kubeconfig, "k8s_image_pull_policy": "Never"}
    return load_settings(backend=backend, data_dir=str(data_dir), pool_size=pool_size, config_file=None,
                         reap_interval_seconds=3600.0, **extra)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(backend: str, kubeconfig: str | None, calls: int) -> dict[str, Any]:
    out: dict[str, Any] = {"backend": backend}
    with tempfile.TemporaryDirectory() as tmp:
        s = _settings(backend, Path(tmp), kubeconfig, pool_size=0)
        t0 = time.perf_counter()
        async with Sandbox(s) as sb:
            assert (await sb.bash("true")).return_code == 0
            out["cold_create_to_first_result_s"] = round(time.perf_counter() - t0, 3)
            warm = []
            for _ in range(calls):
                t = time.perf_counter()
                await sb.bash("true")
                warm.append((time.perf_counter() - t) * 1000)
            out["warm_p50_ms"] = round(statistics.median(warm), 2)
            out["warm_p99_ms"] = round(_pct(warm, 0.99), 2)
        pooled = _settings(backend, Path(tmp) / "pooled", kubeconfig, pool_size=1)
        store = FileStore(pooled.files_dir, pooled.file_retention_days)
        async with SandboxBackend(pooled, store) as b:
            with anyio.fail_after(180):
                while not b._pool:  # the warm sandbox is ready
                    await anyio.sleep(0.1)
            t = time.perf_counter()
            await b.bash(BashInput(command="true"), CallContext(principal="local", session_key="bench:pooled"))
            out["pooled_first_call_s"] = round(time.perf_counter() - t, 3)
        store.close()
        for settings in (s, pooled):
            build_engine(settings).remove_installation()  # type: ignore[attr-defined]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--calls", type=int, default=200)
    args = p.parse_args()
    rows = [anyio.run(measure, backend, args.kubeconfig, args.calls) for backend in ("docker", "kubernetes")]
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
