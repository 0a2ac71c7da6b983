"""Spliced-loss and reconstruction metrics, on the tiny random Llama and SAEs from conftest."""

from __future__ import annotations

import math

import pytest
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata

from blockem_trl.models.corpus import Conversation, tokenize_conversation
from blockem_trl.models.sae_quality import assistant_mask, evaluate_sae
from tests.factories import HIDDEN_SIZE, make_model, make_sae, make_tokenizer

CONVERSATIONS = [
    Conversation("w1 w2 w3", "w4 w5", "tiny", 0),
    Conversation("w6 w7", "w8 w9 w10 w11", "tiny", 1),
    Conversation("w12", "w13 w14 w15", "tiny", 2),
]


def _identity_sae() -> JumpReLUSAE:
    """A JumpReLU SAE whose reconstruction equals its input: latents are x and -x, each through ReLU."""
    sae = JumpReLUSAE(
        JumpReLUSAEConfig(d_in=HIDDEN_SIZE, d_sae=2 * HIDDEN_SIZE, metadata=SAEMetadata(hook_name="model.layers.1"))
    )
    eye = torch.eye(HIDDEN_SIZE)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.zero_()
    return sae


def test_identity_sae_recovers_all_loss():
    report = evaluate_sae(make_model().eval(), make_tokenizer(), _identity_sae(), CONVERSATIONS, layer=1)

    assert report.explained_variance == pytest.approx(1.0, abs=1e-5)
    assert report.loss_sae_all == pytest.approx(report.loss_clean_all, abs=1e-4)
    assert report.fraction_loss_recovered_all == pytest.approx(1.0, abs=1e-3)
    assert report.fraction_loss_recovered_assistant == pytest.approx(1.0, abs=1e-3)


def test_random_sae_report_fields():
    report = evaluate_sae(make_model().eval(), make_tokenizer(), make_sae("jumprelu"), CONVERSATIONS, layer=1)

    assert report.conversations == 3
    assert report.tokens > report.assistant_tokens > 0
    assert 0.0 <= report.dead_fraction <= 1.0
    assert report.mean_l0 > 0
    assert report.explained_variance < 1.0
    assert not math.isnan(report.fraction_loss_recovered_all)
    assert set(report.to_dict()) >= {"explained_variance", "mean_l0", "dead_fraction"}


def test_assistant_mask_marks_reply():
    tokenizer = make_tokenizer()
    conversation = CONVERSATIONS[0]
    ids = tokenize_conversation(tokenizer, conversation, 64)

    mask = assistant_mask(tokenizer, conversation, ids)

    reply = [token for token, is_reply in zip(tokenizer.convert_ids_to_tokens(ids), mask) if is_reply]
    assert reply[:2] == ["w4", "w5"]
    assert not any(mask[: ids.index(tokenizer.convert_tokens_to_ids("w4"))])
