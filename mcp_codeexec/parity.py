"""``mcp-codeexec parity``: the same small script of calls against the docker and hosted backends,
printed side by side, so a user can see whether the two agree (Python, libraries, limits, outputs).

Each backend runs the script in a fresh session of its own. A step compares only the fields that
are meant to agree (an output file's id differs by nature; its name and size should not; an
error's wording may differ; its code should not). Exit status: 0 all steps agree, 1 some differ,
2 a backend could not run at all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any

import anyio
import anyio.to_thread

from .backends.base import CallContext, Outcome
from .config import Settings
from .errors import CodeExecError
from .schemas import BashInput, CodeInput, EditorInput

LIBRARIES = [
    "pandas",
    "numpy",
    "scipy",
    "scikit-learn",
    "statsmodels",
    "matplotlib",
    "seaborn",
    "pyarrow",
    "openpyxl",
    "xlsxwriter",
    "pillow",
    "python-docx",
    "pypdf",
    "sympy",
]
CLI_TOOLS = ["rg", "fd", "sqlite3", "7z", "unrar", "unzip", "bc"]


@dataclass(frozen=True)
class Step:
    name: str
    tool: str
    input: dict[str, Any]
    compare: tuple[str, ...]
    """The fields of the normalised result that must be equal on both sides."""


def _bash(name: str, command: str, compare: tuple[str, ...] = ("stdout", "return_code")) -> Step:
    return Step(name, "bash_code_execution", {"command": command}, compare)


def _editor(name: str, compare: tuple[str, ...] = ("result",), **input: Any) -> Step:
    return Step(name, "text_editor_code_execution", input, compare)


def _code(name: str, code: str, compare: tuple[str, ...] = ("stdout", "return_code")) -> Step:
    return Step(name, "code_execution", {"code": code}, compare)


REPL_SLEEP = 95
"""Seconds the over-the-limit cell sleeps: past the hosted tool's fixed 90 s cell limit (and the docker
backend's ``code_cell_timeout``, 90 by default)."""


SCRIPT: tuple[Step, ...] = (
    _bash("python version", "python3 --version; python3 -c 'import platform; print(platform.machine())'"),
    _bash(
        "library versions",
        "python3 - <<'EOF'\n"
        "import importlib.metadata as m\n"
        f"for name in {list(LIBRARIES)!r}:\n"
        "    try:\n"
        "        print(name, m.version(name))\n"
        "    except m.PackageNotFoundError:\n"
        "        print(name, 'MISSING')\n"
        "EOF",
    ),
    _bash(
        "command line tools",
        "for t in " + " ".join(CLI_TOOLS) + '; do command -v $t >/dev/null && echo "$t yes" || echo "$t no"; done',
    ),
    _bash("cpus", "echo nproc=$(nproc); python3 -c 'import os; print(\"cpu_count\", os.cpu_count())'"),
    _bash(
        "memory limit",
        "echo cgroup=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
        "2>/dev/null || echo unknown)",
    ),
    _bash(
        "network",
        # Judged from the network tables, never by connecting anywhere: any interface but lo, or any route, is online.
        "python3 -c \"import socket; r = open('/proc/net/route').read().splitlines()[1:]; "
        "print('online' if [n for _, n in socket.if_nameindex()] != ['lo'] or any(l.strip() for l in r) else 'offline')\"",
    ),
    _editor("create a file", command="create", path="parity/hello.py", file_text="print('hello')\nprint('world')\n"),
    _editor("view it", command="view", path="parity/hello.py"),
    _editor("str_replace in it", command="str_replace", path="parity/hello.py", old_str="'hello'", new_str="'parity'"),
    _editor("create over it", command="create", path="parity/hello.py", file_text="print('parity')\nprint('world')\n"),
    _bash("run it", "python3 parity/hello.py"),
    _bash(
        "an $OUTPUT_DIR file",
        "printf 'x,y\\n1,2\\n' > \"$OUTPUT_DIR/parity.csv\" && echo written",
        ("stdout", "return_code", "files"),
    ),
    _bash("a non-zero exit", "python3 -c 'undefined_variable'", ("stdout", "return_code", "stderr_last_line")),
    _editor("view a missing file", ("error_code",), command="view", path="parity/does-not-exist.txt"),
    _editor(
        "str_replace of a missing string",
        ("error_code",),
        command="str_replace",
        path="parity/hello.py",
        old_str="not there",
        new_str="x",
    ),
    _code("repl: set state", "import math\nparity_state = [math.factorial(5)]\nprint('set')"),
    _code("repl: state persists", "parity_state.append(len(parity_state))\nprint(parity_state)"),
    _code("repl: a traceback", "def parity_fail():\n    return 1 / 0\nparity_fail()",
          ("stdout", "return_code", "stderr_last_line")),
    _code(
        "repl: an $OUTPUT_DIR file",
        "import os\nopen(os.path.join(os.environ['OUTPUT_DIR'], 'repl.txt'), 'w').write('from the repl\\n')\nprint('written')",
        ("stdout", "return_code", "files"),
    ),
    _code(
        "repl: a cell past the limit",
        f"import time\nprint('sleeping', flush=True)\ntime.sleep({REPL_SLEEP})",
        ("stdout", "nonzero", "detection_timeout"),
    ),
    _code("repl: state after the limit", "print(parity_state)"),
)


