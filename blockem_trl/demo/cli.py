"""The ``blockem demo`` subcommand: run the whole experiment, then optionally push one adapter to the Hub."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

import yaml

from ..cli import positive_int
from .config import ARCHIVE_ENV_VAR, DemoConfig

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``demo`` subcommand on the ``blockem`` parser."""
    parser = subparsers.add_parser(
        "demo",
        help="Run the BLOCK-EM experiment end to end: misalign, discover K, block, compare, report.",
        description="Fine-tune a misaligned reference (plain LoRA SFT), build the latent set K, fine-tune with "
        "BLOCK-EM over a lambda sweep and with the baselines (KL to base, random K, Top-Delta), evaluate every arm "
        "and the base model, and write report.md, report.json and safety_vs_quality.png. Every stage resumes: "
        "rerunning skips finished arms and evaluations.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="Small preset for a first run on CPU (measured run times: docs/demo_results.md).")
    parser.add_argument("--recipe", default=None,
                        help="YAML recipe of DemoConfig fields (see recipes/); --quick and --set apply on top.")
    parser.add_argument("--data-archive", default=None,
                        help=f"Encrypted training_datasets.zip.enc of Turner, Soligo et al. (default: ${ARCHIVE_ENV_VAR}).")
    parser.add_argument("--output-dir", default=None, help="Folder of all stage outputs and the report.")
    parser.add_argument("--seed", type=int, default=None, help="Seed of the data split, training and sampling.")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads.")
    parser.add_argument("--no-progress", action="store_true", help="Hide the tqdm progress bars.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="Override a DemoConfig field; VALUE is read as YAML, e.g. --set 'lambdas=[1, 10]'.")
    parser.add_argument("--push-arm", default=None,
                        help="After the run, push this arm's adapter (e.g. 'finance/blockem_l1') to --push-repo-id.")
    parser.add_argument("--push-repo-id", default=None, help="Hub model repo for --push-arm.")
    parser.add_argument("--private", action="store_true", help="Create the pushed repo as private.")
    parser.set_defaults(func=run_from_args)
    return parser


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """Build the `DemoConfig` from a recipe, the size flag and the overrides."""
    overrides = {}
    for item in args.overrides:
        key, separator, value = item.partition("=")
        if not separator:
            raise ValueError(f"Invalid --set {item!r}: write FIELD=VALUE, e.g. --set num_train=200.")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            message = str(error).replace("\n", " ")
            raise ValueError(f"Invalid --set {item!r}: its value is not valid YAML ({message}). "
                             "Quote lists and mappings whole, e.g. --set 'lambdas=[1, 10]'.") from None
    for name in ("data_archive", "output_dir", "seed", "threads"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.no_progress:
        overrides["progress"] = False
    if args.quick:
        overrides["size"] = "quick"
    if args.recipe:
        return DemoConfig.from_yaml(args.recipe, **overrides)
    return DemoConfig.from_mapping({"size": "default", **overrides}, source="the command line")


def run_from_args(args: argparse.Namespace) -> int:
    from .pipeline import run_demo

    if args.push_arm and not args.push_repo_id:
        raise ValueError(f"--push-arm {args.push_arm!r} needs --push-repo-id OWNER/NAME, the Hub repo to push to.")
    config = config_from_args(args)
    started = time.perf_counter()
    logger.info("blockem demo: command %s", " ".join(shlex.quote(a) for a in sys.argv))
    report = run_demo(config)
    print(f"Report: {Path(config.output_dir) / 'report.md'} (took {(time.perf_counter() - started) / 60:.1f} min)")
    if args.push_arm:
        from .hub import push_adapter_to_hub

        domain, _, arm = args.push_arm.rpartition("/")
        rows = [r for r in report["rows"] if r["arm"] == arm and (not domain or r["domain"] == domain)]
        if not rows or not rows[0].get("adapter_dir"):
            names = sorted(f"{r['domain']}/{r['arm']}" for r in report["rows"] if r.get("adapter_dir"))
            raise SystemExit(f"No trained arm {args.push_arm!r}. Trained arms: {names}.")
        print(push_adapter_to_hub(rows[0]["adapter_dir"], args.push_repo_id, private=args.private or None))
    return 0
