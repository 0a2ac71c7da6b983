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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
