"""`BlockEMSFTTrainer`: TRL's `SFTTrainer` plus the BLOCK-EM latent-blocking penalty."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, TrainingArguments
from trl import SFTConfig, SFTTrainer

from .base_cache import BASE_LATENTS_KEY, BaseLatentsCollator, compute_base_latents
from .config import BlockEMConfig
from .constants import BLOCKING_CONFIG_FILENAME, LAYER_CONVENTION
from .hooks import capture_residual, get_hook_module, hook_point_for_layer, run_until_captured, unwrap_model
from .latents import LatentSet
from .penalty import PenaltyTerms, blocking_penalty_terms
from .sae import LatentEncoder, check_sae_compatibility, load_sae
from .token_loss import micro_batches_in_step, token_mean
from .version import __version__

logger = logging.getLogger(__name__)


class BlockEMSFTTrainer(SFTTrainer):
    """`trl.SFTTrainer` that adds ``block_lambda * L_block`` to the SFT loss.

    ``L_block`` is the squared one-sided drift of the blocked SAE latents away from the base model: K+
    latents pay for rising above the base model, K- latents for falling below it. It is summed over the
    latents and averaged over the selected tokens, normalised over the optimizer step exactly like TRL's
    token loss, so ``block_lambda`` keeps its meaning under gradient accumulation and several processes.

    Swap it in for `SFTTrainer`; everything `SFTTrainer` accepts is accepted and forwarded.

    Args:
        model: as for `SFTTrainer`. The embedded default model id (`blockem_trl.models.DEFAULT_MODEL_ID`)
            is also accepted.
        args: a `BlockEMConfig`. A plain `SFTConfig` or `TrainingArguments` is converted, with the blocking
            fields at their defaults.
        latent_set: a `LatentSet`, or a path or Hub repo id. Defaults to ``args.latent_set``.
        sae: a loaded `sae_lens.SAE` or anything `blockem_trl.sae.load_sae` accepts. Defaults to ``args.sae``,
            then to the SAE recorded in the latent set.
        ref_model: the frozen reference model for ``block_reference="model"``. Defaults to
            ``args.reference_model_name_or_path``, then to a frozen copy of ``model``.

    Example:
        ```python
        trainer = BlockEMSFTTrainer(
            model=model, args=BlockEMConfig(output_dir="out", block_lambda=1e3), train_dataset=dataset,
            peft_config=LoraConfig(r=16, target_modules="all-linear"), latent_set="path/to/latent_set",
        )
        trainer.train()
        ```
    """

    _tag_names = ["trl", "sft", "blockem"]
    _name = "BLOCK-EM SFT"
    _paper = {
        "title": "BLOCK-EM: Preventing Emergent Misalignment by Blocking Causal Features",
        "id": "2602.00767",
        "citation": (
            "@article{ustaomeroglu2026blockem,\n"
            "    title   = {{BLOCK-EM: Preventing Emergent Misalignment by Blocking Causal Features}},\n"
            "    author  = {Muhammed Ustaomeroglu and Guannan Qu},\n"
            "    year    = 2026,\n"
            "    journal = {arXiv preprint arXiv:2602.00767}\n"
            "}"
        ),
    }

    def __init__(
        self,
        model: str | PreTrainedModel | nn.Module,
        args: BlockEMConfig | SFTConfig | TrainingArguments | None = None,
        *sft_args: Any,
        latent_set: LatentSet | str | os.PathLike | None = None,
        sae: Any = None,
        ref_model: PreTrainedModel | str | None = None,
        **sft_kwargs: Any,
    ) -> None:
        model = _resolve_model_id(model)
        args = _as_blockem_config(args, model)
        if args.block_reference == "model":
            ref_model = _build_reference_model(model, args, ref_model)
        elif ref_model is not None:
            raise ValueError(
                f"ref_model was passed but block_reference is {args.block_reference!r}. "
                "Set block_reference='model' in BlockEMConfig to use it."
            )

        # Load and check the latent set and the SAE before SFTTrainer prepares the dataset, which can take minutes.
        self.latent_set = _load_latent_set(latent_set if latent_set is not None else args.latent_set)
        self.block_layer = args.block_layer if args.block_layer is not None else self.latent_set.layer_index
        if self.block_layer != self.latent_set.layer_index:
            logger.warning(
                "block_layer=%d overrides the latent set's layer %d: the SAE latents were found at another layer.",
                self.block_layer,
                self.latent_set.layer_index,
            )
        sae_model = _load_blocking_sae(sae, args, self.latent_set)
        check_sae_compatibility(sae_model, self.latent_set, hidden_size=_hidden_size(model))

        super().__init__(model, args, *sft_args, **sft_kwargs)
        _check_parallelism(self.accelerator)
        if isinstance(self.train_dataset, Dataset) and len(self.train_dataset) == 0:
            raise ValueError(
                "The training dataset is empty after preparation: SFTTrainer drops rows with no supervised token "
                "(for example an empty completion). Check the dataset's completion or assistant turns."
            )

        # Resolving the hook point also checks that the layer exists in this model.
        self.hook_point = hook_point_for_layer(self.model, self.block_layer)
        self.latent_encoder = LatentEncoder(sae_model, self.latent_set.indices).to(self.accelerator.device)
        self.latent_signs = torch.tensor(self.latent_set.signs, dtype=torch.float32, device=self.accelerator.device)

        self.ref_model = None
        if args.block_reference in ("adapter", "cached"):
            _check_has_adapter(self.model, args.block_reference)
        if args.block_reference == "model":
            self.ref_model = self._prepare_reference_model(ref_model)
        elif args.block_reference == "cached":
            self._cache_base_latents()
        self._penalty_tokens_in_step: torch.Tensor | None = None

        if self.is_world_process_zero():
            self.save_blocking_artifacts(args.output_dir)

    # ------------------------------------------------------------------ set-up helpers

    def _prepare_reference_model(self, ref_model: nn.Module) -> nn.Module:
        ref_model.eval()
        ref_model.requires_grad_(False)
        if self.is_deepspeed_enabled:
            from trl.models.utils import prepare_deepspeed

            return prepare_deepspeed(ref_model, self.accelerator)
        if self.is_fsdp_enabled:
            from trl.models.utils import prepare_fsdp

            return prepare_fsdp(ref_model, self.accelerator)
        return self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    def _cache_base_latents(self) -> None:
        """Add the base latents to the prepared datasets and wrap the collator to batch them."""
        if self.args.packing:
            raise ValueError(
                "block_reference='cached' stores base latents per example, but packing=True merges several examples "
                "into one row. Set packing=False (padding_free=True without packing works), or use "
                "block_reference='adapter'."
            )
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        model = self.accelerator.unwrap_model(self.model)

        def cache(dataset, split):
            if not isinstance(dataset, Dataset):
                raise ValueError(
                    f"block_reference='cached' needs a map-style datasets.Dataset, but the {split} dataset is a "
                    f"{type(dataset).__name__}. Use block_reference='adapter' for streaming datasets."
                )
            return compute_base_latents(
                model, dataset, self.latent_encoder, self.hook_point,
                batch_size=self.args.per_device_train_batch_size, pad_token_id=pad_token_id,
                description=f"Caching base latents ({split})",
            )

        self.train_dataset = cache(self.train_dataset, "train")
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {name: cache(data, f"eval {name}") for name, data in self.eval_dataset.items()}
        elif self.eval_dataset is not None:
            self.eval_dataset = cache(self.eval_dataset, "eval")
        self.data_collator = BaseLatentsCollator(self.data_collator, padding_free=self.args.padding_free)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.args.block_reference == "cached" and BASE_LATENTS_KEY not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, BASE_LATENTS_KEY]

    # ------------------------------------------------------------------ loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        cached_base_latents = inputs.pop(BASE_LATENTS_KEY, None)
        token_mask = self._token_mask(inputs)

        with capture_residual(get_hook_module(model, self.hook_point), self.hook_point) as trained:
            outputs = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        sft_loss = outputs[0] if return_outputs else outputs
        if trained.output is None:
            raise RuntimeError(f"The forward pass never reached hook point {self.hook_point!r}.")

        latents = self.latent_encoder(trained.output)
        if cached_base_latents is not None:
            base_latents = cached_base_latents.to(latents.device)
        elif self.args.block_reference == "cached":
            raise ValueError(
                f"block_reference='cached' but the batch has no {BASE_LATENTS_KEY!r}: the data collator was replaced "
                "after the trainer was built. Pass your collator to BlockEMSFTTrainer(data_collator=...) instead."
            )
        else:
            base_latents = self.latent_encoder(self._base_residual(model, inputs))
        terms = blocking_penalty_terms(latents, base_latents, self.latent_signs, token_mask)
        penalty = self._normalise_penalty(terms, num_items_in_batch, mode)
        loss = sft_loss + self.args.block_lambda * penalty

        self._log_blocking_metrics(mode, sft_loss, penalty, terms, num_items_in_batch)
        return (loss, outputs[1]) if return_outputs else loss

    def _token_mask(self, inputs: dict[str, Any]) -> torch.Tensor:
        """Return the tokens the penalty applies to, ``(batch, seq)`` bool."""
        if self.args.block_tokens == "completion":
            return inputs["labels"] != -100
        if "attention_mask" in inputs:
            return inputs["attention_mask"].bool()
        return torch.ones_like(inputs["input_ids"], dtype=torch.bool)  # padding-free batches hold no padding

    def _base_residual(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """Run the base reference on the batch without gradient and return its residual at the hook point."""
        base_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "fused_lm_head")}
        base_inputs["use_cache"] = False
        stop = self.args.block_stop_early and not (self.is_fsdp_enabled or self.is_deepspeed_enabled)
        if self.args.block_reference == "model":
            reference = self.ref_model
            context = _no_context()
        else:
            # Under FSDP the wrapped model must be called so that its root unit gathers the parameters.
            reference = model if self.is_fsdp_enabled else self.accelerator.unwrap_model(model)
            context = _peft_model(reference).disable_adapter()
        with torch.no_grad(), context, _eval_mode(reference):
            with capture_residual(get_hook_module(reference, self.hook_point), self.hook_point, stop=stop) as base:
                run_until_captured(reference, **base_inputs)
        if base.output is None:
            raise RuntimeError(f"The base forward pass never reached hook point {self.hook_point!r}.")
        return base.output

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Collect the micro-batches of one optimizer step and count the penalty's tokens over all of them."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batch_samples:
            count = sum(self._token_mask(batch).sum() for batch in batch_samples).to(device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                count = self.accelerator.gather(count).sum()
            self._penalty_tokens_in_step = count
        return batch_samples, num_items_in_batch

    def _normalise_penalty(
        self, terms: PenaltyTerms, num_items_in_batch: torch.Tensor | int | None, mode: str
    ) -> torch.Tensor:
        """Divide the micro-batch penalty sum the way TRL divides its token loss (see `token_loss.token_mean`)."""
        step_tokens = self._penalty_tokens_in_step if num_items_in_batch is not None else None
        return token_mean(self, terms.penalty_sum, step_tokens=step_tokens, batch_tokens=terms.num_tokens,
                          training=mode == "train")

    def _log_blocking_metrics(self, mode, sft_loss, penalty, terms: PenaltyTerms, num_items_in_batch) -> None:
        # One value per process: `gather_for_metrics` would cut the gathered values to the dataset remainder
        # on the last batch, which is meant for per-sample tensors.
        gather = self.accelerator.gather
        steps = micro_batches_in_step(self, mode == "train", num_items_in_batch)
        num_tokens = gather(terms.num_tokens.reshape(1)).sum().clamp(min=1)
        num_positive = int((self.latent_signs > 0).sum())
        num_negative = len(self.latent_signs) - num_positive
        metrics = self._metrics[mode]
        metrics["blockem/sft_loss"].append(gather(sft_loss.detach().reshape(1)).mean().item() * steps)
        metrics["blockem/penalty"].append(gather(penalty.detach().reshape(1)).mean().item() * steps)
        metrics["blockem/violating_token_fraction"].append(
            (gather(terms.num_violating_tokens.reshape(1)).sum() / num_tokens).item()
        )
        if num_positive:
            drift = gather(terms.positive_drift_sum.reshape(1)).sum() / (num_tokens * num_positive)
            metrics["blockem/positive_drift"].append(drift.item())
        if num_negative:
            drift = gather(terms.negative_drift_sum.reshape(1)).sum() / (num_tokens * num_negative)
            metrics["blockem/negative_drift"].append(drift.item())

    # ------------------------------------------------------------------ saving

    def blocking_settings(self) -> dict[str, Any]:
        """Return the blocking settings of this run, as written to ``blockem_config.json``."""
        return {
            "library_version": __version__,
            "layer_convention": LAYER_CONVENTION,
            "hook_point": self.hook_point,
            "layer_index": self.block_layer,
            "block_lambda": self.args.block_lambda,
            "block_reference": self.args.block_reference,
            "block_tokens": self.args.block_tokens,
            "num_positive": len(self.latent_set.positive),
            "num_negative": len(self.latent_set.negative),
            "sae": self.latent_set.sae.describe(),
            "sae_content_hash": self.latent_set.sae.content_hash,
            "model_name_or_path": _model_name(self.model),
        }

    def save_blocking_artifacts(self, output_dir: str | os.PathLike) -> None:
        """Write the latent set and the blocking settings into ``output_dir`` next to the adapter."""
        directory = Path(output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.latent_set.save_pretrained(directory)
        settings = json.dumps(self.blocking_settings(), indent=2) + "\n"
        (directory / BLOCKING_CONFIG_FILENAME).write_text(settings, encoding="utf-8")

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        self.save_blocking_artifacts(output_dir if output_dir is not None else self.args.output_dir)


# ---------------------------------------------------------------------- module helpers


def _load_latent_set(source: LatentSet | str | os.PathLike | None) -> LatentSet:
    if source is None:
        raise ValueError(
            "No latent set: pass latent_set=LatentSet(...) or a path / Hub repo id to BlockEMSFTTrainer, "
            "or set BlockEMConfig(latent_set=...). Build one with blockem_trl.LatentSetBuilder."
        )
    return source if isinstance(source, LatentSet) else LatentSet.from_pretrained(source)


def _load_blocking_sae(sae: Any, args: BlockEMConfig, latent_set: LatentSet):
    """Load the SAE on the CPU from the argument, the config, or the source recorded in the latent set."""
    if sae is not None and not isinstance(sae, (str, os.PathLike)):
        return load_sae(sae)
    if sae is not None or args.sae is not None:
        return load_sae(sae if sae is not None else args.sae, sae_id=args.sae_id)
    reference = latent_set.sae
    if reference.path is not None:
        return load_sae(reference.path)
    if reference.release is not None:
        return load_sae(reference.release, sae_id=reference.sae_id)
    raise ValueError(
        "No SAE: the latent set records no SAE source. Pass sae=... to BlockEMSFTTrainer or set "
        "BlockEMConfig(sae=..., sae_id=...)."
    )


def _resolve_model_id(model):
    if not isinstance(model, str):
        return model
    try:
        from .models import resolve_model_path
    except ImportError:
        return model
    return resolve_model_path(model)


def _as_blockem_config(args, model) -> BlockEMConfig:
    if isinstance(args, BlockEMConfig):
        return args
    if args is None:
        name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "model")
        return BlockEMConfig(output_dir=f"{str(name).rstrip('/').split('/')[-1]}-BlockEM")
    if isinstance(args, TrainingArguments):
        # Read the fields directly: `to_dict` replaces tokens with placeholders.
        known = BlockEMConfig.__dataclass_fields__
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init and f.name in known}
        return BlockEMConfig(**values)
    raise TypeError(f"args must be a BlockEMConfig, SFTConfig or TrainingArguments, not {type(args).__name__}.")


def _build_reference_model(model, args: BlockEMConfig, ref_model):
    """Return the frozen reference model for ``block_reference='model'``, built before PEFT wraps ``model``."""
    if isinstance(ref_model, str) or (ref_model is None and args.reference_model_name_or_path is not None):
        path = _resolve_model_id(ref_model if ref_model is not None else args.reference_model_name_or_path)
        return _load_reference(path, args)
    if ref_model is not None:
        return ref_model
    if isinstance(model, str):
        return _load_reference(model, args)
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    if hasattr(model, "peft_config"):  # a PeftModel: copy it and drop the adapter layers
        return copy.deepcopy(model).unload()
    return copy.deepcopy(model)


def _load_reference(path: str, args: BlockEMConfig) -> nn.Module:
    # Like SFTTrainer, load in float32 unless model_init_kwargs sets a dtype.
    kwargs = dict(args.model_init_kwargs or {})
    kwargs.setdefault("dtype", torch.float32)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def _check_parallelism(accelerator) -> None:
    """Reject context and sequence parallelism, which split each sequence across processes."""
    config = getattr(accelerator, "parallelism_config", None)
    if config is None:
        return
    if config.cp_enabled or config.sp_enabled:
        raise ValueError(
            f"BlockEMSFTTrainer does not support context parallelism (cp_size={config.cp_size}) or sequence "
            f"parallelism (sp_size={config.sp_size}): the penalty's token count and normalisation assume that "
            "every process holds whole sequences. Set cp_size=1 and sp_size=1 and scale out with data "
            "parallelism (DDP, FSDP or DeepSpeed ZeRO) instead."
        )


def _check_has_adapter(model: nn.Module, mode: str = "adapter") -> None:
    try:
        _peft_model(model)
    except TypeError:
        raise ValueError(
            f"block_reference={mode!r} computes the base activations by disabling the LoRA adapter, but the model "
            "has no PEFT adapter. Pass peft_config=LoraConfig(...) to the trainer, or set "
            "block_reference='model' to run a separate frozen reference model."
        ) from None


def _peft_model(model: nn.Module):
    """Return the PEFT model inside DDP / compile wrappers, or raise TypeError when there is none."""
    while not hasattr(model, "disable_adapter"):
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            raise TypeError(f"{type(model).__name__} has no PEFT adapter.")
    return model


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the base reference without dropout, then restore every module's training flag."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


@contextmanager
def _no_context() -> Iterator[None]:
    yield


def _hidden_size(model: str | nn.Module) -> int | None:
    if isinstance(model, str):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
    else:
        config = getattr(unwrap_model(model), "config", None)
    if config is None:
        return None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text_config, "hidden_size", None) or getattr(text_config, "n_embd", None)


def _model_name(model: nn.Module) -> str | None:
    config = getattr(unwrap_model(model), "config", None)
    return getattr(config, "_name_or_path", None) or None