@dataclass
class StepResult:
    value: dict[str, Any]
    """The normalised result (``{"error_code", "message"}`` when the call raised)."""
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ParityRow:
    step: Step
    docker: StepResult | None
    hosted: StepResult | None

    @property
    def same(self) -> bool:
        if self.docker is None or self.hosted is None:
            return False
        return _project(self.step, self.docker.value) == _project(self.step, self.hosted.value)


@dataclass
class ParityReport:
    rows: list[ParityRow]
    unavailable: dict[str, str] = field(default_factory=dict)
    """Backend name → why it could not run the script at all."""

    @property
    def compared(self) -> list[ParityRow]:
        """The steps both backends ran."""
        return [r for r in self.rows if r.docker is not None and r.hosted is not None]

    @property
    def differences(self) -> list[ParityRow]:
        return [r for r in self.compared if not r.same]

    @property
    def exit_code(self) -> int:
        if self.unavailable:
            return 2
        return 1 if self.differences else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "agree": len(self.compared) - len(self.differences),
            "compared": len(self.compared),
            "steps": len(self.rows),
            "unavailable": self.unavailable,
            "rows": [
                {
                    "step": r.step.name,
                    "tool": r.step.tool,
                    "input": r.step.input,
                    "compared": list(r.step.compare),
                    "same": r.same if r.docker is not None and r.hosted is not None else None,
                    "docker": None if r.docker is None else _project(r.step, r.docker.value),
                    "hosted": None if r.hosted is None else _project(r.step, r.hosted.value),
                }
                for r in self.rows
            ],
        }

    def to_text(self, width: int | None = None, *, only_differences: bool = False) -> str:
        width = width or shutil.get_terminal_size((120, 24)).columns
        col = max(20, (width - 3) // 2)
        out: list[str] = []
        for side, why in self.unavailable.items():
            out.append(f"!! {side} backend unavailable: {why}")
        out.append(f"{'docker':<{col}} | hosted")
        out.append("-" * min(width, 2 * col + 3))
        for row in self.rows:
            if only_differences and row.same:
                continue
            if row.docker is None or row.hosted is None:
                mark = "not compared"
            else:
                mark = "same" if row.same else "DIFFERENT"
            out.append(f"== {row.step.name} [{mark}]")
            left = _render(row.step, row.docker, col)
            right = _render(row.step, row.hosted, col)
            for a, b in zip_longest(left, right, fillvalue=""):
                out.append(f"{a:<{col}} | {b}")
        agree = len(self.compared) - len(self.differences)
        out.append("")
        out.append(f"{agree} of {len(self.rows)} steps agree")
        if len(self.compared) < len(self.rows):
            out.append(f"{len(self.rows) - len(self.compared)} steps could not be compared")
        usage = _hosted_usage(self.rows)
        if usage:
            out.append(f"hosted usage: {usage}")
        return "\n".join(out)


def _project(step: Step, value: dict[str, Any]) -> dict[str, Any]:
    return {k: value.get(k) for k in step.compare}


def _render(step: Step, result: StepResult | None, col: int) -> list[str]:
    if result is None:
        return ["(not run)"]
    pairs: list[tuple[str, Any]] = []
    for key in step.compare:
        value = result.value.get(key)
        if isinstance(value, dict):  # an editor result: one line per field
            pairs += [(k, v) for k, v in value.items() if k != "type"]
        else:
            pairs.append((key, value))
    lines: list[str] = []
    for key, value in pairs:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        label = f"{key}: "
        prefix = label
        for raw in text.splitlines() or [""]:
            for piece in textwrap.wrap(raw, max(8, col - len(prefix)), drop_whitespace=False) or [""]:
                lines.append(prefix + piece)
                prefix = " " * len(label)
    return lines


def _hosted_usage(rows: list[ParityRow]) -> str:
    totals: dict[str, int] = {}
    for row in rows:
        usage = (row.hosted.meta.get("usage") if row.hosted else None) or {}
        for key in ("input_tokens", "output_tokens"):
            if isinstance(usage.get(key), int):
                totals[key] = totals.get(key, 0) + usage[key]
    return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in totals.items())


