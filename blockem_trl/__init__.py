"""blockem_trl: BLOCK-EM latent blocking for TRL fine-tuning.

The public API is a handful of objects:

- `BlockEMConfig` and `BlockEMSFTTrainer`: swap them in for `trl.SFTConfig` and `trl.SFTTrainer`.
- `LatentSet`: the blocked latents K+ and K- with their SAE, hook point and provenance.
- `LatentEncoder` and `load_sae`: encode only the blocked latents of a sae-lens SAE.
- `LatentSetBuilder` and `BuilderConfig`: find K from a base and a misaligned checkpoint.
- `KLConfig` and `KLSFTTrainer`: the KL-to-base baseline.
"""

from .builder import BuilderConfig, LatentSetBuilder
from .config import BlockEMConfig
from .kl_config import KLConfig
from .kl_trainer import KLSFTTrainer
from .latents import LatentRecord, LatentSet, LatentSetError, SAEReference
from .sae import LatentEncoder, load_sae
from .trainer import BlockEMSFTTrainer
from .version import __version__

__all__ = [
    "BlockEMConfig",
    "BlockEMSFTTrainer",
    "BuilderConfig",
    "KLConfig",
    "KLSFTTrainer",
    "LatentEncoder",
    "LatentRecord",
    "LatentSet",
    "LatentSetBuilder",
    "LatentSetError",
    "SAEReference",
    "__version__",
    "load_sae",
]
