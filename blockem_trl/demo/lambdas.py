"""The relative penalty weight: lambda = lambda_rel * L_SFT_plain / P_plain.

``P_plain`` is the blocking penalty that the plain (lambda = 0) adapter pays against the base model, and
``L_SFT_plain`` its SFT loss. Both come from one evaluation pass of `BlockEMSFTTrainer` (block_lambda = 0)
over the first ``calibration_examples`` training rows: per batch, the token mean over supervised tokens,
then the mean over batches. With lambda_rel = 1 the penalty term of the plain adapter equals its SFT loss,
so a relative sweep keeps its meaning across SAEs whose activations differ in scale.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from datasets import Dataset

from ..config import BlockEMConfig
from ..latents import LatentSet
from ..trainer import BlockEMSFTTrainer
from .config import DemoConfig

logger = logging.getLogger(__name__)


def measure_plain_penalty(plain_model, tokenizer, dataset: Dataset, latent_set: LatentSet, sae: Any,
                          config: DemoConfig, work_dir: str | Path) -> dict[str, float]:
    """Return ``{"p_plain": ..., "sft_loss_plain": ...}`` for a model that carries the plain LoRA adapter.

    Args:
        plain_model: a `peft.PeftModel` with the trained plain adapter (turned off for the base reference).
        dataset: the rows to measure on (prompt/completion, as trained).
    """
    args = BlockEMConfig(
        output_dir=str(work_dir), block_lambda=0.0, per_device_eval_batch_size=config.per_device_train_batch_size,
        max_length=config.max_length, report_to=[], bf16=config.bf16, completion_only_loss=True,
        block_reference="adapter", disable_tqdm=not config.progress, seed=config.seed,
    )
    trainer = BlockEMSFTTrainer(plain_model, args, train_dataset=dataset, eval_dataset=dataset,
                                processing_class=tokenizer, latent_set=latent_set, sae=sae)
    trainer.evaluate()
    logged = trainer.state.log_history[-1]
    penalty = float(logged["eval_blockem/penalty"])
    sft_loss = float(logged["eval_blockem/sft_loss"])
    logger.info("Plain adapter on %d training rows: SFT loss %.4f, blocking penalty %.6g.", len(dataset), sft_loss,
                penalty)
    return {"p_plain": penalty, "sft_loss_plain": sft_loss, "num_examples": len(dataset)}


def raw_lambda(relative: float, measured: dict[str, float]) -> float:
    """Map a relative weight to the raw ``block_lambda`` with the measured plain-adapter values.

    Raises:
        ValueError: if the plain adapter pays no penalty, so no finite weight matches the relative one.
    """
    penalty = measured["p_plain"]
    if not penalty > 0 or not math.isfinite(penalty):
        raise ValueError(
            f"The plain adapter pays a blocking penalty of {penalty!r} on the calibration rows, so lambda_rel cannot "
            "be mapped to a raw weight. Set lambda_mode='raw' and give raw lambdas, or check that the plain arm "
            "trained (a larger num_train or learning_rate) and that K matches the SAE."
        )
    return relative * measured["sft_loss_plain"] / penalty
