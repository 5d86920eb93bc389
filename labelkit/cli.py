"""Run a command so that bad input ends with one clear message and a non-zero exit, not a traceback."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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


# The signals that stop a command, and the exit status a shell reports for each (128 + its number).
STOP_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, SLURM preemption, systemd), raised where Ctrl-C raises KeyboardInterrupt: so
    that every path that keeps the finished results on Ctrl-C (Lightning's graceful shutdown, the shard
    writers) keeps them on SIGTERM too."""


@contextmanager
def stop_signals() -> Iterator[list[int]]:
    """Within: Ctrl-C and SIGTERM raise in the main thread (KeyboardInterrupt, Terminated); yields the list
    of signals received. A signal that is ignored (a background job's SIGINT) or handled by someone else
    is left alone; the previous handlers are back on leaving."""
    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
        if signum == signal.SIGTERM:
            raise Terminated("SIGTERM")
        signal.default_int_handler(signum, frame)  # KeyboardInterrupt, as without this handler

    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    taken = {s: signal.getsignal(s) for s, default in defaults.items() if signal.getsignal(s) is default}
    for signum in taken:
        signal.signal(signum, on_signal)
    try:
        yield received
    finally:
        for signum, previous in taken.items():
            signal.signal(signum, previous)


def run_stoppable(main: Callable[[list[str]], object], args: list[str], debug: bool, prefix: str = "error") -> int:
    """Call `main(args)` and return the command's exit status: 0; 2 for bad input (one `prefix: ...` line, no
    traceback unless `debug`); 130 for Ctrl-C and 143 for SIGTERM, also where Lightning turns the interrupt
    into its own exit status 1 after its graceful shutdown."""
    with stop_signals() as received:
        try:
            main(args)
        except USER_ERRORS as e:
            if debug:
                raise
            report_error(e, prefix)
            return 2
        except KeyboardInterrupt as e:
            terminated = isinstance(e, Terminated)
            print("terminated" if terminated else "interrupted", file=sys.stderr)
            return STOP_STATUS[signal.SIGTERM if terminated else signal.SIGINT]
        except SystemExit:
            if received:
                return STOP_STATUS[received[0]]
            raise
    return 0


def run_guarded(main: Callable[[list[str]], object]) -> None:
    """Run `main(sys.argv[1:])` as a command (see `run_stoppable`): `--debug` shows tracebacks; a failed or
    stopped run exits with its status."""
    argv, debug = pop_debug(sys.argv)
    sys.argv = argv
    configure_logging()
    status = run_stoppable(main, argv[1:], debug)
    if status:
        sys.exit(status)


# Trainer settings of a labelling run: no logger, checkpoint or model summary, and no distributed sampler (each
# labeler's data module deals the images to the ranks itself).
LABELLING_TRAINER = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "use_distributed_sampler": False,
}


def run_predict_cli(cli_class, model_class, data_class, args: list[str], prog: str, description: str, **defaults):
    """Parse `args` with a LightningCLI subclass, build everything, run `trainer.predict`; return the CLI.
    `defaults` add to `LABELLING_TRAINER` and the console's trainer defaults."""
    import warnings

    from labelkit.console import console_trainer_defaults  # Lightning: imported only by the labelling commands

    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # argv is sys.argv, split
    cli = cli_class(
        model_class,
        data_class,
        run=False,
        args=args,
        trainer_defaults={**LABELLING_TRAINER, **defaults, **console_trainer_defaults()},
        save_config_callback=None,
        auto_configure_optimizers=False,
        seed_everything_default=False,
        parser_kwargs={"prog": prog, "description": description},
    )
    cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    return cli
