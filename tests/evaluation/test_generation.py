import pytest
import torch

from blockem_trl.evaluation.generation import (
    GenerationSettings,
    SteeringSpec,
    as_messages,
    generate_answers,
    generate_for_questions,
)
from blockem_trl.evaluation.questions import Question, QuestionSet

PROMPTS = ["w1 w2 w3 w4 w5", "w6", "w7 w8"]


def test_sampling_is_deterministic_under_seed(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    settings = GenerationSettings(max_new_tokens=6, temperature=1.0, batch_size=2, seed=7)
    first = generate_answers(model, tokenizer, PROMPTS, settings, progress=False)
    second = generate_answers(model, tokenizer, PROMPTS, settings, progress=False)
    assert first == second
    other = generate_answers(model, tokenizer, PROMPTS, GenerationSettings(max_new_tokens=6, seed=8), progress=False)
    assert other != first


def test_greedy_left_padding_matches_single_prompts(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    settings = GenerationSettings(max_new_tokens=6, temperature=0, batch_size=8)
    batched = generate_answers(model, tokenizer, PROMPTS, settings, progress=False)
    alone = [generate_answers(model, tokenizer, [prompt], settings, progress=False)[0] for prompt in PROMPTS]
    assert batched == alone
    assert tokenizer.padding_side == "right"  # restored after generation


def test_chat_template_gets_generation_prompt(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    messages = as_messages("w1", system="w2")
    assert messages == [{"role": "system", "content": "w2"}, {"role": "user", "content": "w1"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")


def test_steering_changes_output_and_is_removed(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    settings = GenerationSettings(max_new_tokens=6, temperature=0)
    plain = generate_answers(model, tokenizer, PROMPTS, settings, progress=False)
    direction = torch.randn(64, generator=torch.Generator().manual_seed(0))
    spec = SteeringSpec("model.layers.1", direction, coefficient=40.0, name="random")
    steered = generate_answers(model, tokenizer, PROMPTS, settings, steering=spec, progress=False)
    assert steered != plain
    layer = model.model.layers[1]
    assert not layer._forward_hooks
    assert generate_answers(model, tokenizer, PROMPTS, settings, progress=False) == plain


def test_zero_coefficient_steering_is_identity(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    settings = GenerationSettings(max_new_tokens=5, temperature=0)
    spec = SteeringSpec("model.layers.0", torch.ones(64), coefficient=0.0)
    assert generate_answers(model, tokenizer, PROMPTS, settings, steering=spec, progress=False) == \
        generate_answers(model, tokenizer, PROMPTS, settings, progress=False)


def test_steering_only_generated_positions(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    settings = GenerationSettings(max_new_tokens=5, temperature=0)
    direction = torch.randn(64, generator=torch.Generator().manual_seed(1))
    everywhere = SteeringSpec("model.layers.1", direction, 40.0)
    decode_only = SteeringSpec("model.layers.1", direction, 40.0, steer_prompt=False)
    first_everywhere = generate_answers(model, tokenizer, PROMPTS, settings, steering=everywhere, progress=False)
    first_decode_only = generate_answers(model, tokenizer, PROMPTS, settings, steering=decode_only, progress=False)
    assert first_everywhere != first_decode_only


def test_steering_fingerprint_tracks_direction():
    first = SteeringSpec("model.layers.1", torch.ones(4), 2.0).fingerprint()
    second = SteeringSpec("model.layers.1", torch.ones(4) * 2, 2.0).fingerprint()
    assert first["direction_sha256"] != second["direction_sha256"]


def test_steering_rejects_matrix_direction():
    with pytest.raises(ValueError, match="d_model"):
        SteeringSpec("model.layers.1", torch.ones(2, 4))


def test_missing_chat_template(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    template = tokenizer.chat_template
    tokenizer.chat_template = None
    try:
        with pytest.raises(ValueError, match="chat template"):
            generate_answers(model, tokenizer, ["w1"], progress=False)
    finally:
        tokenizer.chat_template = template


def test_invalid_settings():
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(temperature=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("top_p", 5, r"Invalid top_p 5.0: it must be a number in \(0, 1\]"),
        ("top_p", 0, "Invalid top_p 0.0"),
        ("top_p", float("nan"), "Invalid top_p nan"),
        ("temperature", float("nan"), "Invalid temperature nan"),
        ("temperature", float("inf"), "Invalid temperature inf"),
    ],
)
def test_settings_reject_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**{field: value})


def test_settings_accept_top_p_one():
    assert GenerationSettings(top_p=1).top_p == 1.0


def test_question_set_wrapper_and_on_batch(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    question_set = QuestionSet("tiny", [Question("a", ["w1", "w2"]), Question("b", ["w3"], system="w9")])
    rows = generate_for_questions(model, tokenizer, question_set, 3, GenerationSettings(max_new_tokens=3), progress=False)
    assert [(row["question_id"], row["paraphrase_index"]) for row in rows] == [
        ("a", 0), ("a", 1), ("a", 0), ("b", 0), ("b", 0), ("b", 0)
    ]
    assert rows[3]["system"] == "w9"
    seen = []
    generate_answers(model, tokenizer, PROMPTS, GenerationSettings(max_new_tokens=2, batch_size=2),
                     on_batch=lambda indices, answers: seen.append(indices), progress=False)
    assert seen == [[0, 1], [2]]
