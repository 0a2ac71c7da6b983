"""Capture or replace the residual stream at one decoder layer of a Hugging Face causal LM.

Layer convention: `layer` is the 0-based index of the decoder block whose output is hooked, i.e. the output
of `model.model.layers[layer]` (hook point string `model.layers.{layer}`), which equals
`hidden_states[layer + 1]` for every layer except the last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class StopForward(Exception):
    """Raised by `stop_after_layer` to end a forward pass once the hooked layer has run."""


def decoder_layer(model: nn.Module, layer: int) -> nn.Module:
    """Return `model.model.layers[layer]` (0-based) of a Llama-style causal LM, with a clear error if absent."""
    try:
        return model.get_submodule(f"model.layers.{layer}")
    except AttributeError as error:
        raise ValueError(
            f"{type(model).__name__} has no module 'model.layers.{layer}'. Pass a Llama-style causal LM whose decoder "
            "blocks live in model.model.layers, and a 0-based layer index below the number of layers."
        ) from error


def _hidden(output: torch.Tensor | tuple) -> torch.Tensor:
    # transformers 5 decoder layers return a tensor; older versions return a tuple whose first item is it.
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def stop_after_layer(model: nn.Module, layer: int, sink: list[torch.Tensor]) -> Iterator[None]:
    """Append the output of decoder block `layer` (0-based) to `sink`, then raise `StopForward`.

    The caller wraps the forward call in `try/except StopForward`, so the blocks above `layer`, the final norm
    and the LM head never run. Use it only on a single device (it would leave FSDP or DeepSpeed parameters
    gathered).
    """

    def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
        sink.append(_hidden(output).detach())
        raise StopForward

    handle = decoder_layer(model, layer).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def replace_layer_output(
    model: nn.Module, layer: int, replace: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Replace the output of decoder block `layer` (0-based) with `replace(output)` during the forward pass."""

    def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> torch.Tensor | tuple:
        new = replace(_hidden(output))
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = decoder_layer(model, layer).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
