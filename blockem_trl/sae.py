"""Load sae-lens SAEs, check them against a model and a latent set, and encode only the blocked latents.

The SAE is never part of the trained model: it stays frozen, outside the module tree (so DDP, FSDP and
DeepSpeed never wrap or shard it), on the model's device, and encodes in float32 by default whatever the
model's dtype, because the penalty compares small differences of latent activations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from sae_lens import SAE
from safetensors import SafetensorError

from .constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from .hooks import layer_index_from_hook_point, normalize_hook_point
from .latents import LatentSet, SAEReference
from .validation import is_path_like

logger = logging.getLogger(__name__)

# Architectures whose activation for one latent depends only on that latent's encoder column and biases.
SLICEABLE_ARCHITECTURES = ("standard", "jumprelu", "gated")


def load_sae(
    name_or_path: str | os.PathLike | SAE,
    sae_id: str | None = None,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
) -> SAE:
    """Load an SAE from a sae-lens folder, a sae-lens release with ``sae_id``, or the embedded default id.

    Args:
        name_or_path: a folder written by sae-lens (``cfg.json`` + ``sae_weights.safetensors``), a
            sae-lens release name or Hub repo id (then ``sae_id`` is required), the embedded SAE id
            (`blockem_trl.models.DEFAULT_SAE_ID`), or an already loaded `SAE`.
        sae_id: the SAE inside a release, for example ``layer_19``.
        device: where the SAE runs; use the model's device.
        dtype: the SAE's parameter dtype. float32 keeps the penalty accurate under bf16 training.
    """
    if isinstance(name_or_path, SAE):
        return name_or_path.to(device=device, dtype=_torch_dtype(dtype))
    path = _resolve_embedded_sae(str(name_or_path)).expanduser()
    if path.is_dir():
        return _load_sae_folder(path, device=device, dtype=dtype)
    if path.is_file():
        raise ValueError(f"SAE {str(name_or_path)!r} is a file: give the folder that contains {SAE_CFG_FILENAME} and "
                         f"{SAE_WEIGHTS_FILENAME} ({path.parent}).")
    if is_path_like(str(name_or_path)):
        raise FileNotFoundError(
            f"SAE folder {str(name_or_path)!r} does not exist. Give a folder written by sae-lens (SAE.save_model), "
            "a sae-lens release with sae_id, or the embedded SAE id."
        )
    if sae_id is None:
        raise ValueError(
            f"SAE {str(name_or_path)!r} is not a local folder, so it is read as a sae-lens release, which needs "
            "sae_id (for example sae_id='layer_19' for 'goodfire-llama-3.1-8b-instruct')."
        )
    return SAE.from_pretrained(str(name_or_path), sae_id, device=str(device), dtype=dtype)


def _load_sae_folder(path: Path, device: str | torch.device, dtype: str) -> SAE:
    for filename in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME):
        if not (path / filename).is_file():
            raise FileNotFoundError(
                f"{path} has no {filename}: it is not a complete folder written by sae-lens (SAE.save_model)."
            )
    cfg_path = path / SAE_CFG_FILENAME
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{cfg_path} is not valid JSON ({error}). Restore it, or save the SAE again with "
                         "SAE.save_model.") from None
    if not isinstance(cfg, dict) or "architecture" not in cfg and "d_sae" not in cfg:
        raise ValueError(f"{cfg_path} is not a sae-lens SAE config (no 'architecture' or 'd_sae' key). Save the "
                         "SAE with SAE.save_model.")
    try:
        return SAE.load_from_disk(path, device=str(device), dtype=dtype)
    except (KeyError, TypeError, ValueError, RuntimeError, OSError, SafetensorError) as error:
        # sae-lens raises KeyError for an unknown architecture and TypeError for missing config keys.
        raise ValueError(f"Could not load the SAE in {path}: {type(error).__name__}: {error}. Check that the folder "
                         "was written by SAE.save_model of a compatible sae-lens version.") from error


def _resolve_embedded_sae(name: str) -> Path:
    try:
        from .models import DEFAULT_SAE_ID, default_sae_path
    except ImportError:
        return Path(name)
    return default_sae_path() if name == DEFAULT_SAE_ID else Path(name)


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    return dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)


def sae_hook_point(sae: SAE) -> str | None:
    """Return the hook point an SAE was trained on, as a module path where the SAE records one."""
    metadata = sae.cfg.metadata
    hook = getattr(metadata, "hf_hook_name", None) or getattr(metadata, "hook_name", None)
    return normalize_hook_point(hook) if hook else None


def sae_content_hash(sae: SAE) -> str:
    """Return ``sha256:<hex>`` over the SAE's parameters in name order, independent of file format."""
    digest = hashlib.sha256()
    for name, tensor in sorted(sae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


def sae_reference(sae: SAE, name_or_path: str | None = None, sae_id: str | None = None) -> SAEReference:
    """Describe an SAE for a latent set: source, architecture, shape and content hash."""
    is_folder = name_or_path is not None and (Path(name_or_path).is_dir() or sae_id is None)
    return SAEReference(
        release=None if is_folder else name_or_path,
        sae_id=None if is_folder else sae_id,
        path=name_or_path if is_folder else None,
        content_hash=sae_content_hash(sae),
        architecture=sae.cfg.architecture(),
        d_in=sae.cfg.d_in,
        d_sae=sae.cfg.d_sae,
    )


def check_sae_compatibility(sae: SAE, latent_set: LatentSet, hidden_size: int | None = None) -> None:
    """Check an SAE against a latent set (width, hook point, content hash) and a model's hidden size.

    Raises:
        ValueError: with the mismatching values and what to change.
    """
    if hidden_size is not None and sae.cfg.d_in != hidden_size:
        raise ValueError(
            f"The SAE reads vectors of size d_in={sae.cfg.d_in}, but the model's hidden size is {hidden_size}. "
            "Use an SAE trained on this model's residual stream."
        )
    latent_set.validate(d_sae=sae.cfg.d_sae)
    hook = sae_hook_point(sae)
    if hook is not None and layer_index_from_hook_point(hook) != latent_set.layer_index:
        raise ValueError(
            f"The SAE was trained at hook point {hook!r} but the latent set blocks {latent_set.hook_point!r} "
            f"(0-based decoder block {latent_set.layer_index}). Use the SAE the latent set was built with."
        )
    expected = latent_set.sae.content_hash
    if expected is not None:
        actual = sae_content_hash(sae)
        if actual != expected:
            raise ValueError(
                f"The SAE's content hash {actual} differs from the hash {expected} recorded in the latent set "
                f"for {latent_set.sae.describe()}. The latent indices would point at other features: load the "
                "SAE the latent set was built with."
            )


class LatentEncoder:
    """Encode only the blocked latents of an SAE, from sliced encoder weights where the architecture allows.

    For standard, JumpReLU and gated SAEs the activation of latent ``k`` depends only on encoder column ``k``
    and its biases, so ``encode_latents(x)`` equals ``sae.encode(x)[..., indices]`` at ``|K| / d_sae`` of the
    cost. TopK-style SAEs select latents by comparing all of them, so they fall back to the full encode.

    The SAE's parameters are frozen; gradients flow to the input ``x``.
    """

    def __init__(self, sae: SAE, indices: Sequence[int], dtype: torch.dtype = torch.float32) -> None:
        self.sae = sae.to(dtype=dtype).eval()
        self.sae.requires_grad_(False)
        self.dtype = dtype
        self.architecture = sae.cfg.architecture()
        self.indices = torch.as_tensor(list(indices), dtype=torch.long, device=self._device)
        self.sliced = self.architecture in SLICEABLE_ARCHITECTURES
        if self.sliced:
            self._slice_parameters()
        else:
            logger.warning(
                "SAE architecture %r cannot be encoded per latent (activations depend on all latents): "
                "using the full encode and selecting %d latents, which costs d_sae/|K| = %.0fx more.",
                self.architecture,
                len(self.indices),
                sae.cfg.d_sae / max(len(self.indices), 1),
            )

    @property
    def _device(self) -> torch.device:
        return self.sae.W_enc.device

    def _slice_parameters(self) -> None:
        sae, k = self.sae, self.indices
        self.W_enc = sae.W_enc[:, k].contiguous()
        if self.architecture == "gated":
            self.b_gate = sae.b_gate[k]
            self.W_mag = (sae.W_enc[:, k] * sae.r_mag[k].exp()).contiguous()
            self.b_mag = sae.b_mag[k]
        else:
            self.b_enc = sae.b_enc[k]
        if self.architecture == "jumprelu":
            self.threshold = sae.threshold[k]

    def to(self, device: str | torch.device) -> LatentEncoder:
        """Move the SAE and the sliced weights to ``device``."""
        self.sae = self.sae.to(device)
        self.indices = self.indices.to(device)
        if self.sliced:
            self._slice_parameters()
        return self

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Map residual-stream vectors ``(..., d_in)`` to the blocked latents' activations ``(..., |K|)``."""
        x = x.to(device=self._device, dtype=self.dtype)
        if not self.sliced:
            return self.sae.encode(x)[..., self.indices]
        sae_in = self.sae.process_sae_in(x)
        if self.architecture == "gated":
            gate = (sae_in @ self.W_enc + self.b_gate > 0).to(sae_in.dtype)
            return gate * torch.relu(sae_in @ self.W_mag + self.b_mag)
        pre = sae_in @ self.W_enc + self.b_enc
        acts = torch.relu(pre)
        if self.architecture == "jumprelu":
            acts = acts * (pre > self.threshold).to(acts.dtype)
        return acts

    __call__ = encode_latents
