"""Run a command so that bad input ends with one clear message and a non-zero exit, not a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

USER_ERRORS = (ValueError, OSError)


def run_guarded(main: Callable[[list[str]], None]) -> None:
    """Call `main(sys.argv[1:])`; user-facing errors print `error: ...` and exit 2 unless `--debug` is given."""
    debug = "--debug" in sys.argv
    sys.argv = [a for a in sys.argv if a != "--debug"]
    argv = sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(argv)
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        print("(run again with --debug for the full traceback)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
