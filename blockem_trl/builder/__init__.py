"""Latent discovery: find the BLOCK-EM latent set K from a base model and a misaligned model.

Stage 1 ranks SAE latents by activation shift, stage 2 screens candidates by steering (induce and repair),
stage 3 calibrates the steering strength under an incoherence budget and keeps the best |K| latents.
"""

from .builder import LatentSetBuilder
from .config import BuilderConfig
from .store import BuilderSettingsError, NoLatentsSelectedError

__all__ = ["BuilderConfig", "BuilderSettingsError", "LatentSetBuilder", "NoLatentsSelectedError"]
