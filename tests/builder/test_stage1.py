"""Stage 1 on a tiny random Llama: token masks, the activation shift and the candidate pool."""

from __future__ import annotations

import pytest
import torch

from blockem_trl.builder.prompts import DiscoveryPrompt, load_discovery_prompts, tokenize_prompts
from blockem_trl.builder.stage1_shift import activation_stats, select_candidates

from tests.builder.conftest import LAYER


def test_prompts_expand_paraphrases(prompt_file):
    prompts = load_discovery_prompts(prompt_file)
    assert len(prompts) == 11
    assert prompts[0].id == "q0#0"
    assert prompts[-1].system == "w50 w51 w52"
    assert len(load_discovery_prompts(prompt_file, all_paraphrases=False)) == 6
    assert len(load_discovery_prompts(prompt_file, max_prompts=3)) == 3


def test_mask_excludes_system_block(tokenizer):
    prompts = [DiscoveryPrompt("a", "w1 w2", system="w50 w51 w52"), DiscoveryPrompt("b", "w3")]
    batch = tokenize_prompts(tokenizer, prompts, max_length=64)
    with_system = tokenizer.convert_ids_to_tokens(batch.input_ids[0][batch.average_mask[0]].tolist())
    assert with_system == ["w1", "w2", "assistant", ":"]
    without_system = tokenizer.convert_ids_to_tokens(batch.input_ids[1][batch.average_mask[1]].tolist())
    assert without_system == ["w3", "assistant", ":"]
    kept_all = tokenize_prompts(tokenizer, prompts, max_length=64, exclude_system_tokens=False)
    assert torch.equal(kept_all.average_mask, kept_all.attention_mask)


def test_stats_match_manual_encode(base_model, tokenizer, sae):
    prompts = [DiscoveryPrompt("a", "w1 w2 w3", system="w50"), DiscoveryPrompt("b", "w4 w5")]
    stats = activation_stats(base_model, tokenizer, sae, prompts, f"model.layers.{LAYER}", batch_size=1,
                             progress=False)
    expected_means, norms = [], []
    for prompt in prompts:
        batch = tokenize_prompts(tokenizer, [prompt], max_length=64)
        with torch.no_grad():
            hidden = base_model(input_ids=batch.input_ids, output_hidden_states=True).hidden_states[LAYER + 1][0]
        kept = hidden[batch.average_mask[0]]
        expected_means.append(sae.encode(kept).mean(dim=0))
        norms.append(kept.norm(dim=-1))
    torch.testing.assert_close(stats.mean_latents, torch.stack(expected_means).mean(dim=0), atol=1e-5, rtol=1e-4)
    assert stats.num_tokens == sum(len(n) for n in norms)
    assert stats.mean_norm == pytest.approx(float(torch.cat(norms).mean()), rel=1e-5)


def test_candidates_ranked_both_directions():
    shift = torch.tensor([0.5, -2.0, 0.0, 3.0, -0.1, 1.0])
    candidates = select_candidates(shift, num_candidates=2)
    assert [(c.index, c.sign, c.rank) for c in candidates] == [(3, 1, 0), (5, 1, 1), (1, -1, 0), (4, -1, 1)]
    assert candidates[2].shift == pytest.approx(-2.0)


def test_candidates_skip_zero_shift():
    candidates = select_candidates(torch.tensor([1.0, 0.0, 0.0]), num_candidates=5)
    assert [c.index for c in candidates] == [0]