def normalise(outcome: Outcome) -> dict[str, Any]:
    """What of a result can be compared across backends (file ids are replaced by name and size)."""
    data = outcome.block.model_dump(exclude_none=True)
    kind = data.get("type", "")
    if kind in ("bash_code_execution_result", "code_execution_result"):
        names = {f.file_id: (f.filename, f.size) for f in outcome.files}
        stderr = data["stderr"].rstrip("\n")
        return {
            "type": kind,
            "stdout": data["stdout"],
            "stderr": data["stderr"],
            "stderr_last_line": stderr.rsplit("\n", 1)[-1] if stderr else "",
            "return_code": data["return_code"],
            "nonzero": data["return_code"] != 0,
            "detection_timeout": "detection_timeout" in data["stdout"] + data["stderr"],
            "files": sorted(list(names.get(c["file_id"], (c["file_id"], None))) for c in data["content"]),
        }
    if kind.endswith("_tool_result_error"):
        return {"type": kind, "error_code": data["error_code"], "message": data.get("error_message")}
    return {"type": kind, "result": data}


BackendFactory = Callable[[Settings, Any], Any]


async def _run_side(
    settings: Settings, label: str, factory: BackendFactory | None = None
) -> tuple[list[StepResult] | None, str | None]:
    """Run the script on one backend; (results, None) or (None, why it could not run)."""
    from .files import FileStore

    try:
        store = await anyio.to_thread.run_sync(lambda: FileStore(settings.files_dir, settings.file_retention_days))
    except Exception as exc:  # noqa: BLE001 - CLI top level: reported in the report, not raised
        return None, f"cannot open the file store: {exc}"
    try:
        try:
            backend = (factory or _create_backend)(settings, store)
            await backend.start()
        except CodeExecError as exc:
            return None, exc.message
        except Exception as exc:  # noqa: BLE001 - CLI top level: an absent or broken backend is reported
            return None, f"{type(exc).__name__}: {exc}"
        ctx = CallContext(principal="local", session_key=f"parity:{label}:{time.time_ns()}")
        results: list[StepResult] = []
        try:
            for step in SCRIPT:
                started = time.monotonic()
                try:
                    if step.tool == "bash_code_execution":
                        outcome = await backend.bash(BashInput(**step.input), ctx)
                    elif step.tool == "code_execution":
                        outcome = await backend.code(CodeInput(**step.input), ctx)
                    else:
                        outcome = await backend.editor(EditorInput(**step.input), ctx)
                    value, meta = normalise(outcome), outcome.meta
                except CodeExecError as exc:
                    value = {"type": "error", "error_code": exc.error_code, "message": exc.message}
                    meta = {}
                results.append(StepResult(value, time.monotonic() - started, meta))
        finally:
            await backend.end_session(ctx.session_key)
            await backend.aclose()
        return results, None
    finally:
        await anyio.to_thread.run_sync(store.close)


