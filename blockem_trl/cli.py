"""The ``blockem`` command line: one subcommand per job.

Each subcommand lives in the module that owns the job and exposes ``add_parser(subparsers)``, which
registers an ``argparse`` parser whose ``func`` default runs the job with the parsed arguments.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Subcommand name -> module that defines `add_parser`. Modules are imported only when listed here, so a
# missing optional part never breaks the other subcommands.
SUBCOMMAND_MODULES = {
    "eval": "blockem_trl.evaluation.cli",
    "build-latents": "blockem_trl.builder.cli",
    "train-sae": "blockem_trl.models.cli",
    "demo": "blockem_trl.demo.cli",
}


def positive_int(text: str) -> int:
    """Parse a command-line integer that must be >= 1 (thread counts, sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {value}: give an integer >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockem",
        description="BLOCK-EM: fine-tune language models without emergent misalignment by blocking SAE latents.",
    )
    parser.add_argument("--log-level", default="INFO", help="Python logging level (DEBUG, INFO, WARNING).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name):
                continue  # this part of the library is not present in this version
            raise
        module.add_parser(subparsers)
    return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions whose message already names the bad value and the fix, so a traceback adds nothing.

    Every ``ValueError`` and ``FileNotFoundError`` raised by blockem_trl is written that way; the other
    types are the library's own errors about settings, installs and judge endpoints.
    """
    from .builder.store import BuilderSettingsError, NoLatentsSelectedError
    from .evaluation.judges.openai_judge import JudgeRequestError
    from .models.smollm2 import EmbeddedModelNotInstalledError

    return (ValueError, FileNotFoundError, BuilderSettingsError, NoLatentsSelectedError, JudgeRequestError,
            EmbeddedModelNotInstalledError)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand and return its exit status.

    Errors about the input are printed as one line (exit status 2); ``--log-level DEBUG`` shows the
    traceback instead. Ctrl-C exits with status 130 and keeps what resumable jobs have written.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    level = args.log_level.upper()
    if not isinstance(logging.getLevelName(level), int):
        parser.error(f"invalid --log-level {args.log_level!r}: choose DEBUG, INFO, WARNING or ERROR.")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"blockem {args.command}: interrupted. Finished stages and records are kept; run the same command "
              "again to resume.", file=sys.stderr)
        return 130
    except _user_error_types() as error:
        if level == "DEBUG":
            raise
        print(f"blockem {args.command}: error: {error}", file=sys.stderr)
        print(f"(run `blockem --log-level DEBUG {args.command} ...` to see the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
