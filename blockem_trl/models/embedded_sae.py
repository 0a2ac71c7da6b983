"""The embedded default SAE: a JumpReLU SAE on the residual stream of SmolLM2-135M-Instruct after block 19.

Layer convention: the SAE reads the output of decoder block 19 (0-based), `model.model.layers[19]`, hook point
`model.layers.19`, which equals `hidden_states[20]` ("layer 20" when counting from 1). The weights ship
inside the package in the sae-lens folder format (`cfg.json` + `sae_weights.safetensors`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sae_lens import SAE

DEFAULT_SAE_ID = "blockem/smollm2-135m-instruct-l19-sae"
"""SAE id that `blockem_trl.sae.load_sae` and the command line map to the folder from `default_sae_path`."""

DEFAULT_SAE_LAYER = 19
"""0-based decoder block whose output the embedded SAE reads (`model.layers.19` = `hidden_states[20]`)."""

DEFAULT_SAE_HOOK_POINT = f"model.layers.{DEFAULT_SAE_LAYER}"
DEFAULT_SAE_SUBDIR = "smollm2-135m-instruct-l19"
SAE_PACKAGE_DIR = Path(__file__).parent / "sae"
METRICS_FILENAME = "metrics.json"


def default_sae_path() -> Path:
    """Return the package folder that contains the embedded SAE (`cfg.json`, `sae_weights.safetensors`, `metrics.json`)."""
    return SAE_PACKAGE_DIR / DEFAULT_SAE_SUBDIR


def load_default_sae(device: str = "cpu", dtype: str = "float32") -> SAE:
    """Load the embedded SAE for `model.layers.19` of SmolLM2-135M-Instruct with `SAE.load_from_disk`.

    The weights are stored as float16 and cast to `dtype` on load.

    Raises:
        FileNotFoundError: if the package was installed without its data files.
    """
    from sae_lens import SAE

    folder = default_sae_path()
    if not (folder / "cfg.json").is_file():
        raise FileNotFoundError(
            f"The embedded SAE is missing from {folder}. Reinstall blockem_trl so that its package data is included, "
            "or retrain it with recipes/train_embedded_sae.py."
        )
    return SAE.load_from_disk(folder, device=device, dtype=dtype)
