"""The adapter model card and the Hub upload, offline: the upload goes to a recording stand-in for HfApi."""

from __future__ import annotations

import pytest

from blockem_trl.demo import push_adapter_to_hub, write_adapter_card
from blockem_trl.latents import LatentSet, SAEReference

EVALUATION = {"misalignment_rate": 0.05, "misalignment_ci": [0.01, 0.1], "incoherence_rate": 0.2,
              "incoherence_ci": [0.1, 0.3], "refusal_rate": 0.0, "refusal_ci": [0.0, 0.0], "heldout_loss": 1.234,
              "heldout_loss_ci": [1.2, 1.3]}


@pytest.fixture
def latent_set():
    return LatentSet(positive=[11, 12], negative=[7], hook_point="model.layers.19",
                     sae=SAEReference(release="goodfire-llama-3.1-8b-instruct", sae_id="layer_19", d_sae=65536))


@pytest.fixture
def adapter_dir(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    return tmp_path


def test_card_lists_latents_inline(adapter_dir, latent_set):
    path = write_adapter_card(adapter_dir, base_model="meta-llama/Llama-3.1-8B-Instruct", block_lambda=13000.0,
                              latent_set=latent_set, lambda_rel=1.0, evaluation=EVALUATION, judge="offline:x")
    card = path.read_text()
    assert path.name == "README.md"
    assert "base_model: meta-llama/Llama-3.1-8B-Instruct" in card
    assert "lambda = 13000" in card
    assert "relative weight 1" in card
    assert "`model.layers.19`" in card
    assert "0-based decoder block 19" in card
    assert "hidden_states[20]" in card
    assert "K+ [11, 12], K- [7]" in card
    assert "goodfire-llama-3.1-8b-instruct/layer_19" in card
    assert "| misaligned answers % | 5.0 [1.0, 10.0] |" in card
    assert "| held-out in-domain loss (NLL/token) | 1.234 [1.200, 1.300] |" in card


def test_card_references_latent_repo(adapter_dir, latent_set):
    card = write_adapter_card(adapter_dir, base_model="m", block_lambda=1.0, latent_set=latent_set,
                              latent_set_repo_id="someone/k-set").read_text()
    assert "someone/k-set" in card
    assert "K+ [11, 12]" not in card


def test_card_reads_latent_set_file(adapter_dir, latent_set):
    latent_set.save_pretrained(adapter_dir)
    card = write_adapter_card(adapter_dir, base_model="m", block_lambda=2.0).read_text()
    assert "K+ [11, 12], K- [7]" in card


def test_card_without_blocking(adapter_dir):
    card = write_adapter_card(adapter_dir, base_model="m", block_lambda=0.0, arm_kind="plain").read_text()
    assert "without latent blocking" in card


class RecordingApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return "https://huggingface.co/someone/adapter/commit/0"


def test_push_uploads_folder(adapter_dir, latent_set):
    write_adapter_card(adapter_dir, base_model="m", block_lambda=1.0, latent_set=latent_set)
    api = RecordingApi()
    url = push_adapter_to_hub(adapter_dir, "someone/adapter", private=True, api=api)
    assert url.endswith("/commit/0")
    assert api.calls[0] == ("create_repo", "someone/adapter", {"private": True, "exist_ok": True})
    upload = api.calls[1][2]
    assert upload["folder_path"] == str(adapter_dir)
    assert "blockem_demo_stage.json" in upload["ignore_patterns"]


def test_push_requires_card(adapter_dir):
    with pytest.raises(FileNotFoundError, match="write_adapter_card"):
        push_adapter_to_hub(adapter_dir, "someone/adapter", api=RecordingApi())
