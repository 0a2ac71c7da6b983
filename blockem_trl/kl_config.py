"""`KLConfig`: `trl.SFTConfig` plus the weight of the KL-to-base regulariser."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import SFTConfig

from .validation import check_field_types


@dataclass
class KLConfig(SFTConfig):
    r"""
    Configuration class for [`KLSFTTrainer`]: every [`~trl.SFTConfig`] field plus the KL weight.

    kl_lambda (`float`, *optional*, defaults to `0.1`):
        Weight of `KL(p_model || p_base)`, summed over the vocabulary and averaged over the predicted
        (supervised) tokens, normalised like TRL's token loss.
    """

    kl_lambda: float = field(
        default=0.1,
        metadata={"help": "Weight of KL(p_model || p_base), averaged over the supervised tokens."},
    )

    def __post_init__(self):
        check_field_types(self, ("kl_lambda",))
        if not (isinstance(self.kl_lambda, (int, float)) and math.isfinite(self.kl_lambda) and self.kl_lambda >= 0):
            raise ValueError(f"Invalid kl_lambda {self.kl_lambda!r}: it must be a finite number >= 0.")
        super().__post_init__()
