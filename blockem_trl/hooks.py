"""Find decoder layers in Hugging Face causal LMs and hook their residual-stream output.

Layer convention used everywhere in blockem_trl: a layer index ``L`` is the 0-based index of the decoder
block whose *output* is hooked, i.e. ``model.model.layers[L]`` for Llama-style models. That output equals
``outputs.hidden_states[L + 1]`` (except for the last block, whose ``hidden_states`` entry comes after the
final norm). The hook point string is the module path relative to the bare transformers model, for example
``model.layers.19`` (Llama, Qwen2, Gemma, Mistral) or ``transformer.h.5`` (GPT-2).

Every hook is registered inside a context manager that removes it on exit, also when the forward raises.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

# Module paths of the decoder-block list, relative to the bare transformers model, for the common families.
DECODER_LAYER_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Gemma 1-3, Phi-3, SmolLM
    "model.language_model.layers",  # multimodal wrappers (Gemma 3, Llava-style)
    "language_model.model.layers",
    "transformer.h",  # GPT-2, GPT-J, Falcon, Bloom
    "gpt_neox.layers",  # Pythia, GPT-NeoX
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)

_TRANSFORMER_LENS_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the bare transformers model under DDP, `torch.compile` and PEFT wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
            model = model.get_base_model()
        else:
            return model


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return ``(path, layers)``: the module path of the decoder-block list and the list itself.

    Raises:
        ValueError: if no known decoder-block list is found in the model.
    """
    bare = unwrap_model(model)
    for path in DECODER_LAYER_PATHS:
        try:
            layers = bare.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return path, layers
    raise ValueError(
        f"Could not find the decoder layers of {type(bare).__name__}: none of the module paths "
        f"{', '.join(DECODER_LAYER_PATHS)} is a non-empty ModuleList. Pass the hook point explicitly "
        "(for example 'model.layers.19') or open an issue with the model's architecture."
    )


def hook_point_for_layer(model: nn.Module, layer_index: int) -> str:
    """Return the hook point (module path) of decoder block ``layer_index`` (0-based module index)."""
    path, layers = find_decoder_layers(model)
    _check_layer_index(layer_index, len(layers), type(unwrap_model(model)).__name__)
    return f"{path}.{layer_index}"


def layer_index_from_hook_point(hook_point: str) -> int:
    """Parse the 0-based decoder-block index from a hook point.

    Accepts module paths such as ``model.layers.19`` and TransformerLens names such as
    ``blocks.19.hook_resid_post`` (the output of block 19, the same residual stream).
    """
    match = _TRANSFORMER_LENS_RESID_POST.match(hook_point)
    if match:
        return int(match.group(1))
    last = hook_point.rsplit(".", 1)[-1]
    if not last.isdigit():
        raise ValueError(
            f"Invalid hook point {hook_point!r}: expected the output of a decoder block, such as "
            "'model.layers.19' or 'blocks.19.hook_resid_post'."
        )
    return int(last)


def normalize_hook_point(hook_point: str, model: nn.Module | None = None) -> str:
    """Map a TransformerLens ``blocks.L.hook_resid_post`` name to the module path of the given model."""
    match = _TRANSFORMER_LENS_RESID_POST.match(hook_point)
    if match is None:
        return hook_point
    if model is None:
        return f"model.layers.{match.group(1)}"
    return hook_point_for_layer(model, int(match.group(1)))


def get_decoder_layer(model: nn.Module, layer_index: int) -> nn.Module:
    """Return decoder block ``layer_index`` (0-based module index) of any supported causal LM."""
    _, layers = find_decoder_layers(model)
    _check_layer_index(layer_index, len(layers), type(unwrap_model(model)).__name__)
    return layers[layer_index]


def get_hook_module(model: nn.Module, hook_point: str) -> nn.Module:
    """Return the module at ``hook_point`` (relative to the bare transformers model)."""
    bare = unwrap_model(model)
    hook_point = normalize_hook_point(hook_point, bare)
    try:
        return bare.get_submodule(hook_point)
    except AttributeError as error:
        raise ValueError(
            f"Hook point {hook_point!r} not found in {type(bare).__name__}. The decoder blocks of this model "
            f"are at {find_decoder_layers(bare)[0]!r}.N with N from 0 to "
            f"{len(find_decoder_layers(bare)[1]) - 1}."
        ) from error


def _check_layer_index(layer_index: int, num_layers: int, model_name: str) -> None:
    if not 0 <= layer_index < num_layers:
        raise ValueError(
            f"Layer index {layer_index} is outside {model_name}, which has {num_layers} decoder layers "
            f"(valid 0-based module indices: 0 to {num_layers - 1})."
        )


def _residual_of(output) -> torch.Tensor:
    # transformers 5 decoder layers return a tensor, older versions and some families a tuple.
    return output[0] if isinstance(output, tuple) else output


def _replace_residual(output, residual: torch.Tensor):
    if isinstance(output, tuple):
        return (residual, *output[1:])
    return residual


@dataclass
class ResidualCapture:
    """The residual stream captured at a hook point during one forward pass, shape ``(batch, seq, d_model)``."""

    hook_point: str
    output: torch.Tensor | None = None


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the hooked layer has run."""


@contextmanager
def capture_residual(module: nn.Module, hook_point: str = "", stop: bool = False) -> Iterator[ResidualCapture]:
    """Capture the output of ``module`` during the forward passes run inside the block.

    With ``stop=True`` the forward pass ends right after the module, which saves the layers above it.
    Run the model through `run_until_captured` in that case. Do not stop early under FSDP or DeepSpeed
    ZeRO-3, where an interrupted forward can leave parameters gathered.
    """
    capture = ResidualCapture(hook_point=hook_point)

    def hook(_module, _args, output):
        capture.output = _residual_of(output)
        if stop:
            raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield capture
    finally:
        handle.remove()


def run_until_captured(model: nn.Module, **inputs) -> None:
    """Call ``model(**inputs)`` and swallow the early stop raised by ``capture_residual(stop=True)``."""
    try:
        model(**inputs)
    except _StopForward:
        pass


@contextmanager
def add_to_residual(
    module: nn.Module, vector: torch.Tensor, position_mask: torch.Tensor | None = None
) -> Iterator[None]:
    """Add ``vector`` (shape ``(d_model,)``) to the output of ``module`` on every forward in the block.

    This is activation steering: pass ``coefficient * direction`` as ``vector``. With ``position_mask``
    (shape ``(batch, seq)``, bool) only the marked positions are steered. The mask is applied only when
    its shape matches the hidden states, so incremental decoding steps (one new position) are always
    steered.
    """

    def hook(_module, _args, output):
        residual = _residual_of(output)
        shift = vector.to(device=residual.device, dtype=residual.dtype)
        if position_mask is not None and position_mask.shape == residual.shape[:2]:
            shift = shift * position_mask.to(device=residual.device, dtype=residual.dtype).unsqueeze(-1)
        return _replace_residual(output, residual + shift)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
