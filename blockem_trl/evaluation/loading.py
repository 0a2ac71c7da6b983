"""Load the model under evaluation: a local folder or Hub id, the embedded default model, plus a PEFT adapter."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

try:  # the embedded model lives in blockem_trl.models, which may be absent in trimmed installs
    from blockem_trl.models.smollm2 import DEFAULT_MODEL_ID, resolve_model_path
except ImportError:  # pragma: no cover - depends on the installed parts
    DEFAULT_MODEL_ID = "blockem/smollm2-135m-instruct"

    def resolve_model_path(name_or_path: str) -> str:
        if name_or_path == DEFAULT_MODEL_ID:
            raise ImportError(f"The embedded model {DEFAULT_MODEL_ID!r} needs blockem_trl.models, which is not installed.")
        return name_or_path


def load_model_and_tokenizer(
    model_name_or_path: str = DEFAULT_MODEL_ID,
    adapter: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
):
    """Load a causal LM and its tokenizer, and apply a PEFT LoRA adapter folder if given.

    The embedded default id (`DEFAULT_MODEL_ID`) maps to the cached SmolLM2-135M-Instruct copy. A tokenizer
    without a pad token gets the eos token as pad token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(adapter or path) if adapter and _has_tokenizer(adapter) else \
        AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        logger.info("Loaded the adapter %s on %s.", adapter, model_name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def _has_tokenizer(folder: str) -> bool:
    from pathlib import Path

    return (Path(folder) / "tokenizer_config.json").is_file()
