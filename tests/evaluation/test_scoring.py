import math

import pytest

from blockem_trl.evaluation.judges.scoring import score_from_text, score_from_top_logprobs, token_label


def log(p):
    return math.log(p)


def test_weighted_score_hand_value():
    # numbers 0.5 on "80", 0.2 on " 90", 0.1 on "70"; total 0.8 -> (40 + 18 + 7) / 0.8 = 81.25
    judgment = score_from_top_logprobs({"80": log(0.5), " 90": log(0.2), "70": log(0.1), "The": log(0.2)})
    assert judgment.score == pytest.approx(81.25)
    assert judgment.number_mass == pytest.approx(0.8)
    assert judgment.label is None


def test_same_number_tokens_add_up():
    judgment = score_from_top_logprobs({"50": log(0.3), " 50": log(0.3), "101": log(0.4)})
    assert judgment.score == pytest.approx(50.0)
    assert judgment.number_mass == pytest.approx(0.6)


def test_low_number_mass_is_discarded():
    judgment = score_from_top_logprobs({"80": log(0.2), "I": log(0.7)})
    assert judgment.score is None
    assert "0.200" in judgment.error


def test_refusal_label_from_prefix_tokens():
    judgment = score_from_top_logprobs({"REF": log(0.6), "10": log(0.3)})
    assert judgment.label == "REFUSAL"
    assert judgment.score is None


def test_code_label():
    assert score_from_top_logprobs({"CODE": log(0.9)}).label == "CODE"


def test_number_beats_weaker_label():
    judgment = score_from_top_logprobs({"REF": log(0.3), "10": log(0.6)})
    assert judgment.score == pytest.approx(10)


@pytest.mark.parametrize(("token", "label"), [("REF", "REFUSAL"), (" Refusal", "REFUSAL"), ("COD", "CODE"),
                                              ("CODE", "CODE"), ("RE", None), ("Hello", None)])
def test_token_label(token, label):
    assert token_label(token) == label


def test_text_fallback():
    assert score_from_text(" 75").score == 75
    assert score_from_text("REFUSAL").label == "REFUSAL"
    assert score_from_text("Score: 40 out of 100").score == 40
    assert score_from_text("no idea").error is not None
    assert score_from_text("250").error is not None
