"""Spread generation over `accelerate` processes, or hand it to a vLLM engine when vLLM is installed.

The evaluation harness and the latent-set builder generate with plain transformers by default. Under
``accelerate launch`` they can call `generate_answers_across_processes` (or the generic
`map_across_processes`) so that each process generates a contiguous share of the prompts and every process
receives all answers in prompt order. `vllm_generate_answers` runs the same prompts through a vLLM engine.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from accelerate import PartialState
from accelerate.utils import gather_object

Item = TypeVar("Item")
Result = TypeVar("Result")


def map_across_processes(
    function: Callable[..., list[Result]], items: Sequence[Item], *aligned: Sequence[Any] | None
) -> list[Result]:
    """Call ``function`` on this process's contiguous share of ``items`` and return all results on every process.

    ``aligned`` sequences (or ``None``) have one entry per item and are split the same way, so
    ``function(share, *aligned_shares)`` receives matching entries. ``function`` must return one result per item
    of its share. Results come back in the order of ``items``. Without several processes this is
    ``function(items, *aligned)``. Every process must call it, because the results are gathered with a
    collective operation.
    """
    for sequence in aligned:
        if sequence is not None and len(sequence) != len(items):
            raise ValueError(f"An aligned sequence has {len(sequence)} entries but there are {len(items)} items.")

    state = PartialState()
    if state.num_processes == 1:
        return list(function(list(items), *aligned))

    indices = list(range(len(items)))
    with state.split_between_processes(indices) as share:
        share = list(share)
    results: list[Result] = []
    if share:
        aligned_shares = [None if sequence is None else [sequence[i] for i in share] for sequence in aligned]
        results = list(function([items[i] for i in share], *aligned_shares))
        if len(results) != len(share):
            raise ValueError(
                f"function returned {len(results)} results for {len(share)} items on process {state.process_index}."
            )
    # `split_between_processes` hands out contiguous shares in process order, so concatenating the gathered
    # lists in process order restores the order of `items`.
    return gather_object(results)


def generate_answers_across_processes(
    model,
    tokenizer,
    prompts: Sequence[Any],
    settings=None,
    *,
    system_prompts: Sequence[str | None] | None = None,
    seeds: Sequence[int] | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """Run `blockem_trl.evaluation.generation.generate_answers` with the prompts split over the processes.

    Every process must call it with the same prompts, and every process gets all answers in prompt order.
    ``seeds`` defaults to ``settings.seed + prompt index``, so a prompt's seed does not depend on how the
    prompts are split. A batch is still sampled with the seed of its first prompt, and batches are formed per
    process, so sampled answers can differ between process counts. Greedy decoding does not depend on seeds.
    ``generate_kwargs`` (``steering``, ``progress``, ...) are passed on unchanged. ``on_batch`` receives
    positions within this process's share.
    """
    from .evaluation.generation import GenerationSettings, generate_answers

    settings = settings if settings is not None else GenerationSettings()
    if seeds is None:
        seeds = [settings.seed + index for index in range(len(prompts))]

    def generate_share(share, share_system_prompts, share_seeds):
        return generate_answers(
            model, tokenizer, share, settings, system_prompts=share_system_prompts, seeds=share_seeds, **generate_kwargs
        )

    return map_across_processes(generate_share, prompts, system_prompts, seeds)


def is_vllm_available() -> bool:
    """Return whether vLLM can be imported, without importing it."""
    return importlib.util.find_spec("vllm") is not None


def vllm_generate_answers(
    model: str | Any,
    prompts: Sequence[Any],
    settings=None,
    *,
    system_prompts: Sequence[str | None] | None = None,
    adapter_path: str | None = None,
    **engine_kwargs: Any,
) -> list[str]:
    """Generate one answer per prompt with vLLM, in prompt order.

    Args:
        model: a model id or folder, from which a `vllm.LLM` is built with ``engine_kwargs``, or an existing
            `vllm.LLM` engine (then ``engine_kwargs`` must be empty).
        prompts: user messages or chats, as for `generate_answers`. They are rendered with the model's chat
            template.
        settings: a `GenerationSettings`. ``batch_size`` is ignored, because vLLM schedules the batches itself.
        system_prompts: one system prompt (or None) per prompt, added to string prompts.
        adapter_path: a LoRA adapter folder (as saved by the trainer) applied to every prompt. A new engine is
            built with ``enable_lora=True``. An existing engine must already have LoRA enabled.

    Steering hooks cannot run inside vLLM: use `generate_answers` for steered generation.
    """
    if not is_vllm_available():
        raise ImportError(
            "vllm_generate_answers needs vLLM, which is not installed. Install a vLLM build that matches your "
            "torch and CUDA versions (`pip install vllm`), or generate with "
            "blockem_trl.evaluation.generation.generate_answers."
        )
    # NOTE: this path has not been run. It follows the `LLM.chat`, `SamplingParams` and
    # `vllm.lora.request.LoRARequest` API of the vLLM documentation, without a pinned vLLM version.
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from .evaluation.generation import GenerationSettings, as_messages

    settings = settings if settings is not None else GenerationSettings()
    if system_prompts is not None and len(system_prompts) != len(prompts):
        raise ValueError(f"system_prompts has {len(system_prompts)} entries but there are {len(prompts)} prompts.")

    if isinstance(model, str):
        if adapter_path is not None:
            engine_kwargs.setdefault("enable_lora", True)
        engine = LLM(model=model, **engine_kwargs)
    elif engine_kwargs:
        raise ValueError(f"engine_kwargs {sorted(engine_kwargs)} apply only when model is a name or path, not an engine.")
    else:
        engine = model

    sampling = SamplingParams(
        n=1,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_tokens=settings.max_new_tokens,
        seed=settings.seed,
    )
    chats = [
        as_messages(prompt, None if system_prompts is None else system_prompts[index])
        for index, prompt in enumerate(prompts)
    ]
    lora_request = LoRARequest("blockem_adapter", 1, adapter_path) if adapter_path is not None else None
    outputs = engine.chat(chats, sampling, lora_request=lora_request, add_generation_prompt=True)
    return [output.outputs[0].text for output in outputs]
