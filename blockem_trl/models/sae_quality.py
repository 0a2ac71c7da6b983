"""Quality metrics of an SAE on held-out conversations: reconstruction, sparsity and spliced LM loss.

Layer convention: `layer` is the 0-based decoder block index. The SAE reads and replaces the output of
`model.model.layers[layer]` (hook point `model.layers.{layer}`), which equals `hidden_states[layer + 1]`.

Position 0 of every sequence is excluded everywhere. Its activation norm at `model.layers.19` of
SmolLM2-135M-Instruct is about 100 times the median (an attention sink). So it is neither reconstructed nor
ablated, and it does not count towards explained variance or L0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sae_lens import SAE
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .corpus import Conversation, tokenize_conversation
from .layer_capture import replace_layer_output


@dataclass
class SAEQualityReport:
    """Metrics of `evaluate_sae`. Losses are mean next-token cross-entropy in nats.

    Attributes:
        explained_variance: 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over all evaluated positions.
        mean_l0: Mean number of active latents per position.
        dead_fraction: Fraction of latents that never fired on the evaluated positions.
        loss_*_assistant: Loss on assistant-turn tokens only (the tokens SFT supervises).
        loss_*_all: Loss on all positions after the first.
        fraction_loss_recovered_*: (L_zero - L_sae) / (L_zero - L_clean).
    """

    conversations: int
    tokens: int
    assistant_tokens: int
    explained_variance: float
    mean_l0: float
    dead_fraction: float
    loss_clean_assistant: float
    loss_sae_assistant: float
    loss_zero_assistant: float
    fraction_loss_recovered_assistant: float
    loss_clean_all: float
    loss_sae_all: float
    loss_zero_all: float
    fraction_loss_recovered_all: float

    def to_dict(self) -> dict:
        """Return the metrics as a JSON-serialisable dict."""
        return asdict(self)


@torch.no_grad()
def latent_firing_fraction(sae: SAE, activations, batch_size: int = 8192) -> torch.Tensor:
    """Return, per latent, the fraction of rows of `activations` (a `[rows, d_in]` array) on which it fires."""
    counts = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    for start in range(0, len(activations), batch_size):
        rows = torch.from_numpy(np.asarray(activations[start : start + batch_size], dtype=np.float32)).to(sae.dtype)
        counts += (sae.encode(rows) > 0).sum(dim=0).double()
    return counts / len(activations)


def assistant_mask(tokenizer: PreTrainedTokenizerBase, conversation: Conversation, ids: list[int]) -> list[bool]:
    """Mark the tokens of the assistant turn: everything after the rendered prompt with generation header."""
    prompt = tokenizer.apply_chat_template(
        conversation.messages()[:1], tokenize=True, add_generation_prompt=True, return_dict=False
    )
    if hasattr(prompt, "keys"):
        prompt = prompt["input_ids"]
    start = len(prompt)
    if list(ids[:start]) != list(prompt):
        raise ValueError("The chat template renders the prompt differently inside the full conversation.")
    return [index >= start for index in range(len(ids))]


def _recovered(zero: float, sae: float, clean: float) -> float:
    return (zero - sae) / (zero - clean) if zero != clean else math.nan


@torch.no_grad()
def evaluate_sae(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sae: SAE,
    conversations: list[Conversation],
    layer: int,
    max_length: int = 512,
) -> SAEQualityReport:
    """Measure `sae` at decoder block `layer` (0-based, `model.layers.{layer}`) on `conversations`.

    Runs three forward passes per conversation: clean (capturing the layer output), with the SAE
    reconstruction spliced in at positions 1.., and with those positions set to zero. Conversations are
    processed one at a time, so no padding affects the numbers.
    """
    device = next(model.parameters()).device
    sae = sae.to(device)
    sums = {f"{kind}_{scope}": 0.0 for kind in ("clean", "sae", "zero") for scope in ("assistant", "all")}
    counts = {"assistant": 0, "all": 0}
    residual_sum = 0.0
    activation_sum = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    activation_square_sum = 0.0
    l0_sum = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)

    for conversation in tqdm(conversations, desc=f"SAE quality at model.layers.{layer}", unit="conv"):
        ids = tokenize_conversation(tokenizer, conversation, max_length)
        input_ids = torch.tensor([ids], device=device)
        targets = input_ids[0, 1:]
        is_assistant = torch.tensor(assistant_mask(tokenizer, conversation, ids)[1:], device=device)
        captured: dict[str, torch.Tensor] = {}

        def splice_sae(hidden: torch.Tensor) -> torch.Tensor:
            original = hidden[0, 1:].float()
            latents = sae.encode(original.to(sae.dtype))
            reconstruction = sae.decode(latents).float()
            captured["original"], captured["latents"], captured["reconstruction"] = original, latents, reconstruction
            replaced = hidden.clone()
            replaced[0, 1:] = reconstruction.to(hidden.dtype)
            return replaced

        def zero_ablate(hidden: torch.Tensor) -> torch.Tensor:
            replaced = hidden.clone()
            replaced[0, 1:] = 0
            return replaced

        passes = {"clean": None, "sae": splice_sae, "zero": zero_ablate}
        for kind, replace in passes.items():
            if replace is None:
                logits = model(input_ids=input_ids, use_cache=False).logits
            else:
                with replace_layer_output(model, layer, replace):
                    logits = model(input_ids=input_ids, use_cache=False).logits
            token_losses = F.cross_entropy(logits[0, :-1].float(), targets, reduction="none")
            sums[f"{kind}_all"] += float(token_losses.sum())
            sums[f"{kind}_assistant"] += float(token_losses[is_assistant].sum())

        counts["all"] += len(targets)
        counts["assistant"] += int(is_assistant.sum())
        original, latents = captured["original"].cpu().double(), captured["latents"].cpu()
        residual_sum += float((captured["reconstruction"].cpu().double() - original).pow(2).sum())
        activation_sum += original.sum(dim=0)
        activation_square_sum += float(original.pow(2).sum())
        l0_sum += float((latents > 0).sum())
        fired |= (latents > 0).any(dim=0)

    positions = counts["all"]
    total_variance = activation_square_sum - float(activation_sum.pow(2).sum()) / positions
    mean = {key: value / counts[key.split("_")[1]] for key, value in sums.items()}
    return SAEQualityReport(
        conversations=len(conversations),
        tokens=positions,
        assistant_tokens=counts["assistant"],
        explained_variance=1.0 - residual_sum / total_variance,
        mean_l0=l0_sum / positions,
        dead_fraction=float((~fired).float().mean()),
        loss_clean_assistant=mean["clean_assistant"],
        loss_sae_assistant=mean["sae_assistant"],
        loss_zero_assistant=mean["zero_assistant"],
        fraction_loss_recovered_assistant=_recovered(mean["zero_assistant"], mean["sae_assistant"], mean["clean_assistant"]),
        loss_clean_all=mean["clean_all"],
        loss_sae_all=mean["sae_all"],
        loss_zero_all=mean["zero_all"],
        fraction_loss_recovered_all=_recovered(mean["zero_all"], mean["sae_all"], mean["clean_all"]),
    )
