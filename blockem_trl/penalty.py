"""The BLOCK-EM penalty as a pure function of latent activations.

For each token t and blocked latent k with sign s_k (+1 for K+, -1 for K-):

    violation_{t,k} = relu(s_k * (z_{t,k} - z_base_{t,k}))
    L_block        = sum_t mask_t * sum_k violation_{t,k}^2  /  normaliser

so a K+ latent pays only for rising above the base model and a K- latent only for falling below it.
The trainer passes as normaliser the number of selected tokens over the whole optimizer step (all
gradient-accumulation micro-batches and, by default, all processes), the way TRL normalises its token loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PenaltyTerms:
    """Sums over the selected tokens of one micro-batch; divide by a token count to get means."""

    penalty_sum: torch.Tensor
    """Sum over selected tokens of the per-token penalty (keeps the autograd graph)."""
    num_tokens: torch.Tensor
    """Number of selected tokens."""
    num_violating_tokens: torch.Tensor
    """Selected tokens where at least one blocked latent moved the blocked way."""
    positive_drift_sum: torch.Tensor
    """Sum over selected tokens and K+ latents of ``z - z_base``."""
    negative_drift_sum: torch.Tensor
    """Sum over selected tokens and K- latents of ``z - z_base``."""


def latent_violations(latents: torch.Tensor, base_latents: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Return ``relu(sign * (z - z_base))`` with shape ``(..., |K|)``: how far each latent moved the blocked way."""
    return torch.relu((latents - base_latents) * signs)


def blocking_penalty_terms(
    latents: torch.Tensor, base_latents: torch.Tensor, signs: torch.Tensor, token_mask: torch.Tensor
) -> PenaltyTerms:
    """Compute the penalty sums for one micro-batch.

    Args:
        latents: activations of the blocked latents in the trained model, ``(batch, seq, |K|)``.
        base_latents: the same latents in the base model, same shape, without gradient.
        signs: ``(|K|,)`` with +1 for K+ and -1 for K-.
        token_mask: ``(batch, seq)`` bool, the tokens the penalty applies to.
    """
    signs = signs.to(device=latents.device, dtype=latents.dtype)
    mask = token_mask.to(device=latents.device, dtype=latents.dtype)
    violations = latent_violations(latents, base_latents.to(latents.dtype), signs)
    per_token = violations.pow(2).sum(dim=-1)
    drift = (latents - base_latents.to(latents.dtype)).detach() * mask.unsqueeze(-1)
    positive = signs > 0
    return PenaltyTerms(
        penalty_sum=(per_token * mask).sum(),
        num_tokens=mask.sum().detach(),
        num_violating_tokens=((per_token.detach() > 0).to(mask.dtype) * mask).sum(),
        positive_drift_sum=drift[..., positive].sum(),
        negative_drift_sum=drift[..., ~positive].sum(),
    )


def blocking_penalty(
    latents: torch.Tensor, base_latents: torch.Tensor, signs: torch.Tensor, token_mask: torch.Tensor
) -> torch.Tensor:
    """Return ``L_block`` averaged over the selected tokens of this batch (0 when none is selected)."""
    terms = blocking_penalty_terms(latents, base_latents, signs, token_mask)
    return terms.penalty_sum / terms.num_tokens.clamp(min=1)
