#!/opt/venv/bin/python3
"""`pip` in the sandbox, which has no network: fail at once (no retries) and say so, naming what is
installed, instead of spending seconds in retries before a bare "could not find a version".

Installed as /opt/venv/bin/pip, pip3 and pip3.11. Commands that need no index (list, show, freeze,
an install of something already installed, ``--no-index``) behave as usual. With a proxy variable
set (a future opt-in network mode) this is plain pip."""

import os
import subprocess
import sys
from importlib import metadata

PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "PIP_PROXY")
INDEX_COMMANDS = {"install", "download", "wheel", "index", "search"}
NOTABLE = (
    "pandas", "numpy", "scipy", "scikit-learn", "matplotlib", "seaborn", "statsmodels", "sympy", "openpyxl", "xlrd",
    "python-docx", "python-pptx", "pypdf", "pdfplumber", "reportlab", "pillow", "lxml", "networkx", "beautifulsoup4",
)


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _routed() -> bool:
    """Whether any route leads off this sandbox (the network tables; nothing is sent to find out)."""
    try:
        with open("/proc/net/route") as v4, open("/proc/net/ipv6_route") as v6:
            return any(line.strip() for line in v4.readlines()[1:]) or any(
                line.split() and line.split()[-1] != "lo" for line in v6
            )
    except OSError:
        return True  # cannot tell: let pip try (it still has no retries)


def main() -> int:
    args = sys.argv[1:]
    if any(os.environ.get(name) for name in PROXY_VARS):
        os.execv(sys.executable, [sys.executable, "-m", "pip", *args])
    command = next((a for a in args if not a.startswith("-")), "")
    if command in ("install", "download", "wheel") and not _routed():
        # No route anywhere: do not even try an index (already installed requirements still pass).
        at = args.index(command) + 1
        args = [*args[:at], "--no-index", *args[at:]]
    env = {**os.environ, "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    code = subprocess.call([sys.executable, "-m", "pip", *args], env=env)
    if code != 0 and command in INDEX_COMMANDS:
        print(
            "\npip: this sandbox has no network access (no internet, no package index), so packages cannot be "
            f"downloaded. Preinstalled Python libraries include {', '.join(n for n in NOTABLE if _installed(n))}; "
            "`pip list` shows all of them. "
            "Use those, or write the code without the missing package.",
            file=sys.stderr,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
