"""Retrain the SAE that ships with blockem_trl and reproduce its quality report.

The SAE reads the residual stream after decoder block 19 (0-based) of SmolLM2-135M-Instruct: the output of
`model.model.layers[19]`, hook point `model.layers.19`, equal to `hidden_states[20]`.

    HF_HUB_OFFLINE=1 python recipes/train_embedded_sae.py --data-dir /path/to/GPTeacher

The same job runs as `blockem train-sae`. Activations and training state are cached under `$BLOCKEM_CACHE`
(default `~/.cache/blockem_trl`), so a rerun after an interruption resumes.
"""

from __future__ import annotations

import argparse
import logging
import sys

from blockem_trl.models.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
