"""One BLOCK-EM optimizer step on the tiny test model, run by `tests/test_distributed.py`.

The test runs this file with plain ``python`` for the single-process reference and with
``accelerate launch --multi_gpu --num_processes 2`` (CPU processes, gloo backend) for the distributed run.
Every process builds the same model, LoRA adapter and SAE from fixed seeds. Process 0 writes the logged
metrics and the LoRA update of the step to ``--output`` with `torch.save`.

Usage: ``python tests/distributed_worker.py --output result.pt --per_device_batch_size 4 [--check_fsdp2]``
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
    spec = importlib.util.spec_from_file_location("blockem_tests_factories", _TESTS / "factories.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_trainer(output_dir: str, per_device_batch_size: int, gradient_accumulation_steps: int = 1, **config):
    """Build the test trainer: tiny Llama, random LoRA adapter, SAE at layer 1, ``block_lambda=1e3``, SGD."""
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
    return BlockEMSFTTrainer(
        model=factories.make_model(),
        args=args,
        train_dataset=factories.make_dataset(),
        processing_class=factories.make_tokenizer(),
        # init_lora_weights=False starts from a random adapter, so the penalty is non-zero from the first step.
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
        latent_set=latent_set,
        sae=sae,
    )


def run_step(output_dir: str, per_device_batch_size: int, gradient_accumulation_steps: int = 2) -> dict:
    """Train one SGD step and return the logged metrics and the LoRA update.

    Returns a dict with ``logs`` (the first `log_history` entry, identical on every process) and
    ``update`` (parameter name to ``after - before`` for every trainable parameter, as full tensors).
    """
    trainer = build_trainer(output_dir, per_device_batch_size, gradient_accumulation_steps)
    before = _full_trainable_state(trainer)
    trainer.train()
    after = _full_trainable_state(trainer)
    return {
        "logs": trainer.state.log_history[0],
        "update": {name: after[name] - before[name] for name in before},
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "sharded_parameters": _is_sharded(trainer.model),
    }


def check_fsdp2(output_dir: str, rows: int = 4) -> dict:
    """Compare `compute_loss` on an FSDP2-sharded model (2 processes) with the unsharded model on the same rows.

    accelerate 1.16 enables FSDP only on accelerator devices, so on CPU this shards the PEFT model with
    `torch.distributed.fsdp.fully_shard` the way accelerate's FSDP2 preparation does (each decoder layer,
    then the root) and marks the trainer as running under FSDP. The unsharded reference sees all ``rows``
    rows at once. Each sharded process sees its own slice, normalised by the token counts of all rows.
    Returns the penalty and the full gradients of both runs.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from blockem_trl.hooks import find_decoder_layers

    trainer = build_trainer(output_dir, per_device_batch_size=rows)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    examples = [trainer.train_dataset[i] for i in range(rows)]
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1

    # Reference: the unsharded model on all rows, normalised by this batch's own token counts.
    reference_loss = trainer.compute_loss(model, trainer.data_collator(examples))
    reference_loss.backward()
    reference_gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    reference_penalty = trainer._metrics["train"]["blockem/penalty"][-1]
    model.zero_grad(set_to_none=True)

    for layer in find_decoder_layers(model)[1]:
        fully_shard(layer)
    fully_shard(model)
    trainer.is_fsdp_enabled = True

    # Normalise like the training loop does: by the counts over every process's rows.
    full_batch = trainer.data_collator(examples)
    num_items_in_batch = (full_batch["labels"][:, 1:] != -100).sum()
    trainer._penalty_tokens_in_step = trainer._token_mask(full_batch).sum()
    per_process = rows // world_size
    local_batch = trainer.data_collator(examples[rank * per_process : (rank + 1) * per_process])
    sharded_loss = trainer.compute_loss(model, local_batch, num_items_in_batch=num_items_in_batch)
    sharded_loss.backward()
    sharded_gradients = {
        name: p.grad.full_tensor().clone() for name, p in model.named_parameters() if p.requires_grad
    }
    return {
        "reference_penalty": reference_penalty,
        "sharded_penalty": trainer._metrics["train"]["blockem/penalty"][-1],
        "reference_gradients": reference_gradients,
        "sharded_gradients": sharded_gradients,
        "sharded_parameters": _is_sharded(model),
    }


def map_squares(count: int) -> list[str]:
    """Square ``range(count)`` with `map_across_processes`, passing each item's index as an aligned sequence."""
    from blockem_trl.distributed import map_across_processes

    def square(share, labels):
        return [f"{label}:{item * item}" for item, label in zip(share, labels)]

    return map_across_processes(square, list(range(count)), [str(i) for i in range(count)])


def _is_sharded(model) -> bool:
    wrapped = any("_fsdp_wrapped_module" in name for name, _ in model.named_modules())
    return wrapped or any(hasattr(parameter, "full_tensor") for parameter in model.parameters())


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
    parser.add_argument(
        "--check_fsdp2", action="store_true", help="Also run `check_fsdp2` (needs 2 launched processes)."
    )
    options = parser.parse_args()

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as output_dir:
        result = run_step(output_dir, options.per_device_batch_size, options.gradient_accumulation_steps)
        if options.check_fsdp2:
            result["fsdp2"] = check_fsdp2(output_dir)
        result["mapped"] = map_squares(7)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(result, options.output)


if __name__ == "__main__":
    sys.exit(main())
