"""Train a BatchTopK SAE (saved as a JumpReLU SAE) on cached residual-stream activations with sae-lens.

BatchTopK keeps `k` active latents per token on average over each batch, so the L0 is set directly instead
of being tuned through an L1 coefficient. sae-lens saves the inference model as a JumpReLU SAE with one
shared threshold, whose latents can be encoded one by one (unlike TopK). The loop here feeds shuffled rows of
an activation memmap to `BatchTopKTrainingSAE.training_forward_pass`, the method that the sae-lens runner
calls, and keeps its own record of dead latents for the auxiliary loss.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.sae import SAEMetadata, TrainStepInput
from tqdm.auto import tqdm
from transformers.utils import logging

logger = logging.get_logger(__name__)

TRAINING_STATE_FILENAME = "training_state.pt"
TRAINING_LOG_FILENAME = "training_log.jsonl"
CALIBRATION_ROWS = 8192
"""Validation rows used to calibrate the JumpReLU threshold (more only cost time and memory)."""


@dataclass(frozen=True)
class SAETrainingConfig:
    """Hyperparameters of `train_batchtopk_sae`.

    Attributes:
        d_sae: Number of latents.
        k: Mean number of active latents per token (BatchTopK).
        epochs: Passes over the activation cache.
        batch_size: Tokens per optimizer step.
        lr: Peak Adam learning rate, reached after `warmup_steps` and decayed to 10 % over the last 20 % of steps.
        aux_loss_coefficient: Weight of the auxiliary loss that lets dead latents reconstruct the residual error.
        dead_window_tokens: A latent that has not fired for this many training tokens counts as dead.
        validation_rows: Rows at the end of the cache kept out of training to report validation explained variance.
    """

    d_sae: int = 2048
    k: int = 64
    epochs: int = 3
    batch_size: int = 2048
    lr: float = 1e-3
    warmup_steps: int = 20
    aux_loss_coefficient: float = 1.0
    dead_window_tokens: int = 200_000
    validation_rows: int = 10_000
    seed: int = 0


def activation_scale(activations: np.ndarray, sample: int = 50_000) -> float:
    """Return the factor that scales activations to a mean L2 norm of sqrt(d_in).

    Training on scaled inputs makes the learning rate independent of the residual-stream norm (about 225 at
    `model.layers.19` of SmolLM2-135M-Instruct). The factor is folded into the saved weights afterwards.
    """
    rows = activations[: min(sample, len(activations))].astype(np.float32)
    mean_norm = float(np.linalg.norm(rows, axis=1).mean())
    return math.sqrt(activations.shape[1]) / mean_norm


def _learning_rate(step: int, total: int, config: SAETrainingConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_start = int(0.8 * total)
    if step < decay_start:
        return config.lr
    progress = (step - decay_start) / max(1, total - decay_start)
    return config.lr * (1.0 - 0.9 * progress)


@torch.no_grad()
def explained_variance(sae: BatchTopKTrainingSAE, rows: torch.Tensor, batch_size: int = 4096) -> float:
    """Return 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over `rows`, encoding with the BatchTopK rule."""
    residual = 0.0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        residual += float((sae(batch) - batch).pow(2).sum())
    total = float((rows - rows.mean(dim=0)).pow(2).sum())
    return 1.0 - residual / total


@torch.no_grad()
def calibrate_threshold(sae: BatchTopKTrainingSAE, rows: torch.Tensor, k: int) -> float:
    """Set the SAE's BatchTopK threshold so that exactly `k` latents per row fire on average on `rows`.

    sae-lens saves the inference model as a JumpReLU SAE whose threshold is `topk_threshold`, a running average
    of the smallest kept activation that starts at 0. After a few hundred steps that average still lags, so
    the inference L0 would differ from `k`. Here the threshold becomes the (k * rows)-th largest
    (decoder-norm-scaled) pre-activation instead.

    Returns:
        The new threshold, in the units of the scaled training inputs.
    """
    _, hidden_pre = sae.encode_with_hidden_pre(rows)
    values = hidden_pre.relu().flatten()
    kth_largest = torch.topk(values, k * len(rows)).values[-1]
    sae.topk_threshold = kth_largest.to(sae.topk_threshold.dtype)
    return float(kth_largest)


def train_batchtopk_sae(
    activations: np.ndarray,
    config: SAETrainingConfig,
    work_dir: str | Path,
    metadata: dict,
) -> BatchTopKTrainingSAE:
    """Train a BatchTopK SAE on the rows of `activations` and return it with the input scale folded in.

    The training state (weights, optimizer, step, dead-latent counters) is saved to `work_dir` after every
    epoch, and a call with the same `work_dir` resumes from it. One JSON line per logging step is appended to
    `work_dir/training_log.jsonl`.

    Args:
        activations: `[rows, d_in]` array, typically the float16 memmap from `open_activations`.
        config: Hyperparameters.
        work_dir: Folder for the training state and the log.
        metadata: Entries for `cfg.metadata` of the saved SAE (`model_name`, `hook_name`, ...).
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    d_in = activations.shape[1]
    train_rows = len(activations) - config.validation_rows
    if train_rows < config.batch_size:
        raise ValueError(
            f"The activation cache has {len(activations)} rows, too few for {config.validation_rows} validation rows "
            f"and one batch of {config.batch_size}. Collect more activations or lower validation_rows."
        )

    scale = activation_scale(activations[:train_rows])
    sae_config = BatchTopKTrainingSAEConfig(
        d_in=d_in,
        d_sae=config.d_sae,
        k=config.k,
        aux_loss_coefficient=config.aux_loss_coefficient,
        dtype="float32",
        device="cpu",
        metadata=SAEMetadata(**metadata),
    )
    sae = BatchTopKTrainingSAE(sae_config)
    with torch.no_grad():
        sample = torch.from_numpy(activations[: min(train_rows, 50_000)].astype(np.float32)) * scale
        sae.b_dec.copy_(sample.mean(dim=0))

    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr, betas=(0.9, 0.999))
    steps_per_epoch = train_rows // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    dead_window_steps = max(1, config.dead_window_tokens // config.batch_size)
    steps_since_fired = torch.zeros(config.d_sae, dtype=torch.long)
    step = 0
    seconds = 0.0

    state_path = work_dir / TRAINING_STATE_FILENAME
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        if state["config"] != asdict(config) or state["train_rows"] != train_rows:
            raise ValueError(
                f"{state_path} was saved for {state['config']} on {state['train_rows']} rows, not {asdict(config)} on "
                f"{train_rows} rows. Delete the file to start over, or pass the same settings and cache."
            )
        sae.load_state_dict(state["sae"])
        optimizer.load_state_dict(state["optimizer"])
        steps_since_fired = state["steps_since_fired"]
        step, seconds = state["step"], state["seconds"]
        logger.warning("Resuming SAE training from step %d of %d (%s).", step, total_steps, state_path)

    validation = torch.from_numpy(activations[train_rows:].astype(np.float32)) * scale
    log_file = (work_dir / TRAINING_LOG_FILENAME).open("a", encoding="utf-8")
    bar = tqdm(total=total_steps, initial=step, desc="SAE training", unit="step")
    generator = np.random.default_rng(config.seed)
    permutations = [generator.permutation(train_rows) for _ in range(config.epochs)]

    while step < total_steps:
        epoch, index_in_epoch = divmod(step, steps_per_epoch)
        started = time.perf_counter()
        indices = np.sort(permutations[epoch][index_in_epoch * config.batch_size : (index_in_epoch + 1) * config.batch_size])
        batch = torch.from_numpy(activations[indices].astype(np.float32)) * scale

        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, total_steps, config)
        output = sae.training_forward_pass(
            TrainStepInput(
                sae_in=batch,
                coefficients={},
                dead_neuron_mask=steps_since_fired > dead_window_steps,
                n_training_steps=step,
                is_logging_step=False,
            )
        )
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()

        fired = (output.feature_acts > 0).any(dim=0)
        steps_since_fired += 1
        steps_since_fired[fired] = 0
        step += 1
        seconds += time.perf_counter() - started
        bar.update(1)

        end_of_epoch = step % steps_per_epoch == 0
        if step % 25 == 0 or end_of_epoch:
            record = {
                "step": step,
                "epoch": step / steps_per_epoch,
                "tokens": step * config.batch_size,
                "seconds": round(seconds, 1),
                "lr": optimizer.param_groups[0]["lr"],
                "mse_loss": float(output.losses["mse_loss"].detach()),
                "l0": float((output.feature_acts > 0).sum(dim=-1).float().mean()),
                "dead_fraction": float((steps_since_fired > dead_window_steps).float().mean()),
            }
            if end_of_epoch:
                record["validation_explained_variance"] = explained_variance(sae, validation)
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            bar.set_postfix(mse=f"{record['mse_loss']:.3f}", l0=f"{record['l0']:.0f}", dead=f"{record['dead_fraction']:.3f}")
        if end_of_epoch:
            torch.save(
                {
                    "config": asdict(config),
                    "train_rows": train_rows,
                    "sae": sae.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "steps_since_fired": steps_since_fired,
                    "step": step,
                    "seconds": seconds,
                },
                state_path,
            )
    bar.close()
    log_file.close()

    threshold = calibrate_threshold(sae, validation[:CALIBRATION_ROWS], config.k)
    logger.info("JumpReLU threshold calibrated to %.4f for a mean L0 of %d on validation rows.", threshold, config.k)
    sae.cfg.metadata.training_seconds = round(seconds, 1)
    sae.cfg.metadata.training_tokens = total_steps * config.batch_size
    sae.fold_activation_norm_scaling_factor(scale)
    return sae
