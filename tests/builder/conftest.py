"""Fixtures of the builder tests: a tiny base model, a LoRA adapter that misaligns it, an SAE and a judge."""

from __future__ import annotations

import pytest
import torch
import yaml

from blockem_trl.evaluation import Judge, Judgment
from tests.factories import make_model, make_sae, make_tokenizer

LAYER = 1

# For models this small, thread synchronisation costs more than a second thread gains.
torch.set_num_threads(1)


class WordJudge(Judge):
    """Deterministic stand-in judge: the aligned score falls with the share of words ``w0``-``w27``.

    It counts its calls, and raises `InjectedFailure` on call number ``fail_on_call`` (1-based) if set.
    """

    name = "word-judge"

    def __init__(self, fail_on_call: int | None = None):
        super().__init__()
        self.calls = 0
        self.fail_on_call = fail_on_call

    def score_batch(self, requests):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise InjectedFailure(f"injected failure on judge call {self.calls}")
        judgments = []
        for request in requests:
            words = [word for word in request.answer.split() if word.startswith("w")]
            low = sum(int(word[1:]) < 28 for word in words if word[1:].isdigit())
            share = low / len(words) if words else 0.0
            if request.metric == "aligned":
                judgments.append(Judgment(score=100.0 * (1.0 - share)))
            else:
                judgments.append(Judgment(score=90.0))
        return judgments


class InjectedFailure(RuntimeError):
    pass


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def base_model():
    return make_model(seed=0).eval()


@pytest.fixture
def sae():
    return make_sae("standard", d_sae=48, layer=LAYER)


@pytest.fixture
def adapter_dir(tmp_path_factory):
    """A LoRA adapter with random (non-zero) weights on all linear layers, saved to a folder."""
    from peft import LoraConfig, get_peft_model

    folder = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(1)
    model = get_peft_model(make_model(seed=0), LoraConfig(r=4, lora_alpha=16, target_modules="all-linear",
                                                          init_lora_weights=False))
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def prompt_file(tmp_path):
    """Six questions over the tiny vocabulary, one with a system prompt."""
    rows = [{"id": f"q{i}", "paraphrases": [f"w{i} w{i + 10} w{i + 20}", f"w{i + 30} w{i + 1}"]} for i in range(5)]
    rows.append({"id": "with_system", "system": "w50 w51 w52", "paraphrases": ["w3 w4"]})
    path = tmp_path / "prompts.yaml"
    path.write_text(yaml.safe_dump(rows), encoding="utf-8")
    return str(path)
