"""BatchTopK training loop, threshold calibration and export, on small synthetic activations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sae_lens import SAE, JumpReLUSAE

from blockem_trl.models.sae_training import (
    TRAINING_LOG_FILENAME,
    TRAINING_STATE_FILENAME,
    SAETrainingConfig,
    train_batchtopk_sae,
)
from blockem_trl.models.train_sae import check_targets, export_sae

D_IN = 16


def _sparse_activations(rows: int = 3000, seed: int = 0) -> np.ndarray:
    """Rows built from 3 of 32 random directions each, plus a large shared offset like a residual stream."""
    generator = np.random.default_rng(seed)
    directions = generator.normal(size=(32, D_IN)) * 5
    codes = np.zeros((rows, 32))
    for row in range(rows):
        codes[row, generator.choice(32, 3, replace=False)] = generator.uniform(0.5, 2.0, 3)
    return (codes @ directions + 40.0).astype(np.float16)


def _config(**changes) -> SAETrainingConfig:
    settings = dict(d_sae=64, k=4, epochs=12, batch_size=256, lr=1e-2, warmup_steps=5, validation_rows=500)
    settings.update(changes)
    return SAETrainingConfig(**settings)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("training")
    activations = _sparse_activations()
    sae = train_batchtopk_sae(activations, _config(), work_dir, {"hook_name": "model.layers.1", "model_name": "tiny"})
    return sae, activations, work_dir


def _inference_metrics(sae: SAE, rows: np.ndarray) -> tuple[float, float]:
    inputs = torch.from_numpy(rows.astype(np.float32))
    with torch.no_grad():
        latents = sae.encode(inputs)
        reconstruction = sae.decode(latents)
    variance = 1 - float((reconstruction - inputs).pow(2).sum() / (inputs - inputs.mean(0)).pow(2).sum())
    return variance, float((latents > 0).sum(-1).float().mean())


def test_exported_sae_reconstructs(trained, tmp_path):
    sae, activations, _ = trained
    export_sae(sae, tmp_path)
    loaded = SAE.load_from_disk(tmp_path)

    variance, l0 = _inference_metrics(loaded, activations[-500:])

    assert isinstance(loaded, JumpReLUSAE)
    assert loaded.W_enc.dtype == torch.float32
    assert variance > 0.8
    assert 2 <= l0 <= 6


def test_export_stores_matrices_float16(trained, tmp_path):
    from safetensors.torch import load_file

    export_sae(trained[0], tmp_path)
    weights = load_file(tmp_path / "sae_weights.safetensors")

    assert weights["W_enc"].dtype == torch.float16
    assert weights["W_dec"].dtype == torch.float16
    assert weights["threshold"].dtype == torch.float32
    assert json.loads((tmp_path / "cfg.json").read_text())["metadata"]["hook_name"] == "model.layers.1"


def test_log_and_state_written(trained):
    _, _, work_dir = trained
    records = [json.loads(line) for line in (work_dir / TRAINING_LOG_FILENAME).read_text().splitlines()]

    assert (work_dir / TRAINING_STATE_FILENAME).is_file()
    assert records[-1]["epoch"] == 12
    assert "validation_explained_variance" in records[-1]


def test_resume_skips_finished_steps(trained, monkeypatch):
    _, activations, work_dir = trained

    def fail(self, step_input):
        raise AssertionError("a finished run should not train again")

    monkeypatch.setattr("sae_lens.BatchTopKTrainingSAE.training_forward_pass", fail)
    sae = train_batchtopk_sae(activations, _config(), work_dir, {"hook_name": "model.layers.1"})

    assert sae.cfg.d_sae == 64


def test_resume_with_other_settings_rejected(trained):
    _, activations, work_dir = trained

    with pytest.raises(ValueError, match="Delete the file"):
        train_batchtopk_sae(activations, _config(k=8), work_dir, {})


def test_too_few_rows_rejected(tmp_path):
    with pytest.raises(ValueError, match="too few"):
        train_batchtopk_sae(_sparse_activations(rows=600), _config(), tmp_path, {})


def test_check_targets_reports_each_metric():
    passing = {"explained_variance": 0.85, "fraction_loss_recovered_assistant": 0.95, "mean_l0": 60, "dead_fraction": 0.01}
    failing = {"explained_variance": 0.7, "fraction_loss_recovered_assistant": 0.8, "mean_l0": 150, "dead_fraction": 0.2}

    assert all(check_targets(passing).values())
    assert not any(check_targets(failing).values())
