import signal
import sys

if sys.argv[1:2] == ["serve"]:
    # A server stopped while it is still importing has nothing to answer or clean up: exit 0
    # quietly rather than with a KeyboardInterrupt traceback (cli.cmd_serve and then shutdown.py
    # take the signals over from here).
    def _quit(signum: int, frame: object) -> None:
        raise SystemExit(0)

    for _signum in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", signal.SIGTERM)):
        signal.signal(_signum, _quit)

from .cli import main  # noqa: E402

sys.exit(main())
