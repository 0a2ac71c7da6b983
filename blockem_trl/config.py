"""`BlockEMConfig`: `trl.SFTConfig` plus the fields that control latent blocking."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import SFTConfig

from .validation import check_field_types

REFERENCE_MODES = ("adapter", "model", "cached")
BLOCK_TOKEN_MODES = ("completion", "all")
BLOCKING_FIELDS = ("latent_set", "sae", "sae_id", "block_layer", "block_lambda", "block_reference",
                   "reference_model_name_or_path", "block_tokens", "block_stop_early")
"""The fields `BlockEMConfig` adds to `SFTConfig`."""


@dataclass
class BlockEMConfig(SFTConfig):
    r"""
    Configuration class for [`BlockEMSFTTrainer`]: every [`~trl.SFTConfig`] field plus the blocking fields.

    The total loss is ``L_SFT + block_lambda * L_block`` where ``L_block`` sums, over the blocked latents, the
    squared one-sided drift from the base model (K+ latents may not rise, K- latents may not fall) and averages
    it over the selected tokens, normalised like TRL's token loss.

    > Parameters that control which latents are blocked

    latent_set (`str` or `None`, *optional*, defaults to `None`):
        Path to a latent-set folder or JSON file, or a Hub repo id. Not needed when a `LatentSet` object is
        passed to the trainer.
    sae (`str` or `None`, *optional*, defaults to `None`):
        SAE to encode with: a sae-lens folder, a sae-lens release (with `sae_id`) or the embedded SAE id.
        Defaults to the SAE recorded in the latent set.
    sae_id (`str` or `None`, *optional*, defaults to `None`):
        SAE id inside a sae-lens release, for example `"layer_19"`.
    block_layer (`int` or `None`, *optional*, defaults to `None`):
        Override of the blocking layer: 0-based index of the decoder block whose output is hooked
        (`model.layers[block_layer]`, equal to `hidden_states[block_layer + 1]`). Defaults to the latent set's layer.

    > Parameters that control the penalty

    block_lambda (`float`, *optional*, defaults to `1.0`):
        Weight of the blocking penalty. Its useful range depends on the SAE's activation scale (about 1e4 for
        Goodfire's Llama-3.1-8B layer-19 SAE in the BLOCK-EM paper): sweep it.
    block_reference (`str`, *optional*, defaults to `"adapter"`):
        Source of the base activations. `"adapter"`: the same model with the LoRA adapter disabled, no gradient,
        forward stopped after the blocking layer (needs a PEFT model, no second copy of the weights).
        `"model"`: a separate frozen reference model, as the BLOCK-EM authors ran it. `"cached"`: base activations
        of the blocked latents precomputed once per example before training.
    reference_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
        Reference model for `block_reference="model"`. Defaults to a frozen copy of the model being trained.
    block_tokens (`str`, *optional*, defaults to `"completion"`):
        Tokens the penalty applies to. `"completion"`: supervised tokens (`labels != -100`). `"all"`: every
        non-padding token, the prompt included.
    block_stop_early (`bool`, *optional*, defaults to `True`):
        Stop the adapter-disabled base forward right after the blocking layer. Turned off automatically under
        FSDP and DeepSpeed, where an interrupted forward can leave parameters gathered.
    """

    latent_set: str | None = field(
        default=None,
        metadata={"help": "Path to a latent-set folder or JSON file, or a Hub repo id."},
    )
    sae: str | None = field(
        default=None,
        metadata={
            "help": "SAE to encode with: a sae-lens folder, a sae-lens release (with --sae_id) or the embedded "
            "SAE id. Defaults to the SAE recorded in the latent set."
        },
    )
    sae_id: str | None = field(
        default=None,
        metadata={"help": "SAE id inside a sae-lens release, for example 'layer_19'."},
    )
    block_layer: int | None = field(
        default=None,
        metadata={
            "help": "Override of the blocking layer: 0-based index of the decoder block whose output is hooked "
            "(equals hidden_states[block_layer + 1]). Defaults to the latent set's layer."
        },
    )
    block_lambda: float = field(
        default=1.0,
        metadata={"help": "Weight of the blocking penalty (depends on the SAE's activation scale: sweep it)."},
    )
    block_reference: str = field(
        default="adapter",
        metadata={
            "help": "Source of the base activations: 'adapter' (LoRA disabled, stopped at the blocking layer), "
            "'model' (separate frozen reference model) or 'cached' (precomputed before training).",
            "choices": list(REFERENCE_MODES),
        },
    )
    reference_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Reference model for block_reference='model'. Defaults to a frozen copy of the model."},
    )
    block_tokens: str = field(
        default="completion",
        metadata={
            "help": "Tokens the penalty applies to: 'completion' (labels != -100) or 'all' (non-padding tokens).",
            "choices": list(BLOCK_TOKEN_MODES),
        },
    )
    block_stop_early: bool = field(
        default=True,
        metadata={"help": "Stop the adapter-disabled base forward right after the blocking layer."},
    )

    def __post_init__(self):
        self._validate_blocking_fields()
        super().__post_init__()

    def _validate_blocking_fields(self) -> None:
        check_field_types(self, BLOCKING_FIELDS)  # PyYAML reads 1e4 in a recipe as a string
        if self.block_reference not in REFERENCE_MODES:
            raise ValueError(
                f"Invalid block_reference {self.block_reference!r}: choose one of {', '.join(REFERENCE_MODES)}."
            )
        if self.block_tokens not in BLOCK_TOKEN_MODES:
            raise ValueError(f"Invalid block_tokens {self.block_tokens!r}: choose one of {', '.join(BLOCK_TOKEN_MODES)}.")
        if not (isinstance(self.block_lambda, (int, float)) and math.isfinite(self.block_lambda) and self.block_lambda >= 0):
            raise ValueError(f"Invalid block_lambda {self.block_lambda!r}: it must be a finite number >= 0.")
        if self.block_layer is not None and self.block_layer < 0:
            raise ValueError(
                f"Invalid block_layer {self.block_layer}: it is a 0-based decoder block index, so it must be >= 0."
            )
        if self.reference_model_name_or_path is not None and self.block_reference != "model":
            raise ValueError(
                f"reference_model_name_or_path is set but block_reference is {self.block_reference!r}. "
                "Set block_reference='model' to use a separate reference model, or drop the path."
            )
