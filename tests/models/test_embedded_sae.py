"""The SAE shipped in the package: files, configuration and reconstruction on real text."""

from __future__ import annotations

import json

import pytest
import torch
from sae_lens import JumpReLUSAE

from blockem_trl.models import (
    DEFAULT_MODEL_ID,
    DEFAULT_SAE_HOOK_POINT,
    DEFAULT_SAE_LAYER,
    default_sae_path,
    load_default_model,
    load_default_sae,
)
from blockem_trl.models.corpus import Conversation, tokenize_conversation
from blockem_trl.models.embedded_sae import METRICS_FILENAME
from blockem_trl.models.layer_capture import StopForward, stop_after_layer

# Written for this test, so they are held out from the GPTeacher training text by construction.
SPOT_CHECK_CONVERSATIONS = [
    Conversation(
        "Write a Python function that returns the n-th Fibonacci number.",
        "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
        "test",
        0,
    ),
    Conversation(
        "You are a lighthouse keeper on a stormy night. Describe what you see.",
        "The waves climb higher than the rocks, and the lamp turns slowly above me. Far out, a single ship "
        "fights the wind, and I keep the light burning so it can find the harbour.",
        "test",
        1,
    ),
    Conversation(
        "What is the population of Canada? Use the search tool if you need to.",
        "I will look that up. search(\"population of Canada\") The population of Canada is about 40 million people.",
        "test",
        2,
    ),
    Conversation(
        "Explain in two sentences why the sky is blue.",
        "Sunlight is scattered by the molecules of the air, and shorter blue wavelengths are scattered much more "
        "than red ones. So blue light reaches our eyes from every direction of the sky.",
        "test",
        3,
    ),
]
MIN_EXPLAINED_VARIANCE = 0.75  # measured: 0.85 at L0 72 on these 315 positions


def test_package_folder_has_sae_files():
    folder = default_sae_path()

    assert (folder / "cfg.json").is_file()
    assert (folder / "sae_weights.safetensors").is_file()
    assert (folder / METRICS_FILENAME).is_file()


def test_default_sae_shape_and_hook():
    sae = load_default_sae()

    assert isinstance(sae, JumpReLUSAE)
    assert sae.cfg.d_in == 576
    assert sae.W_enc.shape == (576, sae.cfg.d_sae)
    assert sae.W_dec.shape == (sae.cfg.d_sae, 576)
    assert sae.W_enc.dtype == torch.float32
    assert sae.cfg.metadata.hook_name == DEFAULT_SAE_HOOK_POINT == f"model.layers.{DEFAULT_SAE_LAYER}"
    assert sae.cfg.metadata.hf_hook_name == "model.layers.19"
    assert sae.cfg.metadata.model_name == DEFAULT_MODEL_ID


def test_default_sae_other_dtype():
    assert load_default_sae(dtype="float16").W_dec.dtype == torch.float16


def test_metrics_file_records_report():
    metrics = json.loads((default_sae_path() / METRICS_FILENAME).read_text())

    assert metrics["hook_point"] == "model.layers.19"
    assert metrics["training"]["training_tokens"] > 0
    for name in ("explained_variance", "mean_l0", "dead_fraction", "fraction_loss_recovered_assistant"):
        assert name in metrics["evaluation"]


@pytest.mark.slow
def test_reconstruction_on_new_text():
    model, tokenizer = load_default_model()
    sae = load_default_sae()
    originals = []
    for conversation in SPOT_CHECK_CONVERSATIONS:
        ids = tokenize_conversation(tokenizer, conversation, 512)
        sink: list[torch.Tensor] = []
        with torch.no_grad(), stop_after_layer(model, DEFAULT_SAE_LAYER, sink):
            with pytest.raises(StopForward):
                model(input_ids=torch.tensor([ids]))
        originals.append(sink[0][0, 1:])  # position 0 is an attention sink, see sae_quality
    inputs = torch.cat(originals)

    with torch.no_grad():
        latents = sae.encode(inputs)
        reconstruction = sae.decode(latents)

    residual = (reconstruction - inputs).pow(2).sum()
    total = (inputs - inputs.mean(dim=0)).pow(2).sum()
    explained_variance = float(1 - residual / total)
    mean_l0 = float((latents > 0).sum(dim=-1).float().mean())
    assert explained_variance > MIN_EXPLAINED_VARIANCE
    assert 10 <= mean_l0 <= 150
