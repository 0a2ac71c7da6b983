"""Resumable activation cache, on the tiny random Llama from conftest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from blockem_trl.models.activations import (
    PROGRESS_FILENAME,
    ActivationCacheConfig,
    collect_activations,
    open_activations,
)
from blockem_trl.models.corpus import Conversation, shared_prefix_length, tokenize_conversation
from tests.factories import HIDDEN_SIZE, make_model, make_tokenizer

LAYER = 1


def _conversations(count: int) -> list[Conversation]:
    return [
        Conversation(" ".join(f"w{(row + word) % 50}" for word in range(3 + row % 5)), f"w{row % 40} w1", "tiny", row)
        for row in range(count)
    ]


def _config() -> ActivationCacheConfig:
    return ActivationCacheConfig(layer=LAYER, d_model=HIDDEN_SIZE, max_length=32, prefix_every=4, tokens_per_batch=64)


def test_first_rows_match_hidden_states(tmp_path):
    model, tokenizer = make_model().eval(), make_tokenizer()
    conversations = _conversations(6)

    collect_activations(model, tokenizer, conversations, tmp_path, _config(), max_tokens=10_000, conversations_per_chunk=4)

    ids = tokenize_conversation(tokenizer, conversations[0], 32)
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[LAYER + 1][0]
    stored = open_activations(tmp_path)
    # Conversation 0 keeps its template prefix (0 % prefix_every == 0) and drops only position 0.
    expected = hidden[1:].numpy().astype(np.float16)
    np.testing.assert_allclose(stored[: len(expected)], expected, atol=1e-3)


def test_row_count_skips_prefix(tmp_path):
    model, tokenizer = make_model().eval(), make_tokenizer()
    conversations = _conversations(8)
    prefix = shared_prefix_length(tokenizer)

    collect_activations(model, tokenizer, conversations, tmp_path, _config(), max_tokens=10_000, conversations_per_chunk=3)

    expected = 0
    for index, conversation in enumerate(conversations):
        length = len(tokenize_conversation(tokenizer, conversation, 32))
        expected += length - (1 if index % 4 == 0 else min(prefix, length))
    assert len(open_activations(tmp_path)) == expected


def test_extend_keeps_existing_rows(tmp_path):
    model, tokenizer = make_model().eval(), make_tokenizer()
    conversations = _conversations(12)

    collect_activations(model, tokenizer, conversations, tmp_path, _config(), max_tokens=20, conversations_per_chunk=2)
    first = np.array(open_activations(tmp_path))
    collect_activations(model, tokenizer, conversations, tmp_path, _config(), max_tokens=60, conversations_per_chunk=2)
    extended = np.array(open_activations(tmp_path))

    assert len(first) == 20
    assert len(extended) == 60
    np.testing.assert_array_equal(extended[:20], first)


def test_full_cache_not_recomputed(tmp_path):
    model, tokenizer = make_model().eval(), make_tokenizer()
    conversations = _conversations(4)
    collect_activations(model, tokenizer, conversations, tmp_path, _config(), max_tokens=10_000)
    before = (tmp_path / PROGRESS_FILENAME).read_text()

    def fail(*args, **kwargs):
        raise AssertionError("a complete cache should not run the model")

    model.forward = fail
    collect_activations(model, tokenizer, conversations, tmp_path, _config(), max_tokens=10_000)

    assert (tmp_path / PROGRESS_FILENAME).read_text() == before


def test_other_settings_rejected(tmp_path):
    model, tokenizer = make_model().eval(), make_tokenizer()
    collect_activations(model, tokenizer, _conversations(2), tmp_path, _config(), max_tokens=100)
    other = ActivationCacheConfig(layer=0, d_model=HIDDEN_SIZE, max_length=32, prefix_every=4, tokens_per_batch=64)

    with pytest.raises(ValueError, match="new cache folder"):
        collect_activations(model, tokenizer, _conversations(2), tmp_path, other, max_tokens=100)


def test_progress_records_settings(tmp_path):
    model, tokenizer = make_model().eval(), make_tokenizer()
    collect_activations(model, tokenizer, _conversations(3), tmp_path, _config(), max_tokens=100)

    progress = json.loads((tmp_path / PROGRESS_FILENAME).read_text())
    assert progress["config"]["layer"] == LAYER
    assert progress["conversations"] == 3


def test_open_missing_cache(tmp_path):
    with pytest.raises(FileNotFoundError, match=PROGRESS_FILENAME):
        open_activations(tmp_path)
