"""The base and misaligned models as one object: two models, or one PEFT model with its adapter on or off."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

ADAPTER_CONFIG_FILENAME = "adapter_config.json"


def model_fingerprint(model: nn.Module, skip: tuple[str, ...] = ()) -> str:
    """Return a short SHA-256 over every parameter's name, shape and first 64 values.

    It changes when weights are trained or an adapter is swapped, at a cost far below hashing all weights.
    Parameters whose name contains one of ``skip`` are left out.
    """
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        if any(part in name for part in skip):
            continue
        digest.update(name.encode())
        digest.update(str(tuple(parameter.shape)).encode())
        head = parameter.detach().reshape(-1)[:64].to("cpu", torch.float32).contiguous()
        digest.update(head.numpy().tobytes())
    return digest.hexdigest()[:16]


def _is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


class ModelPair:
    """The two models compared by the builder, behind the `base()` and `misaligned()` context managers.

    Accepts a base model plus either a separate misaligned model, a merged checkpoint folder, or a LoRA
    adapter folder. An adapter folder is loaded onto the base model with PEFT, which modifies the base
    model in place; `close()` removes the adapter again. A `peft.PeftModel` passed as the misaligned
    model is used with its adapter disabled as the base, so ``base_model`` may then be None.
    """

    def __init__(self, base_model: nn.Module | None, misaligned: nn.Module | str | os.PathLike,
                 base_name: str | None = None):
        self._loaded_adapter = False
        self.misaligned_name = None
        if isinstance(misaligned, (str, os.PathLike)):
            self.misaligned_name = str(misaligned)
            misaligned = self._load_misaligned(base_model, Path(misaligned))
        self.misaligned_model = misaligned
        self.shared = _is_peft_model(misaligned) and (base_model is None or _base_of(misaligned) is base_model)
        if base_model is None and not self.shared:
            raise ValueError(
                "No base model given, and the misaligned model is not a PEFT model whose adapter can be turned off. "
                "Pass the base model too."
            )
        self.base_model = _base_of(misaligned) if self.shared else base_model
        self.base_name = base_name or getattr(getattr(self.base_model, "config", None), "name_or_path", None)
        if self.misaligned_name is None:
            self.misaligned_name = getattr(getattr(misaligned, "config", None), "name_or_path", None)

    def _load_misaligned(self, base_model: nn.Module | None, path: Path) -> nn.Module:
        if not path.is_dir():
            raise FileNotFoundError(
                f"Misaligned model folder {path} not found. Pass a merged checkpoint or a LoRA adapter folder."
            )
        if (path / ADAPTER_CONFIG_FILENAME).is_file():
            if base_model is None:
                raise ValueError(f"{path} is a LoRA adapter folder; pass the base model it was trained on too.")
            from peft import PeftModel

            logger.info("Loading the LoRA adapter %s onto the base model.", path)
            self._loaded_adapter = True
            return PeftModel.from_pretrained(base_model, str(path), is_trainable=False)
        from transformers import AutoModelForCausalLM

        logger.info("Loading the merged misaligned checkpoint %s.", path)
        dtype = next(base_model.parameters()).dtype if base_model is not None else torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        if base_model is not None:
            model.to(next(base_model.parameters()).device)
        return model

    @contextmanager
    def base(self) -> Iterator[nn.Module]:
        """Yield the base model (the PEFT model with its adapter turned off when the weights are shared)."""
        if self.shared:
            with self.misaligned_model.disable_adapter():
                yield self.misaligned_model
        else:
            with nullcontext():
                yield self.base_model

    @contextmanager
    def misaligned(self) -> Iterator[nn.Module]:
        yield self.misaligned_model

    def model(self, which: str):
        """Return the context manager for ``"base"`` or ``"misaligned"``."""
        if which == "base":
            return self.base()
        if which == "misaligned":
            return self.misaligned()
        raise ValueError(f"Unknown model {which!r}; use 'base' or 'misaligned'.")

    def identity(self) -> dict:
        """Return names and parameter fingerprints of both models (part of the stage-1 settings hash)."""
        with self.base() as base:
            base_fingerprint = model_fingerprint(base, skip=("lora_",))
        return {
            "base": self.base_name,
            "misaligned": self.misaligned_name,
            "base_fingerprint": base_fingerprint,
            "misaligned_fingerprint": model_fingerprint(self.misaligned_model),
        }

    def close(self) -> None:
        """Remove an adapter this pair loaded onto the base model, restoring the base model's modules."""
        if self._loaded_adapter:
            self.misaligned_model.unload()
            self._loaded_adapter = False


def _base_of(peft_model: nn.Module) -> nn.Module:
    return peft_model.get_base_model()
