"""blockem_trl: BLOCK-EM latent blocking for TRL fine-tuning.

The public API is a handful of objects:

- `BlockEMConfig` and `BlockEMSFTTrainer`: swap them in for `trl.SFTConfig` and `trl.SFTTrainer`.
- `LatentSet`: the blocked latents K+ and K- with their SAE, hook point and provenance.
- `LatentEncoder` and `load_sae`: encode only the blocked latents of a sae-lens SAE.
"""

from .config import BlockEMConfig
from .latents import LatentRecord, LatentSet, LatentSetError, SAEReference
from .sae import LatentEncoder, load_sae
from .trainer import BlockEMSFTTrainer
from .version import __version__

__all__ = [
    "BlockEMConfig",
    "BlockEMSFTTrainer",
    "LatentEncoder",
    "LatentRecord",
    "LatentSet",
    "LatentSetError",
    "SAEReference",
    "__version__",
    "load_sae",
]
