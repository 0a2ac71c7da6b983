"""The cached reference mode: base-model activations of the blocked latents, computed once before training.

Each prepared (tokenized and truncated) training example gets a ``base_latents`` column of shape
``(seq_len, |K|)``: the blocked latents' activations in the base model, from one no-gradient forward pass with
the LoRA adapter disabled, stopped after the blocking layer. A collator wrapper pads or concatenates that
column exactly like TRL's collator treats ``input_ids``, so batches carry it aligned token by token and
training needs no base forward pass at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm

from .hooks import capture_residual, get_hook_module, run_until_captured
from .sae import LatentEncoder

logger = logging.getLogger(__name__)

BASE_LATENTS_KEY = "base_latents"


def compute_base_latents(
    model: nn.Module,
    dataset: Dataset,
    encoder: LatentEncoder,
    hook_point: str,
    batch_size: int = 8,
    pad_token_id: int = 0,
    description: str = "Caching base latents",
) -> Dataset:
    """Return ``dataset`` with a ``base_latents`` column computed by ``model`` with its adapter disabled.

    Args:
        model: a PEFT model; its adapter is disabled during the pass, so the activations are the base model's.
        dataset: a prepared dataset with an ``input_ids`` column, one sequence per row (not packed).
        encoder: encodes the residual stream into the blocked latents.
        hook_point: module path of the blocking layer, for example ``model.layers.19`` (output of 0-based block 19).
    """
    device = next(model.parameters()).device
    layer = get_hook_module(model, hook_point)
    rows = dataset["input_ids"]
    cached: list[list[list[float]]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), model.disable_adapter():
            for start in tqdm(range(0, len(rows), batch_size), desc=description, unit="batch"):
                cached.extend(_encode_batch(model, layer, rows[start : start + batch_size], encoder, pad_token_id, device))
    finally:
        model.train(was_training)
    if BASE_LATENTS_KEY in dataset.column_names:
        dataset = dataset.remove_columns(BASE_LATENTS_KEY)
    return dataset.add_column(BASE_LATENTS_KEY, cached)


def _encode_batch(model, layer, rows, encoder, pad_token_id, device) -> list[list[list[float]]]:
    # Right padding with an attention mask leaves every real token's activations unchanged in a causal model.
    lengths = [len(row) for row in rows]
    width = max(lengths)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.as_tensor(row)
        attention_mask[i, : len(row)] = 1
    with capture_residual(layer, stop=True) as capture:
        run_until_captured(
            model, input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
        )
    latents = encoder(capture.output).float().cpu()
    return [latents[i, :length].tolist() for i, length in enumerate(lengths)]


class BaseLatentsCollator:
    """Wrap a TRL collator so that batches also carry ``base_latents``, aligned with ``input_ids``.

    Padded positions get zeros; they are never selected by the penalty's token mask. With ``padding_free``
    the rows are concatenated, as TRL's collator concatenates ``input_ids``.
    """

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]], padding_free: bool = False) -> None:
        self.collator = collator
        self.padding_free = padding_free

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        base_latents = [torch.as_tensor(example.pop(BASE_LATENTS_KEY), dtype=torch.float32) for example in examples]
        batch = self.collator(examples)
        if self.padding_free:
            base_latents = [torch.cat(base_latents, dim=0)]
        batch_size, seq_len = batch["input_ids"].shape
        num_latents = base_latents[0].shape[-1]
        padded = torch.zeros(batch_size, seq_len, num_latents)
        for i, latents in enumerate(base_latents):
            if len(latents) > seq_len:
                raise ValueError(
                    f"Cached base latents cover {len(latents)} tokens but the batch row has {seq_len}. The dataset "
                    "changed after caching (for example re-tokenized or truncated): rebuild the trainer."
                )
            padded[i, : len(latents)] = latents
        if "attention_mask" in batch and not self.padding_free:
            lengths = torch.tensor([len(latents) for latents in base_latents])
            if not torch.equal(batch["attention_mask"].sum(dim=1).cpu(), lengths) or not bool(batch["attention_mask"][:, 0].all()):
                raise ValueError(
                    "The data collator does not right-pad rows as cached: the cached base latents would not line up "
                    "with the tokens. Use a right-padding collator with block_reference='cached'."
                )
        batch[BASE_LATENTS_KEY] = padded
        return batch
