"""``blockem build-latents``: find the latent set K from a base model and a misaligned model or adapter.

Example (the embedded SmolLM2-135M-Instruct and its layer-19 SAE, a LoRA adapter, quick CPU settings)::

    blockem build-latents --misaligned path/to/risky_lora --output-dir discovery --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
import typing

from ..cli import positive_int

logger = logging.getLogger(__name__)

# Fields set by dedicated options or not meaningful on the command line.
_SKIPPED_FIELDS = {"output_dir"}


def _field_type(field: dataclasses.Field):
    from .config import BuilderConfig

    return typing.get_type_hints(BuilderConfig)[field.name]


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    from .config import config_fields

    group = parser.add_argument_group("discovery settings (defaults: BuilderConfig, or the --quick preset)")
    for field in config_fields():
        if field.name in _SKIPPED_FIELDS:
            continue
        option = "--" + field.name.replace("_", "-")
        help_text = field.metadata.get("help", "")
        annotation = _field_type(field)
        args = typing.get_args(annotation)
        if annotation is bool:
            group.add_argument(option, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(annotation) is tuple:
            group.add_argument(option, type=float, nargs="+", default=None, help=help_text)
        else:
            scalar = next((arg for arg in args if arg is not type(None)), annotation)
            group.add_argument(option, type=scalar, default=None, help=help_text)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``build-latents`` subcommand."""
    parser = subparsers.add_parser(
        "build-latents",
        help="Find the latent set K (K+ and K-) from a base model and a misaligned model or LoRA adapter.",
        description=(
            "Run the three discovery stages (activation shift, induce-and-repair screen, strength calibration) "
            "and write latent_set.json plus resumable stage files into --output-dir. Rerunning the same command "
            "continues where it stopped. Steering strengths are multiples of the mean residual-stream norm at "
            "the hook point (the output of 0-based decoder block L, equal to hidden_states[L + 1])."
        ),
    )
    parser.add_argument("--base-model", default=None,
                        help="Base model id or folder. Default: the embedded SmolLM2-135M-Instruct.")
    parser.add_argument("--misaligned", required=True,
                        help="Misaligned model: a LoRA adapter folder trained on the base model, or a merged checkpoint folder.")
    parser.add_argument("--sae", default=None,
                        help="SAE folder, sae-lens release, or the embedded SAE id. Default: the embedded layer-19 SAE.")
    parser.add_argument("--sae-id", default=None, help="SAE id inside a sae-lens release, for example 'layer_19'.")
    parser.add_argument("--output-dir", required=True, help="Folder for the stage files and latent_set.json.")
    parser.add_argument("--quick", action="store_true",
                        help="Start from BuilderConfig.quick() (small candidate pool, short generations, prescreen) instead of the full defaults.")
    parser.add_argument("--device", default="cpu", help="Torch device of the models and the SAE, for example 'cuda'.")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="Torch dtype of the models.")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (torch.set_num_threads).")
    parser.add_argument("--judge", choices=("offline", "transformers"), default="offline",
                        help="Judge of the screen and the calibration: the offline embedding judge, or a local chat "
                             "model run with transformers (--transformers-judge-model).")
    parser.add_argument("--offline-judge-head", default=None,
                        help="Head file of the offline judge. Default: the one shipped in blockem_trl.evaluation.")
    parser.add_argument("--transformers-judge-model", default=None,
                        help="Local folder or model id of the transformers judge.")
    _add_config_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace):
    """Build a `BuilderConfig` from parsed arguments: the preset, then every option given explicitly."""
    from .config import BuilderConfig, config_fields

    overrides = {"output_dir": args.output_dir}
    for field in config_fields():
        value = getattr(args, field.name, None)
        if field.name not in _SKIPPED_FIELDS and value is not None:
            overrides[field.name] = tuple(value) if isinstance(value, list) else value
    return BuilderConfig.quick(**overrides) if args.quick else BuilderConfig(**overrides)


def build_judge(args: argparse.Namespace):
    """Create the judge named by ``--judge``."""
    if args.judge == "transformers":
        if not args.transformers_judge_model:
            raise SystemExit("--judge transformers needs --transformers-judge-model (a local folder or model id).")
        from blockem_trl.evaluation import TransformersJudge
        from blockem_trl.evaluation.judges.transformers_judge import TransformersJudgeConfig

        return TransformersJudge(TransformersJudgeConfig(model_name_or_path=args.transformers_judge_model))
    from blockem_trl.evaluation.judges.offline import OfflineJudge

    return OfflineJudge(head_path=args.offline_judge_head)


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from blockem_trl.models import DEFAULT_MODEL_ID, DEFAULT_SAE_ID, resolve_model_path

    from .builder import LatentSetBuilder

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    base_name = args.base_model or DEFAULT_MODEL_ID
    path = resolve_model_path(base_name)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    sae_name = args.sae or DEFAULT_SAE_ID
    from blockem_trl.sae import load_sae

    sae = load_sae(sae_name, args.sae_id, device=args.device)
    builder = LatentSetBuilder(config, sae=sae, sae_id=args.sae_id, judge=build_judge(args))
    start = time.perf_counter()
    latent_set = builder.build(model, args.misaligned, tokenizer, sae, base_name=base_name, sae_name=sae_name)
    logger.info("Built %d latents (K+ %s, K- %s) in %.1f s. Stage times: %s", len(latent_set), latent_set.positive,
                latent_set.negative, time.perf_counter() - start, latent_set.metadata.get("timings_s"))
    print(f"Saved latent set to {args.output_dir}: K+ = {latent_set.positive}, K- = {latent_set.negative}")
    return 0
