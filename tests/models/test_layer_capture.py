"""Capturing and replacing the output of one decoder block."""

from __future__ import annotations

import pytest
import torch

from blockem_trl.models.layer_capture import StopForward, decoder_layer, replace_layer_output, stop_after_layer
from tests.factories import NUM_LAYERS, make_model


@pytest.mark.parametrize("layer", range(NUM_LAYERS - 1))
def test_stop_after_layer_matches_hidden_states(layer):
    model = make_model().eval()
    input_ids = torch.tensor([[3, 7, 8, 9, 10]])
    with torch.no_grad():
        expected = model(input_ids=input_ids, output_hidden_states=True).hidden_states[layer + 1]
    sink: list[torch.Tensor] = []

    with torch.no_grad(), stop_after_layer(model, layer, sink):
        with pytest.raises(StopForward):
            model(input_ids=input_ids)

    assert len(sink) == 1
    torch.testing.assert_close(sink[0], expected)


def test_stop_after_layer_removes_hook():
    model = make_model().eval()
    with stop_after_layer(model, 1, []):
        pass

    assert not decoder_layer(model, 1)._forward_hooks


def test_identity_replacement_keeps_logits():
    model = make_model().eval()
    input_ids = torch.tensor([[3, 7, 8, 9]])
    with torch.no_grad():
        clean = model(input_ids=input_ids).logits
        with replace_layer_output(model, 1, lambda hidden: hidden):
            replaced = model(input_ids=input_ids).logits

    torch.testing.assert_close(replaced, clean)


def test_zero_replacement_changes_logits():
    model = make_model().eval()
    input_ids = torch.tensor([[3, 7, 8, 9]])
    with torch.no_grad():
        clean = model(input_ids=input_ids).logits
        with replace_layer_output(model, 1, torch.zeros_like):
            zeroed = model(input_ids=input_ids).logits

    assert not torch.allclose(zeroed, clean)


def test_decoder_layer_out_of_range():
    with pytest.raises(ValueError, match="model.layers.7"):
        decoder_layer(make_model(), 7)
