import sys

if sys.argv[1:2] == ["serve"]:
    # From the first moment a signal is only noted; the server acts on it once its event loop
    # listens (shutdown.py): exit 0, no traceback, even while it is still importing.
    from .shutdown import hold_signals

    hold_signals()

from .cli import main  # noqa: E402

sys.exit(main())
