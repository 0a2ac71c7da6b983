"""Resumable on-disk cache of residual-stream activations at one decoder layer, stored as float16.

Layer convention: `layer` is the 0-based decoder block index, the cached vectors are the output of
`model.model.layers[layer]` (hook point `model.layers.{layer}`) = `hidden_states[layer + 1]`.

Cache layout (one folder):
- `activations.f16`: a float16 memmap with `d_model` columns, filled row by row from the start. The file
  grows when a later call requests more rows.
- `progress.json`: how many conversations and rows are written, plus the settings that produced them.
  It is rewritten after each chunk, after the memmap is flushed, so a killed run resumes from the last
  completed chunk.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from .corpus import Conversation, shared_prefix_length, tokenize_conversation
from .layer_capture import StopForward, stop_after_layer

logger = logging.get_logger(__name__)

ACTIVATIONS_FILENAME = "activations.f16"
PROGRESS_FILENAME = "progress.json"
FLOAT16_MAX = 65504.0


@dataclass(frozen=True)
class ActivationCacheConfig:
    """Settings of an activation cache. A cache is only resumed with identical settings.

    Attributes:
        layer: 0-based decoder block whose output is cached (`model.layers.{layer}`).
        max_length: Conversations are truncated to this many tokens.
        prefix_every: Positions of the template prefix shared by all conversations (the default system turn)
            are stored for one conversation in `prefix_every`, so they are not repeated thousands of times.
            Position 0 is never stored, because its activation norm is about 100 times the median
            (an attention sink) and no SAE reconstructs it usefully.
        tokens_per_batch: Upper bound on padded tokens per forward pass.
    """

    layer: int
    d_model: int
    max_length: int = 512
    prefix_every: int = 20
    tokens_per_batch: int = 4096
    seed: int = 0


def _read_progress(folder: Path) -> dict | None:
    path = folder / PROGRESS_FILENAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _write_progress(folder: Path, progress: dict) -> None:
    temporary = folder / f"{PROGRESS_FILENAME}.tmp"
    temporary.write_text(json.dumps(progress, indent=2), encoding="utf-8")
    os.replace(temporary, folder / PROGRESS_FILENAME)


def open_activations(folder: str | Path) -> np.ndarray:
    """Return the filled rows of a cache as a read-only float16 memmap of shape `[rows, d_model]`."""
    folder = Path(folder)
    progress = _read_progress(folder)
    if progress is None:
        raise FileNotFoundError(f"No activation cache in {folder}: {PROGRESS_FILENAME} is missing.")
    shape = (progress["rows"], progress["config"]["d_model"])
    return np.memmap(folder / ACTIVATIONS_FILENAME, dtype=np.float16, mode="r", shape=shape)


def _positions_to_keep(length: int, prefix: int, keep_prefix: bool) -> slice:
    return slice(1 if keep_prefix else min(prefix, length), length)


@torch.no_grad()
def collect_activations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[Conversation],
    folder: str | Path,
    config: ActivationCacheConfig,
    max_tokens: int,
    conversations_per_chunk: int = 64,
) -> Path:
    """Run `conversations` through the model up to block `config.layer` and append the activations to the cache.

    Only blocks 0..`config.layer` run (`stop_after_layer`). Conversations already in the cache are skipped,
    so calling this again with the same list and settings resumes, and a call with a larger `max_tokens`
    extends the cache. Stops once the cache contains `max_tokens` rows or the list is exhausted.

    Returns:
        The cache folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    progress = _read_progress(folder)
    settings = asdict(config)
    if progress is not None and progress["config"] != settings:
        raise ValueError(
            f"The activation cache in {folder} was built with {progress['config']}, not {settings}. "
            "Pass the same settings, or a new cache folder."
        )
    if progress is None:
        progress = {"config": settings, "conversations": 0, "rows": 0, "seconds": 0.0}
        _write_progress(folder, progress)
    if progress["rows"] >= max_tokens or progress["conversations"] >= len(conversations):
        logger.info("Activation cache %s is complete (%d rows).", folder, progress["rows"])
        return folder

    path = folder / ACTIVATIONS_FILENAME
    capacity_bytes = max_tokens * config.d_model * np.dtype(np.float16).itemsize
    with path.open("ab") as handle:
        if handle.tell() < capacity_bytes:
            handle.truncate(capacity_bytes)
    store = np.memmap(path, dtype=np.float16, mode="r+", shape=(max_tokens, config.d_model))
    prefix = shared_prefix_length(tokenizer)
    device = next(model.parameters()).device
    bar = tqdm(total=max_tokens, initial=progress["rows"], unit="tok", desc=f"activations model.layers.{config.layer}")

    start_index = progress["conversations"]
    for chunk_start in range(start_index, len(conversations), conversations_per_chunk):
        started = time.perf_counter()
        chunk = conversations[chunk_start : chunk_start + conversations_per_chunk]
        token_lists = [tokenize_conversation(tokenizer, conversation, config.max_length) for conversation in chunk]
        vectors = _run_chunk(model, token_lists, config, device)

        rows: list[np.ndarray] = []
        for offset, (ids, hidden) in enumerate(zip(token_lists, vectors)):
            keep_prefix = (chunk_start + offset) % config.prefix_every == 0
            rows.append(hidden[_positions_to_keep(len(ids), prefix, keep_prefix)])
        block = np.concatenate(rows).clip(-FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)

        free = max_tokens - progress["rows"]
        block = block[:free]
        store[progress["rows"] : progress["rows"] + len(block)] = block
        store.flush()
        progress["rows"] += len(block)
        progress["conversations"] = chunk_start + len(chunk)
        progress["seconds"] += time.perf_counter() - started
        _write_progress(folder, progress)
        bar.update(len(block))
        if progress["rows"] >= max_tokens:
            break
    bar.close()
    logger.info("Activation cache %s: %d rows in %.0f s.", folder, progress["rows"], progress["seconds"])
    return folder


def _run_chunk(
    model: PreTrainedModel, token_lists: list[list[int]], config: ActivationCacheConfig, device: torch.device
) -> list[np.ndarray]:
    """Return the layer activations of each token list, batching sequences of similar length."""
    order = sorted(range(len(token_lists)), key=lambda index: len(token_lists[index]))
    results: list[np.ndarray | None] = [None] * len(token_lists)
    batch: list[int] = []

    def flush() -> None:
        width = max(len(token_lists[index]) for index in batch)
        input_ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention_mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, index in enumerate(batch):
            ids = token_lists[index]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        sink: list[torch.Tensor] = []
        # Right padding with causal attention leaves the real positions unchanged.
        with stop_after_layer(model, config.layer, sink):
            try:
                model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
            except StopForward:
                pass
        hidden = sink[0].float().cpu().numpy()
        for row, index in enumerate(batch):
            results[index] = hidden[row, : len(token_lists[index])]

    for index in order:
        longest = max([len(token_lists[i]) for i in batch] + [len(token_lists[index])])
        if batch and longest * (len(batch) + 1) > config.tokens_per_batch:
            flush()
            batch = []
        batch.append(index)
    if batch:
        flush()
    return results  # type: ignore[return-value]
