"""One BLOCK-EM optimizer step on the tiny test model, run by `tests/test_distributed.py`.

The test imports `run_step` for the single-process reference and launches this file with
``accelerate launch --multi_gpu --num_processes 2`` (CPU processes, gloo backend) for the distributed run.
Every process builds the same model, LoRA adapter and SAE from fixed seeds. Process 0 writes the logged
metrics and the LoRA update of the step to ``--output`` with `torch.save`.

Usage: ``python tests/distributed_worker.py --output result.pt --per_device_batch_size 2 [--fsdp]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

_TESTS = Path(__file__).resolve().parent


def _load_conftest():
    # The launched processes are not under pytest, so load the shared factories by path.
    spec = importlib.util.spec_from_file_location("blockem_tests_conftest", _TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_step(
    output_dir: str, per_device_batch_size: int, gradient_accumulation_steps: int = 2, **config
) -> dict:
    """Train one SGD step with ``block_lambda=1e3`` and return the logged metrics and the LoRA update.

    Returns a dict with ``logs`` (the first `log_history` entry, identical on every process) and
    ``update`` (parameter name to ``after - before`` for every trainable parameter, as full tensors).
    """
    from peft import LoraConfig

    from blockem_trl import BlockEMConfig, BlockEMSFTTrainer, LatentSet
    from blockem_trl.sae import sae_reference

    factories = _load_conftest()
    sae = factories.make_sae(layer=1)
    latent_set = LatentSet(
        positive=[1, 2, 3, 4], negative=[5, 6, 7], hook_point="model.layers.1", sae=sae_reference(sae)
    )
    args = BlockEMConfig(
        output_dir=output_dir,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        max_steps=1,
        optim="sgd",
        learning_rate=1e-2,
        per_device_train_batch_size=per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        block_lambda=1e3,
        **config,
    )
    trainer = BlockEMSFTTrainer(
        model=factories.make_model(),
        args=args,
        train_dataset=factories.make_dataset(),
        processing_class=factories.make_tokenizer(),
        # init_lora_weights=False starts from a random adapter, so the penalty is non-zero from the first step.
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
        latent_set=latent_set,
        sae=sae,
    )
    before = _full_trainable_state(trainer)
    trainer.train()
    after = _full_trainable_state(trainer)
    return {
        "logs": trainer.state.log_history[0],
        "update": {name: after[name] - before[name] for name in before},
        "num_processes": trainer.accelerator.num_processes,
    }


def _full_trainable_state(trainer) -> dict[str, torch.Tensor]:
    """Return the trainable parameters as full (unsharded) CPU tensors, keyed by their PEFT names."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    state = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        tensor = parameter.detach()
        if hasattr(tensor, "full_tensor"):  # FSDP2 shards parameters as DTensors
            tensor = tensor.full_tensor()
        state[name.replace("_fsdp_wrapped_module.", "")] = tensor.cpu().clone()
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="File that process 0 writes the result to (torch.save).")
    parser.add_argument("--per_device_batch_size", type=int, required=True, help="Rows per process and micro-batch.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=2, help="Micro-batches per step.")
    options = parser.parse_args()

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as output_dir:
        result = run_step(output_dir, options.per_device_batch_size, options.gradient_accumulation_steps)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(result, options.output)


if __name__ == "__main__":
    sys.exit(main())
