"""Fixtures of the demo tests: a tiny model loader, SAE, judge, data and config, nothing downloaded."""

from __future__ import annotations

import pytest
import yaml

from blockem_trl.demo import DemoComponents, DemoConfig, DomainConfig, DomainData
from tests.builder.conftest import WordJudge
from tests.factories import make_dataset, make_model, make_sae, make_tokenizer

LAYER = 1


def tiny_loader():
    return make_model(seed=0), make_tokenizer()


@pytest.fixture
def question_file(tmp_path):
    rows = [{"id": f"q{i}", "paraphrases": [f"w{i} w{i + 10} w{i + 20}", f"w{i + 30} w{i + 1}"]} for i in range(4)]
    path = tmp_path / "questions.yaml"
    path.write_text(yaml.safe_dump(rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def tiny_components():
    data = DomainData("tiny", train=make_dataset(24, seed=0), heldout=make_dataset(8, seed=1), source="tiny rows")
    return DemoComponents(load_model=tiny_loader, sae=make_sae("standard", d_sae=48, layer=LAYER),
                          judges=[WordJudge()], domains={"tiny": data})


@pytest.fixture
def tiny_config(tmp_path, question_file):
    def build(**overrides) -> DemoConfig:
        settings = dict(
            model="tiny-llama", sae="tiny-sae", domains=[DomainConfig("tiny", "unused.jsonl", judge_metric="financial_risk")],
            num_train=24, num_heldout=8, lora_r=4, lora_alpha=8, learning_rate=5e-3, per_device_train_batch_size=8,
            max_length=32, logging_steps=1, lambdas=[1.0, 10.0], kl_lambdas=[0.5], random_seeds=[0],
            calibration_examples=8, questions=question_file, samples_per_question=2, max_new_tokens=4,
            eval_batch_size=8, indomain_generations=4, bootstrap_samples=50, output_dir=str(tmp_path / "demo"),
            progress=False,
            builder=dict(prompts=question_file, max_prompts=4, num_candidates=3, prescreen=True, prescreen_keep=3,
                         prescreen_audit=0, max_new_tokens=4, batch_size=4, screen_metric="mean_aligned",
                         pass_rule="score", min_score=-1e9, calibration_coefficients=[0.5, 1.0],
                         incoherence_budget=1.0, num_latents=3),
        )
        settings.update(overrides)
        return DemoConfig(**settings)

    return build
