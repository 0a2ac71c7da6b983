import logging

import pytest
import torch
from tests.factories import HIDDEN_SIZE, make_sae
from sae_lens import GatedSAE, GatedSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

from blockem_trl import LatentEncoder, LatentSet, load_sae
from blockem_trl.latents import SAEReference
from blockem_trl.sae import check_sae_compatibility, sae_content_hash, sae_hook_point, sae_reference

INDICES = [0, 5, 11, 30, 47]


def make_gated_sae():
    torch.manual_seed(1)
    sae = GatedSAE(GatedSAEConfig(d_in=HIDDEN_SIZE, d_sae=48, metadata=SAEMetadata(hook_name="model.layers.1")))
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.normal_(0, 0.3)
    return sae


def make_topk_sae():
    torch.manual_seed(2)
    sae = TopKSAE(TopKSAEConfig(d_in=HIDDEN_SIZE, d_sae=48, k=6, metadata=SAEMetadata(hook_name="model.layers.1")))
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.normal_(0, 0.3)
    return sae


@pytest.mark.parametrize(
    "factory", [lambda: make_sae("standard"), lambda: make_sae("jumprelu"), make_gated_sae], ids=["standard", "jumprelu", "gated"]
)
def test_sliced_encode_equals_full_encode(factory):
    sae = factory()
    encoder = LatentEncoder(sae, INDICES)
    assert encoder.sliced
    x = torch.randn(3, 7, HIDDEN_SIZE)
    full = sae.encode(x)[..., INDICES]
    assert full.abs().sum() > 0, "test inputs should activate some latents"
    torch.testing.assert_close(encoder(x), full)


def test_topk_falls_back_to_full_encode(caplog):
    sae = make_topk_sae()
    with caplog.at_level(logging.WARNING):
        encoder = LatentEncoder(sae, INDICES)
    assert not encoder.sliced
    assert "cannot be encoded per latent" in caplog.text
    x = torch.randn(2, 4, HIDDEN_SIZE)
    torch.testing.assert_close(encoder(x), sae.encode(x)[..., INDICES])


def test_encoder_is_frozen_but_passes_gradient():
    sae = make_sae()
    encoder = LatentEncoder(sae, INDICES)
    x = torch.randn(2, 3, HIDDEN_SIZE, requires_grad=True)
    encoder(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in sae.parameters())


def test_encoder_upcasts_bf16_inputs():
    encoder = LatentEncoder(make_sae(), INDICES)
    out = encoder(torch.randn(2, 3, HIDDEN_SIZE, dtype=torch.bfloat16))
    assert out.dtype == torch.float32


def test_load_from_sae_lens_folder(tmp_path):
    sae = make_sae("jumprelu")
    sae.save_model(tmp_path)
    loaded = load_sae(tmp_path)
    assert loaded.cfg.architecture() == "jumprelu"
    assert sae_content_hash(loaded) == sae_content_hash(sae)
    assert sae_hook_point(loaded) == "model.layers.1"


def test_load_folder_without_cfg_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_sae(tmp_path)


def test_folder_without_weights_rejected(tmp_path):
    make_sae("jumprelu").save_model(tmp_path)
    (tmp_path / "sae_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors"):
        load_sae(tmp_path)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_corrupt_cfg_names_the_file(tmp_path, text):
    make_sae("jumprelu").save_model(tmp_path)
    (tmp_path / "cfg.json").write_text(text)
    with pytest.raises(ValueError, match="cfg.json"):
        load_sae(tmp_path)


@pytest.mark.parametrize("suffix", ["missing", "a/b/missing"])
def test_missing_folder_with_sae_id_rejected(tmp_path, suffix):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sae(str(tmp_path / suffix), sae_id="layer_1")


def test_file_instead_of_folder_rejected(tmp_path):
    make_sae("jumprelu").save_model(tmp_path)
    with pytest.raises(ValueError, match="is a file"):
        load_sae(tmp_path / "cfg.json")


def test_corrupt_weights_name_the_folder(tmp_path):
    make_sae("jumprelu").save_model(tmp_path)
    (tmp_path / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="Could not load the SAE in"):
        load_sae(tmp_path)


def test_home_folder_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    make_sae("jumprelu").save_model(tmp_path / "sae")
    assert load_sae("~/sae").cfg.d_sae == make_sae("jumprelu").cfg.d_sae


def test_release_without_sae_id_rejected():
    with pytest.raises(ValueError, match="needs sae_id"):
        load_sae("goodfire-llama-3.1-8b-instruct")


def make_set(sae, **overrides):
    values = dict(positive=[1, 2], negative=[3], hook_point="model.layers.1", sae=sae_reference(sae, "folder"))
    values.update(overrides)
    return LatentSet(**values)


def test_compatibility_accepts_matching_sae():
    sae = make_sae()
    check_sae_compatibility(sae, make_set(sae), hidden_size=HIDDEN_SIZE)


def test_compatibility_rejects_hidden_size_mismatch():
    sae = make_sae()
    with pytest.raises(ValueError, match="d_in=32, but the model's hidden size is 64"):
        check_sae_compatibility(sae, make_set(sae), hidden_size=64)


def test_compatibility_rejects_other_hook():
    sae = make_sae()
    with pytest.raises(ValueError, match="trained at hook point 'model.layers.1'"):
        check_sae_compatibility(sae, make_set(sae, hook_point="model.layers.2"))


def test_compatibility_rejects_other_weights():
    sae = make_sae()
    other = make_sae(seed=3)
    with pytest.raises(ValueError, match="content hash"):
        check_sae_compatibility(other, make_set(sae))


def test_compatibility_rejects_index_outside_width():
    sae = make_sae()
    latents = LatentSet(positive=[100], negative=[], hook_point="model.layers.1", sae=SAEReference(path="x"))
    with pytest.raises(ValueError, match="outside the SAE's width of 48"):
        check_sae_compatibility(sae, latents)
