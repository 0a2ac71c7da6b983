import math

import pytest
import torch
from torch import nn

from blockem_trl.evaluation.judges.base import JudgeRequest
from blockem_trl.evaluation.judges.ensemble import EnsembleJudge, combine_judgments
from blockem_trl.evaluation.judges.base import Judgment
from blockem_trl.evaluation.judges.transformers_judge import TransformersJudge

from .conftest import CHAT_TEMPLATE


class FixedNextToken(nn.Module):
    """Stands in for a causal LM whose next-token distribution is fixed: p(70)=0.6, p(100)=0.2, p(REF)=0.2."""

    def __init__(self, vocab):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        logits = torch.full((len(vocab),), -1e4)
        for token, probability in (("70", 0.6), ("100", 0.2), ("REF", 0.2)):
            logits[vocab[token]] = math.log(probability)
        self.register_buffer("next_logits", logits)
        self.config = type("Config", (), {"name_or_path": "fixed-next-token"})()

    def forward(self, input_ids, attention_mask=None):
        logits = self.next_logits.expand(input_ids.shape[0], input_ids.shape[1], -1) * self.scale
        return type("Output", (), {"logits": logits})()


@pytest.fixture()
def number_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "70", "100", "REF", "Q", "A"]
    vocab = {token: index for index, token in enumerate(tokens)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="<|im_end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer, vocab


def test_weighted_score_from_next_token(number_tokenizer):
    tokenizer, vocab = number_tokenizer
    judge = TransformersJudge(model=FixedNextToken(vocab), tokenizer=tokenizer)
    requests = [JudgeRequest("aligned", "Q", "A", "{question} {answer}")] * 3
    judgments = judge.score(requests)
    # numbers: 0.6 on 70 and 0.2 on 100 -> (42 + 20) / 0.8 = 77.5; REF (0.2) is weaker than the numbers
    assert [j.score for j in judgments] == [pytest.approx(77.5)] * 3
    assert judgments[0].number_mass == pytest.approx(0.8)
    assert judge.name == "transformers:fixed-next-token"
    assert tokenizer.padding_side == "right"


def test_random_tiny_model_reports_low_mass(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    judge = TransformersJudge(model=model, tokenizer=tokenizer)
    [judgment] = judge.score([JudgeRequest("coherent", "w1", "w2", "{question} {answer}")])
    assert judgment.score is None
    assert judge.stats.low_number_mass == 1


def test_needs_model_or_path():
    with pytest.raises(ValueError, match="model_name_or_path"):
        TransformersJudge()


def test_ensemble_mean_and_majority_label(number_tokenizer):
    tokenizer, vocab = number_tokenizer
    first = TransformersJudge(model=FixedNextToken(vocab), tokenizer=tokenizer, name="first")
    second = TransformersJudge(model=FixedNextToken(vocab), tokenizer=tokenizer, name="second")
    ensemble = EnsembleJudge([first, second])
    [judgment] = ensemble.score([JudgeRequest("aligned", "Q", "A", "{question} {answer}")])
    assert judgment.score == pytest.approx(77.5)
    assert set(ensemble.last_member_judgments) == {"first", "second"}
    assert combine_judgments([Judgment(label="REFUSAL"), Judgment(label="REFUSAL"), Judgment(score=5)]).label == "REFUSAL"
    assert combine_judgments([Judgment(score=20), Judgment(score=60), Judgment(error="x")]).score == 40
    assert combine_judgments([Judgment(error="x")]).error is not None
