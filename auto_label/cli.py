"""Run a command so that bad input ends with one clear message and a non-zero exit, not a traceback."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable

USER_ERRORS = (ValueError, OSError)

# Short flags shared by every command, and the data option each one stands for.
DATA_FLAGS = {
    "--strict": "--data.strict=true",
    "--allow-outside-image-dir": "--data.allow_outside_image_dir=true",
}


def expand_flags(argv: list[str], flags: dict[str, str] = DATA_FLAGS) -> list[str]:
    """Replace the short flags (`--strict`) by the Lightning CLI options they stand for."""
    return [flags.get(arg, arg) for arg in argv]


def pop_debug(argv: list[str]) -> tuple[list[str], bool]:
    """(argv without `--debug`, whether it was there)."""
    return [a for a in argv if a != "--debug"], "--debug" in argv


def report_error(error: BaseException, prefix: str = "error") -> None:
    print(f"{prefix}: {error}", file=sys.stderr)
    print("(run again with --debug for the full traceback)", file=sys.stderr)


def configure_logging() -> None:
    """INFO lines of our modules (e.g. the precision `auto` chose) on stderr, as Lightning prints its own."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def run_guarded(main: Callable[[list[str]], None]) -> None:
    """Call `main(sys.argv[1:])`; user-facing errors print `error: ...` and exit 2 unless `--debug` is given.
    Ctrl-C exits 130, as shells expect, also where Lightning turns the interrupt into its own exit status 1."""
    argv, debug = pop_debug(sys.argv)
    sys.argv = argv
    configure_logging()
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt, as without this handler

    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:  # not where SIGINT is ignored (a background job) or handled
        signal.signal(signal.SIGINT, on_sigint)
    try:
        main(argv[1:])
    except USER_ERRORS as e:
        if debug:
            raise
        report_error(e)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        if interrupted:
            sys.exit(130)
        raise
    finally:
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous)