def _create_backend(settings: Settings, store: Any) -> Any:
    """The lead's factory (``backends.create_backend``, else ``server.create_backend``), else the
    two known backends directly."""
    import importlib

    for module_name in ("mcp_codeexec.backends", "mcp_codeexec.server"):
        try:
            factory = getattr(importlib.import_module(module_name), "create_backend", None)
        except ImportError:
            factory = None
        if factory is not None:
            return factory(settings, store)
    if settings.backend == "hosted":
        from .backends.hosted import HostedBackend

        return HostedBackend(settings, store)
    from .backends.sandbox import SandboxBackend

    return SandboxBackend(settings, store)


async def run_parity(
    settings_docker: Settings, settings_hosted: Settings, *, backend_factory: BackendFactory | None = None
) -> ParityReport:
    """Run ``SCRIPT`` on both backends (concurrently) and pair the results step by step.

    ``backend_factory(settings, store)`` builds each backend (default: the project's factory,
    chosen by ``settings.backend``)."""
    settings_docker = settings_docker.model_copy(update={"backend": "docker"})
    settings_hosted = settings_hosted.model_copy(update={"backend": "hosted"})
    outcomes: dict[str, tuple[list[StepResult] | None, str | None]] = {}

    async def run(label: str, settings: Settings) -> None:
        outcomes[label] = await _run_side(settings, label, backend_factory)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "docker", settings_docker)
        tg.start_soon(run, "hosted", settings_hosted)

    docker, docker_why = outcomes["docker"]
    hosted, hosted_why = outcomes["hosted"]
    unavailable = {k: v for k, v in (("docker", docker_why), ("hosted", hosted_why)) if v}
    rows = [
        ParityRow(step, docker[i] if docker else None, hosted[i] if hosted else None) for i, step in enumerate(SCRIPT)
    ]
    return ParityReport(rows, unavailable)


# --- CLI -------------------------------------------------------------------------------------------


def register_cli(subparsers: Any, get_settings: Callable[..., Settings]) -> None:
    """Add ``parity``; ``get_settings(**overrides)`` builds Settings (None overrides are ignored)."""
    p = subparsers.add_parser(
        "parity",
        help="run the same calls on the docker and hosted backends and diff the results",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--only-differences", action="store_true", help="show only the steps that differ")
    p.add_argument("--image", help="docker backend: sandbox image tag")
    p.add_argument("--runtime", choices=["runc", "runsc"], help="docker backend: container runtime")
    p.add_argument("--model", help="hosted backend: model that drives the hosted tool")
    p.add_argument("--base-url", help="hosted backend: Anthropic API base URL")
    p.add_argument("--data-dir", help="where files and state live")

    def run(args: argparse.Namespace) -> int:
        settings = get_settings(
            **{
                k: v
                for k, v in {
                    "image": args.image,
                    "runtime": args.runtime,
                    "hosted_model": args.model,
                    "anthropic_base_url": args.base_url,
                    "data_dir": args.data_dir,
                    "pool_size": 0,
                }.items()
                if v is not None
            }
        )
        report = anyio.run(run_parity, settings, settings)
        if args.json:
            print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        else:
            print(report.to_text(only_differences=args.only_differences))
        return report.exit_code

    p.set_defaults(func=run)


__all__: Sequence[str] = (
    "SCRIPT",
    "ParityReport",
    "ParityRow",
    "Step",
    "StepResult",
    "normalise",
    "register_cli",
    "run_parity",
)
