"""`blockem train-sae`: retrain the embedded SAE for `model.layers.19` of SmolLM2-135M-Instruct.

Layer convention: decoder block 19 (0-based), output of `model.model.layers[19]` = `hidden_states[20]`.
"""

from __future__ import annotations

import argparse
import json

from ..cli import positive_int
from .sae_training import SAETrainingConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `train_embedded_sae` to `parser`."""
    defaults = SAETrainingConfig()
    parser.add_argument("--data-dir", required=True, help="GPTeacher folder with Roleplay/, Toolformer/ and Codegen/.")
    parser.add_argument(
        "--output-dir",
        default=None,
        help="Folder for cfg.json, sae_weights.safetensors and metrics.json (default: the SAE folder inside the package).",
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="Folder for the resumable activation cache and training state (default: $BLOCKEM_CACHE/sae-training/...).",
    )
    parser.add_argument("--max-tokens", type=int, default=180_000, help="Training activations to collect, in tokens.")
    parser.add_argument("--d-sae", type=int, default=defaults.d_sae, help="Number of SAE latents.")
    parser.add_argument("--k", type=int, default=defaults.k, help="Mean active latents per token (BatchTopK).")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="Passes over the activation cache.")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="Tokens per optimizer step.")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="Peak Adam learning rate.")
    parser.add_argument("--eval-conversations", type=int, default=40, help="Held-out conversations in the report.")
    parser.add_argument("--threads", "--num-threads", dest="num_threads", type=positive_int, default=2,
                        help="Torch CPU threads.")


def run(args: argparse.Namespace) -> int:
    """Run `train_embedded_sae` with parsed arguments and print the metrics as JSON."""
    from .train_sae import train_embedded_sae

    training = SAETrainingConfig(
        d_sae=args.d_sae, k=args.k, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr
    )
    metrics = train_embedded_sae(
        data_dir=args.data_dir,
        output_dir=args.output_dir,
        work_dir=args.work_dir,
        max_tokens=args.max_tokens,
        training=training,
        eval_conversations=args.eval_conversations,
        num_threads=args.num_threads,
    )
    print(json.dumps(metrics, indent=2))
    return 0 if all(metrics["targets_met"].values()) else 1


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `train-sae` subcommand."""
    parser = subparsers.add_parser(
        "train-sae",
        help="Retrain the embedded SmolLM2-135M-Instruct SAE at model.layers.19 and write its quality report.",
        description=__doc__,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser
