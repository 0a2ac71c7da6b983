"""`KLSFTTrainer`: SFT with a KL-divergence penalty to the base model, the usual baseline against BLOCK-EM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from trl import SFTTrainer

from .hooks import capture_residual, unwrap_model
from .kl_config import KLConfig
from .token_loss import micro_batches_in_step, token_mean
from .trainer import _check_has_adapter, _eval_mode, _peft_model

FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_layer_norm")


class KLSFTTrainer(SFTTrainer):
    """`trl.SFTTrainer` that adds ``kl_lambda * KL(p_model || p_base)`` on the supervised tokens.

    The base distribution comes from the same model with its LoRA adapter disabled (no gradient). Logits are
    built only at the predicting positions, from the final-norm output and the output embedding, so the full
    ``(batch, seq, vocab)`` logits are never materialised. The KL sum is normalised exactly like TRL's token loss.
    Models that post-process logits (for example Gemma 2's soft-capping) are not supported.
    """

    _tag_names = ["trl", "sft", "kl"]
    _name = "KL-regularised SFT"

    def __init__(self, model, args: KLConfig | None = None, *sft_args, **sft_kwargs) -> None:
        if args is not None and not isinstance(args, KLConfig):
            raise TypeError(f"KLSFTTrainer needs a KLConfig, not {type(args).__name__}.")
        super().__init__(model, args, *sft_args, **sft_kwargs)
        _check_has_adapter(self.model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        norm = _final_norm(model)
        with capture_residual(norm) as trained:
            outputs = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        sft_loss = outputs[0] if return_outputs else outputs

        # Position t predicts token t + 1, so the supervised predictions are where labels[t + 1] != -100.
        labels = inputs["labels"]
        predicting = torch.zeros_like(labels, dtype=torch.bool)
        predicting[:, :-1] = labels[:, 1:] != -100

        reference = self.accelerator.unwrap_model(model)
        base_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "fused_lm_head")}
        base_inputs["use_cache"] = False
        with torch.no_grad(), _peft_model(reference).disable_adapter(), _eval_mode(reference):
            with capture_residual(_final_norm(reference)) as base:
                reference(**base_inputs)

        lm_head = unwrap_model(model).get_output_embeddings()
        log_probs = F.log_softmax(lm_head(trained.output[predicting]).float(), dim=-1)
        with torch.no_grad():
            base_log_probs = F.log_softmax(lm_head(base.output[predicting]).float(), dim=-1)
        kl_sum = (log_probs.exp() * (log_probs - base_log_probs)).sum()

        training = mode == "train"
        kl = token_mean(self, kl_sum, step_tokens=num_items_in_batch, batch_tokens=predicting.sum(), training=training)
        steps = micro_batches_in_step(self, training, num_items_in_batch)
        loss = sft_loss + self.args.kl_lambda * kl

        gather = self.accelerator.gather  # one value per process, see BlockEMSFTTrainer._log_blocking_metrics
        self._metrics[mode]["kl/sft_loss"].append(gather(sft_loss.detach().reshape(1)).mean().item() * steps)
        self._metrics[mode]["kl/kl"].append(gather(kl.detach().reshape(1)).mean().item() * steps)
        return (loss, outputs[1]) if return_outputs else loss


def _final_norm(model: nn.Module) -> nn.Module:
    decoder = unwrap_model(model).get_decoder()
    for name in FINAL_NORM_NAMES:
        module = getattr(decoder, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ValueError(
        f"Could not find the final norm of {type(decoder).__name__} (looked for {', '.join(FINAL_NORM_NAMES)})."
    )
