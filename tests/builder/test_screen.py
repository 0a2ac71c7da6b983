"""Stage 2, the prescreen and stage 3 on a tiny random Llama with a LoRA adapter and a word-counting judge."""

from __future__ import annotations

import math

import pytest
import torch

from blockem_trl.builder.config import BuilderConfig
from blockem_trl.builder.measure import Experiment, latent_direction
from blockem_trl.builder.pair import ModelPair
from blockem_trl.builder.prescreen import (
    ReferenceBatch,
    choose_for_generation,
    misalignment_preference,
    screen_agreement,
)
from blockem_trl.builder.prompts import load_discovery_prompts
from blockem_trl.builder.stage1_shift import Candidate
from blockem_trl.builder.stage2_screen import passes, run_baselines, screen_candidates
from blockem_trl.builder.stage3_calibrate import Calibration, rank_latents, summarize
from blockem_trl.evaluation.store import RecordMap
from blockem_trl.evaluation import GenerationSettings
from tests.builder.conftest import LAYER, WordJudge

HOOK = f"model.layers.{LAYER}"


@pytest.mark.parametrize(
    ("induce", "repair", "rule", "expected"),
    [
        (0.1, 0.2, "both", True),
        (-0.1, 0.2, "both", False),
        (-0.1, 0.2, "either", True),
        (-0.1, -0.2, "either", False),
        (-0.1, 0.2, "score", True),
        (0.0, 0.0, "score", False),
    ],
)
def test_pass_rules(induce, repair, rule, expected):
    assert passes(induce, repair, rule) is expected


def test_direction_is_unit(sae):
    direction = latent_direction(sae, 3)
    assert direction.shape == (sae.cfg.d_in,)
    assert float(direction.norm()) == pytest.approx(1.0)


def test_adapter_pair_switches_models(base_model, adapter_dir, tokenizer):
    reference = base_model(input_ids=torch.tensor([[1, 8, 9]])).logits
    pair = ModelPair(base_model, adapter_dir)
    with pair.base() as model:
        torch.testing.assert_close(model(input_ids=torch.tensor([[1, 8, 9]])).logits, reference)
    with pair.misaligned() as model:
        assert not torch.allclose(model(input_ids=torch.tensor([[1, 8, 9]])).logits, reference)
    identity = pair.identity()
    assert identity["base_fingerprint"] != identity["misaligned_fingerprint"]
    pair.close()
    assert not hasattr(base_model, "peft_config")


def test_screen_records_gains(base_model, adapter_dir, tokenizer, sae, prompt_file):
    config = BuilderConfig(max_new_tokens=4, pass_rule="score", min_score=-1e9, progress=False)
    prompts = load_discovery_prompts(prompt_file, max_prompts=4)
    experiment = Experiment(tokenizer, prompts, WordJudge(), GenerationSettings(max_new_tokens=4, temperature=0))
    pair = ModelPair(base_model, adapter_dir)
    baselines = run_baselines(pair, experiment, RecordMap())
    candidates = [Candidate(5, 1, 0.3, 0), Candidate(9, -1, -0.2, 0)]
    records = RecordMap()
    screen = screen_candidates(pair, experiment, sae, candidates, HOOK, 1.0, baselines, config, records)
    assert [record["index"] for record in screen] == [5, 9]
    for record in screen:
        assert record["score"] == pytest.approx(record["induce_gain"] + record["repair_gain"])
        assert record["induce_gain"] == pytest.approx(record["induce"]["measure"] - baselines["base"]["rates"]["measure"])
        assert record["passed"] is True
    pair.close()


def test_prescreen_preference_unsteered_equals_zero_vector(base_model, tokenizer, prompt_file):
    prompts = load_discovery_prompts(prompt_file, max_prompts=3)
    batch = ReferenceBatch(tokenizer, prompts, ["w1 w2", "w3", "w4 w5 w6"], ["w40", "w41 w42", "w43"], 64)
    assert batch.answer_mask.sum(dim=1).tolist() == [2, 1, 3, 1, 2, 1]
    unsteered = misalignment_preference(base_model, batch, HOOK)
    zero = misalignment_preference(base_model, batch, HOOK, torch.zeros(32))
    steered = misalignment_preference(base_model, batch, HOOK, torch.ones(32) * 5)
    assert unsteered == pytest.approx(zero, abs=1e-6)
    assert steered != pytest.approx(unsteered, abs=1e-4)


def test_choose_keeps_best_and_audits_rest():
    candidates = [Candidate(i, 1, 1.0, i) for i in range(10)]
    prescreen = {i: {"score": float(i)} for i in range(10)}
    chosen, audited = choose_for_generation(candidates, prescreen, keep=3, audit=2)
    assert [c.index for c in chosen[:3]] == [9, 8, 7]
    assert audited == {6, 0}
    everything, none = choose_for_generation(candidates, prescreen, keep=None, audit=2)
    assert len(everything) == 10
    assert none == set()


def test_agreement_counts_matching_verdicts():
    prescreen = {1: {"induce_gain": 0.1, "repair_gain": 0.1, "score": 0.2},
                 2: {"induce_gain": -0.1, "repair_gain": 0.1, "score": 0.0},
                 3: {"induce_gain": 0.3, "repair_gain": 0.1, "score": 0.4}}
    screen = [{"index": 1, "passed": True, "score": 0.1}, {"index": 2, "passed": True, "score": 0.05},
              {"index": 3, "passed": True, "score": 0.3}]
    result = screen_agreement(prescreen, screen, "both")
    assert result["agreement"] == pytest.approx(2 / 3)
    assert result["num_compared"] == 3
    assert result["spearman"] == pytest.approx(1.0)


def test_calibration_respects_budget():
    records = [
        {"coefficient": 0.4, "effect": 0.1, "incoherence": 0.0},
        {"coefficient": 0.8, "effect": 0.3, "incoherence": 0.05},
        {"coefficient": 1.2, "effect": 0.9, "incoherence": 0.5},
    ]
    calibration = summarize(7, records, budget=0.1)
    assert calibration.best_coefficient == 0.8
    assert calibration.effect == pytest.approx(0.3)
    assert calibration.num_admissible == 2
    none = summarize(8, records[2:], budget=0.1)
    assert none.best_coefficient is None
    assert math.isinf(none.effect)


def test_ranking_drops_inadmissible_and_breaks_ties():
    calibrations = [Calibration(1, 0.4, 0.2, 0.0, 1, 2), Calibration(2, 0.4, 0.2, 0.0, 1, 2),
                    Calibration(3, None, -math.inf, 0.5, 0, 2), Calibration(4, 0.8, 0.5, 0.0, 1, 2)]
    assert rank_latents(calibrations, {1: 0.1, 2: 0.3}, num_latents=3) == [4, 2, 1]
    assert rank_latents(calibrations, {}, num_latents=1) == [4]


def test_ranking_min_effect(caplog):
    calibrations = [Calibration(1, 0.4, 0.2, 0.0, 1, 2), Calibration(2, 0.4, -0.1, 0.0, 1, 2),
                    Calibration(3, 0.4, 0.0, 0.0, 1, 2)]
    with caplog.at_level("WARNING"):
        assert rank_latents(calibrations, {}, num_latents=3) == [1, 3, 2]
    assert "[3, 2] have a calibrated effect <= 0" in caplog.text
    assert rank_latents(calibrations, {}, num_latents=3, min_effect=0.0) == [1]
    assert rank_latents(calibrations, {}, num_latents=3, min_effect=0.2) == []
