"""The arms of the experiment (plain SFT, BLOCK-EM, KL, random-K, Top-Delta) and how each one is trained.

The plain arm (lambda = 0) is `trl.SFTTrainer`: it is the misaligned reference from which the latent set is
built, so no latent set exists yet when it trains. Every other arm differs from it only in its regulariser.
"""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

from ..config import BlockEMConfig
from ..kl_config import KLConfig
from ..kl_trainer import KLSFTTrainer
from ..latents import LatentSet
from ..trainer import BlockEMSFTTrainer
from .config import DemoConfig

logger = logging.getLogger(__name__)

ARM_KINDS = ("plain", "blockem", "kl", "random_k", "top_delta")


@dataclass
class ArmSpec:
    """One trained model of the comparison.

    ``weight`` is the raw penalty weight passed to the trainer (``block_lambda`` or ``kl_lambda``), and
    ``relative_weight`` the value in the sweep's units when ``lambda_mode`` is relative (else None).
    """

    name: str
    kind: str
    domain: str
    weight: float = 0.0
    relative_weight: float | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "domain": self.domain, "weight": self.weight,
                "relative_weight": self.relative_weight, "seed": self.seed}


def format_weight(value: float) -> str:
    """Return a folder-safe short form of a weight, e.g. 0.3 -> '0.3', 13000 -> '1.3e+04'."""
    return f"{value:.3g}"


def lora_config(config: DemoConfig) -> LoraConfig:
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules, task_type="CAUSAL_LM")


def sft_settings(config: DemoConfig, output_dir: str | Path) -> dict[str, Any]:
    """Return the `SFTConfig` keyword arguments shared by every arm."""
    settings = dict(
        output_dir=str(output_dir), num_train_epochs=config.num_train_epochs,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type, warmup_steps=config.warmup_ratio, logging_steps=config.logging_steps,
        save_strategy="no", report_to=[], bf16=config.bf16, max_length=config.max_length, seed=config.seed,
        completion_only_loss=True, disable_tqdm=not config.progress,
    )
    if config.gradient_checkpointing:  # passed only when set: transformers 5 warns about the field name
        settings["gradient_checkpointing"] = True
    return settings


def train_arm(arm: ArmSpec, model, tokenizer, train_dataset: Dataset, config: DemoConfig, output_dir: str | Path,
              latent_set: LatentSet | None = None, sae: Any = None) -> dict[str, Any]:
    """Train one arm's LoRA adapter into ``output_dir`` and return its training summary.

    Returns a dict with the final ``train_loss``, the run time, and the means of the last logged
    ``blockem/penalty`` / ``blockem/sft_loss`` or ``kl/kl`` / ``kl/sft_loss`` values where the arm logs them.
    """
    common = sft_settings(config, output_dir)
    peft = lora_config(config)
    if arm.kind == "plain":
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=train_dataset,
                             processing_class=tokenizer, peft_config=peft)
    elif arm.kind == "kl":
        trainer = KLSFTTrainer(model, KLConfig(**common, kl_lambda=arm.weight), train_dataset=train_dataset,
                               processing_class=tokenizer, peft_config=peft)
    elif arm.kind in ("blockem", "random_k", "top_delta"):
        if latent_set is None:
            raise ValueError(f"Arm {arm.name!r} ({arm.kind}) needs a latent set.")
        args = BlockEMConfig(**common, block_lambda=arm.weight, block_reference=config.block_reference)
        trainer = BlockEMSFTTrainer(model, args, train_dataset=train_dataset, processing_class=tokenizer,
                                    peft_config=peft, latent_set=latent_set, sae=sae)
    else:
        raise ValueError(f"Unknown arm kind {arm.kind!r}; expected one of {ARM_KINDS}.")

    logger.info("Training arm %s (%s, weight %s) on %d rows.", arm.name, arm.kind, arm.weight, len(train_dataset))
    output = trainer.train()
    trainer.save_model(str(output_dir))
    summary = {"train_loss": output.training_loss, "train_seconds": output.metrics.get("train_runtime"),
               "steps": trainer.state.global_step}
    summary.update(_last_logged_means(trainer.state.log_history))
    del trainer
    return summary


def _last_logged_means(log_history: list[dict]) -> dict[str, float]:
    """Return the last logged value of each blocking/KL metric (the average over the final logging window)."""
    names = ("blockem/penalty", "blockem/sft_loss", "blockem/violating_token_fraction", "kl/kl", "kl/sft_loss")
    found: dict[str, float] = {}
    for entry in log_history:
        for name in names:
            if name in entry and isinstance(entry[name], (int, float)) and math.isfinite(entry[name]):
                found[f"final_{name.replace('/', '_')}"] = float(entry[name])
    return found


# ---------------------------------------------------------------------- latent sets of the ablations


def random_latent_set(reference: LatentSet, d_sae: int, seed: int) -> LatentSet:
    """Return random latents with the same K+/K- sizes as ``reference``, none of them in ``reference``."""
    excluded = set(reference.indices)
    pool = [index for index in range(d_sae) if index not in excluded]
    needed = len(reference.positive) + len(reference.negative)
    if len(pool) < needed:
        raise ValueError(f"The SAE has {d_sae} latents, too few to draw {needed} random ones outside K.")
    chosen = random.Random(seed).sample(pool, needed)
    return LatentSet(
        positive=chosen[: len(reference.positive)], negative=chosen[len(reference.positive):],
        hook_point=reference.hook_point, sae=reference.sae, model_name_or_path=reference.model_name_or_path,
        metadata={"selection": "random", "seed": seed, "same_sizes_as": reference.indices},
    )


def top_delta_latent_set(reference: LatentSet, shift) -> LatentSet:
    """Return the latents with the largest stage-1 activation shift, |K+| rising and |K-| falling.

    ``shift`` is the misaligned-minus-base mean activation per latent from stage 1 of the builder.
    """
    from ..builder.stage1_shift import select_candidates

    count = max(len(reference.positive), len(reference.negative))
    candidates = select_candidates(shift, count)
    positive = [c.index for c in candidates if c.sign > 0][: len(reference.positive)]
    negative = [c.index for c in candidates if c.sign < 0][: len(reference.negative)]
    return LatentSet(
        positive=positive, negative=negative, hook_point=reference.hook_point, sae=reference.sae,
        model_name_or_path=reference.model_name_or_path,
        metadata={"selection": "top_delta", "note": "stage-1 activation shift only, no steering screen"},
    )


def adapter_exists(directory: str | os.PathLike) -> bool:
    return (Path(directory) / "adapter_config.json").is_file()
