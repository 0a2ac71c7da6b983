"""Normalise a per-token sum the way TRL normalises its token loss, for the penalties added to it.

`BlockEMSFTTrainer` and `KLSFTTrainer` both add a sum over tokens to TRL's SFT loss. Dividing that sum the
same way as TRL divides its cross-entropy keeps the penalty weight's meaning fixed under gradient
accumulation and data parallelism.
"""

from __future__ import annotations

import torch
from transformers import Trainer


def token_mean(
    trainer: Trainer,
    token_sum: torch.Tensor,
    *,
    step_tokens: torch.Tensor | int | None,
    batch_tokens: torch.Tensor,
    training: bool,
) -> torch.Tensor:
    """Return ``token_sum`` divided like TRL's token loss.

    In training, with ``step_tokens`` known, the sum is divided by the token count of the whole optimizer
    step (all accumulation micro-batches, gathered over processes when ``average_tokens_across_devices``)
    and multiplied by the process count, because DDP averages gradients over processes. Summed over the
    micro-batches and averaged over the processes, the result is the mean over every token of the step.
    Otherwise (evaluation, or a model that takes no loss kwargs) it is the mean over this micro-batch.

    Args:
        trainer: the running trainer (for its arguments, accelerator and tensor-parallel size).
        token_sum: the micro-batch's sum over the selected tokens.
        step_tokens: the selected tokens in the optimizer step, or None when unknown.
        batch_tokens: the selected tokens in this micro-batch.
        training: whether this is a training micro-batch.
    """
    if training and step_tokens is not None:
        value = token_sum / torch.as_tensor(step_tokens, device=token_sum.device).clamp(min=1)
        if trainer.args.average_tokens_across_devices:
            value = value * (trainer.accelerator.num_processes // trainer.get_tp_size())
        return value
    return token_sum / batch_tokens.clamp(min=1)


def micro_batches_in_step(trainer: Trainer, training: bool, num_items_in_batch) -> int:
    """Return the factor that puts a step-normalised micro-batch value back on the scale of the logged loss.

    A value divided by the whole step's token count is 1/GA of the step's value. Multiplied by GA, the
    logged micro-batch values average to the scale of the logged ``loss``.
    """
    if training and num_items_in_batch is not None:
        # Set by `Trainer.train`; absent when `training_step` is called directly.
        return getattr(trainer, "current_gradient_accumulation_steps", 1)
    return 1
