"""Stage 1: per-latent activation shift between the misaligned and the base model, and the candidate pool.

For each prompt, the residual stream at the hook point (the output of 0-based decoder block L, equal to
``hidden_states[L + 1]``) is encoded with the full SAE and averaged over the prompt's tokens (system-block
tokens excluded). The shift of latent k is the mean over prompts of that average in the misaligned model
minus the same in the base model. The same pass over the base model measures the mean residual-stream
norm, the unit of every steering strength.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from blockem_trl.hooks import capture_residual, get_hook_module, run_until_captured

from .prompts import DiscoveryPrompt, tokenize_prompts

logger = logging.getLogger(__name__)


@dataclass
class ActivationStats:
    """Mean SAE activations per latent over prompts, and the mean residual-stream norm over tokens."""

    mean_latents: torch.Tensor
    """Shape ``(d_sae,)``: per prompt the token average, then the mean over prompts."""
    mean_norm: float
    num_tokens: int


@dataclass
class Candidate:
    """A latent kept by stage 1: its index, the sign of its shift (+1 rose, -1 fell), the shift and its rank."""

    index: int
    sign: int
    shift: float
    rank: int
    """0-based rank by absolute shift within its direction."""

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def activation_stats(model: nn.Module, tokenizer, sae, prompts: list[DiscoveryPrompt], hook_point: str,
                     batch_size: int = 8, max_length: int = 512, exclude_system_tokens: bool = True,
                     progress: bool = True, description: str = "stage 1") -> ActivationStats:
    """Run ``model`` over the prompts up to the hook point and average the SAE's latents.

    The forward pass stops after the hooked block, so the layers above it cost nothing.
    """
    module = get_hook_module(model, hook_point)
    device = next(model.parameters()).device
    sae_device = sae.W_dec.device
    was_training = model.training
    model.eval()
    sum_of_prompt_means = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    norm_sum = 0.0
    num_tokens = 0
    starts = range(0, len(prompts), batch_size)
    try:
        for start in tqdm(starts, desc=description, unit="batch", disable=not progress):
            batch = tokenize_prompts(tokenizer, prompts[start : start + batch_size], max_length, exclude_system_tokens)
            with capture_residual(module, hook_point, stop=True) as captured:
                run_until_captured(model, input_ids=batch.input_ids.to(device),
                                   attention_mask=batch.attention_mask.to(device), use_cache=False)
            residual = captured.output.to(sae_device, torch.float32)
            mask = batch.average_mask.to(sae_device)
            latents = sae.encode(residual)
            weights = mask.to(torch.float32)
            per_prompt = (latents * weights.unsqueeze(-1)).sum(dim=1) / weights.sum(dim=1, keepdim=True)
            sum_of_prompt_means += per_prompt.sum(dim=0).to("cpu", torch.float64)
            norm_sum += float(residual.norm(dim=-1)[mask].sum())
            num_tokens += int(mask.sum())
    finally:
        if was_training:
            model.train()
    return ActivationStats((sum_of_prompt_means / len(prompts)).to(torch.float32), norm_sum / num_tokens, num_tokens)


def select_candidates(shift: torch.Tensor, num_candidates: int) -> list[Candidate]:
    """Return the ``num_candidates`` latents with the largest rise, then those with the largest fall.

    Latents with a zero shift are never candidates, so a direction can return fewer than asked.
    """
    candidates = []
    for sign in (1, -1):
        signed = shift * sign
        count = min(num_candidates, int((signed > 0).sum()))
        values, indices = torch.topk(signed, count)
        for rank, (value, index) in enumerate(zip(values.tolist(), indices.tolist())):
            candidates.append(Candidate(index=int(index), sign=sign, shift=float(value * sign), rank=rank))
    return candidates
