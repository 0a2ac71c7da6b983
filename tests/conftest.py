"""Shared fixtures: tiny random models, SAEs and datasets built in memory, nothing downloaded."""

import pytest

from tests.factories import CHAT_TEMPLATE, HIDDEN_SIZE, NUM_LAYERS, VOCAB, make_dataset, make_model, make_sae, make_tokenizer  # noqa: F401


@pytest.fixture
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture
def tiny_model():
    return make_model()


@pytest.fixture
def tiny_dataset():
    return make_dataset()
