import pytest
import torch
from tests.factories import make_model
from peft import LoraConfig, get_peft_model
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from blockem_trl.hooks import (
    add_to_residual,
    capture_residual,
    find_decoder_layers,
    get_decoder_layer,
    get_hook_module,
    hook_point_for_layer,
    layer_index_from_hook_point,
    run_until_captured,
)

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, vocab_size=64)

FAMILIES = {
    "llama": (make_model, "model.layers"),
    "qwen2": (lambda: Qwen2ForCausalLM(Qwen2Config(**SMALL)), "model.layers"),
    "gemma": (lambda: GemmaForCausalLM(GemmaConfig(head_dim=8, **SMALL)), "model.layers"),
    "mistral": (lambda: MistralForCausalLM(MistralConfig(**SMALL)), "model.layers"),
    "gpt2": (lambda: GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=64)), "transformer.h"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_capture_matches_hidden_states(family):
    factory, path = FAMILIES[family]
    model = factory().eval()
    assert find_decoder_layers(model)[0] == path
    assert hook_point_for_layer(model, 1) == f"{path}.1"
    input_ids = torch.randint(0, 64, (2, 5))
    with capture_residual(get_decoder_layer(model, 1)) as capture:
        outputs = model(input_ids=input_ids, output_hidden_states=True)
    # Layer convention: block L's output is hidden_states[L + 1].
    torch.testing.assert_close(capture.output, outputs.hidden_states[2])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_decoder_layers_found_through_peft(family):
    factory, path = FAMILIES[family]
    peft_model = get_peft_model(factory(), LoraConfig(r=2, target_modules="all-linear"))
    assert find_decoder_layers(peft_model)[0] == path
    assert get_hook_module(peft_model, f"{path}.2") is get_decoder_layer(peft_model, 2)


def test_hook_removed_after_block_and_after_error():
    model = make_model()
    layer = get_decoder_layer(model, 0)
    with capture_residual(layer):
        assert len(layer._forward_hooks) == 1
    assert len(layer._forward_hooks) == 0
    with pytest.raises(RuntimeError):
        with capture_residual(layer):
            raise RuntimeError("boom")
    assert len(layer._forward_hooks) == 0


def test_stop_early_captures_and_skips_upper_layers():
    model = make_model().eval()
    input_ids = torch.randint(0, 64, (1, 4))
    reached = []
    handle = get_decoder_layer(model, 2).register_forward_hook(lambda *_: reached.append(True))
    try:
        with capture_residual(get_decoder_layer(model, 1), stop=True) as capture:
            run_until_captured(model, input_ids=input_ids)
    finally:
        handle.remove()
    assert capture.output is not None
    assert reached == []
    torch.testing.assert_close(capture.output, model(input_ids=input_ids, output_hidden_states=True).hidden_states[2])


def test_layer_outside_model_rejected():
    with pytest.raises(ValueError, match="Layer index 3 is outside LlamaForCausalLM, which has 3 decoder layers"):
        get_decoder_layer(make_model(), 3)


def test_unknown_hook_point_rejected():
    with pytest.raises(ValueError, match="not found in LlamaForCausalLM"):
        get_hook_module(make_model(), "model.blocks.1")


def test_layer_index_parsing():
    assert layer_index_from_hook_point("model.layers.19") == 19
    assert layer_index_from_hook_point("blocks.7.hook_resid_post") == 7
    with pytest.raises(ValueError, match="Invalid hook point"):
        layer_index_from_hook_point("model.norm")


def test_steering_adds_vector_and_is_removed():
    model = make_model().eval()
    input_ids = torch.randint(0, 64, (1, 4))
    layer = get_decoder_layer(model, 1)
    vector = torch.randn(32)
    with torch.no_grad():
        with capture_residual(layer) as clean:
            clean_logits = model(input_ids=input_ids).logits
        # Hooks run in registration order, so a capture registered after the steering hook sees its result.
        with add_to_residual(layer, vector), capture_residual(layer) as steered:
            steered_logits = model(input_ids=input_ids).logits
        after_logits = model(input_ids=input_ids).logits
    torch.testing.assert_close(steered.output, clean.output + vector)
    assert not torch.allclose(steered_logits, clean_logits)
    torch.testing.assert_close(after_logits, clean_logits)
    assert len(layer._forward_hooks) == 0


def test_steering_mask_limits_positions():
    model = make_model().eval()
    input_ids = torch.randint(0, 64, (1, 4))
    layer = get_decoder_layer(model, 1)
    vector = torch.ones(32)
    mask = torch.tensor([[False, False, True, True]])
    with torch.no_grad():
        with capture_residual(layer) as clean:
            model(input_ids=input_ids)
        with add_to_residual(layer, vector, position_mask=mask), capture_residual(layer) as steered:
            model(input_ids=input_ids)
    difference = steered.output - clean.output
    assert difference[0, :2].abs().max() == 0
    torch.testing.assert_close(difference[0, 2:], torch.ones(2, 32))
