"""Batched answer generation with the chat template, left padding, seeded sampling and optional steering."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from blockem_trl.hooks import add_to_residual, get_hook_module
from blockem_trl.validation import check_field_types

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]
Prompt = str | Messages
"""A user message, or a full chat (list of ``{"role", "content"}`` dicts) ending before the reply."""


@dataclass
class GenerationSettings:
    """Sampling settings for `generate_answers`."""

    max_new_tokens: int = field(default=256, metadata={"help": "Maximum number of tokens generated per answer."})
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature; 0 selects greedy decoding (the argmax token)."}
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass; 1.0 turns it off."})
    batch_size: int = field(default=16, metadata={"help": "Prompts generated together in one forward batch."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling RNG, reset before every batch."})

    def __post_init__(self) -> None:
        check_field_types(self)
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(
                f"Invalid temperature {self.temperature}: it must be a finite number >= 0 (0 means greedy decoding)."
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(
                f"Invalid top_p {self.top_p}: it must be a number in (0, 1], where 1.0 turns nucleus sampling off."
            )
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SteeringSpec:
    """Activation steering during generation: ``coefficient * direction`` added to the residual stream.

    The vector is added to the output of the decoder block at ``hook_point`` (for example ``model.layers.19``,
    the output of 0-based block 19, which equals ``hidden_states[20]``) at every position, prompt and
    generated tokens alike, unless ``steer_prompt`` is False.
    """

    hook_point: str
    direction: torch.Tensor
    coefficient: float = 1.0
    steer_prompt: bool = True
    name: str = ""
    """Free-form label (for example ``"latent_1234"``) stored with the samples."""

    def __post_init__(self) -> None:
        if self.direction.dim() != 1:
            raise ValueError(
                f"SteeringSpec.direction must be a vector of shape (d_model,), got shape {tuple(self.direction.shape)}."
            )

    @property
    def vector(self) -> torch.Tensor:
        return self.coefficient * self.direction

    def fingerprint(self) -> dict:
        """Return a JSON-safe description that identifies this steering (used in cache keys)."""
        data = self.direction.detach().to(torch.float32).cpu().contiguous().numpy().tobytes()
        return {
            "hook_point": self.hook_point,
            "coefficient": float(self.coefficient),
            "steer_prompt": self.steer_prompt,
            "name": self.name,
            "direction_sha256": hashlib.sha256(data).hexdigest()[:16],
        }


def as_messages(prompt: Prompt, system: str | None = None) -> Messages:
    """Turn a user message (optionally with a system prompt) into a chat; pass chats through unchanged."""
    if isinstance(prompt, str):
        messages: Messages = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
        return messages
    if system and not any(message["role"] == "system" for message in prompt):
        return [{"role": "system", "content": system}, *prompt]
    return list(prompt)


def render_chat(tokenizer, messages: Messages) -> str:
    """Apply the tokenizer's chat template with the generation prompt (the opening of the assistant turn)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"Tokenizer {type(tokenizer).__name__} has no chat template. Evaluate an instruction-tuned model, or set "
            "`tokenizer.chat_template` before generating."
        )
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _steering_stack(model, steering: Sequence[SteeringSpec], prompt_mask: torch.Tensor) -> ExitStack:
    stack = ExitStack()
    for spec in steering:
        module = get_hook_module(model, spec.hook_point)
        # A mask of the prompt's shape leaves the prompt unsteered. `add_to_residual` applies a mask only to
        # forwards of matching shape, so every decoding step (one new position) is still steered.
        mask = None if spec.steer_prompt else torch.zeros_like(prompt_mask, dtype=torch.bool)
        stack.enter_context(add_to_residual(module, spec.vector, position_mask=mask))
    return stack


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    settings: GenerationSettings | None = None,
    *,
    system_prompts: Sequence[str | None] | None = None,
    steering: SteeringSpec | Sequence[SteeringSpec] | None = None,
    seeds: Sequence[int] | None = None,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
    progress: bool = True,
) -> list[str]:
    """Generate one answer per prompt, in prompt order.

    Prompts are rendered with the chat template (``add_generation_prompt=True``), left-padded and generated in
    batches of ``settings.batch_size``. Sampling is reproducible: the torch RNG is reset before every batch to
    ``seeds[first prompt of the batch]`` (default: ``settings.seed + batch start index``). To draw n samples per
    question, repeat the prompt n times.

    Args:
        model: A causal LM (a PEFT model with an adapter works too).
        tokenizer: Its tokenizer, with a chat template.
        prompts: User messages or chats.
        settings: Sampling settings.
        system_prompts: One system prompt (or None) per prompt, added to string prompts.
        steering: Steering applied to every prompt of the call.
        seeds: One seed per prompt; the first prompt of each batch sets the batch's seed.
        on_batch: Called after each batch with the prompt indices and their answers, e.g. to append them to a
            file as they are produced.
        progress: Show a tqdm progress bar.
    """
    settings = settings or GenerationSettings()
    if system_prompts is not None and len(system_prompts) != len(prompts):
        raise ValueError(f"Got {len(system_prompts)} system prompts for {len(prompts)} prompts; give one per prompt.")
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"Got {len(seeds)} seeds for {len(prompts)} prompts; give one per prompt.")
    specs = [steering] if isinstance(steering, SteeringSpec) else list(steering or [])

    texts = [
        render_chat(tokenizer, as_messages(prompt, system_prompts[i] if system_prompts else None))
        for i, prompt in enumerate(prompts)
    ]
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_token_id is None:
        raise ValueError("The tokenizer has neither a pad token nor an eos token; set `tokenizer.pad_token`.")

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    original_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers: list[str] = [""] * len(prompts)
    try:
        starts = range(0, len(texts), settings.batch_size)
        for start in tqdm(starts, desc="generating", unit="batch", disable=not progress or len(starts) < 2):
            indices = list(range(start, min(start + settings.batch_size, len(texts))))
            batch = tokenizer(
                [texts[i] for i in indices], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            torch.manual_seed(seeds[start] if seeds is not None else settings.seed + start)
            kwargs = {"do_sample": False} if settings.greedy else {
                "do_sample": True,
                "temperature": settings.temperature,
                "top_p": settings.top_p,
                "top_k": 0,
            }
            with _steering_stack(model, specs, batch["attention_mask"]):
                output = model.generate(
                    **batch,
                    max_new_tokens=settings.max_new_tokens,
                    pad_token_id=pad_token_id,
                    **kwargs,
                )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            batch_answers = [text.strip() for text in decoded]
            for i, answer in zip(indices, batch_answers):
                answers[i] = answer
            if on_batch is not None:
                on_batch(indices, batch_answers)
    finally:
        tokenizer.padding_side = original_side
        if was_training:
            model.train()
    return answers


def generate_for_questions(
    model,
    tokenizer,
    questions,
    samples_per_question: int,
    settings: GenerationSettings | None = None,
    *,
    steering: SteeringSpec | Sequence[SteeringSpec] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Sample ``samples_per_question`` answers for every question of a `QuestionSet` in one batched call.

    Sample ``i`` of a question uses paraphrase ``i % len(paraphrases)`` and the question's system prompt.
    Returns one dict per answer with ``question_id``, ``paraphrase_index``, ``sample_index``, ``prompt``,
    ``system`` and ``answer``, in question order.
    """
    rows = []
    for question in questions:
        for sample_index in range(samples_per_question):
            paraphrase_index, text = question.paraphrase_for_sample(sample_index)
            rows.append({"question_id": question.id, "paraphrase_index": paraphrase_index,
                         "sample_index": sample_index, "prompt": text, "system": question.system})
    answers = generate_answers(
        model,
        tokenizer,
        [row["prompt"] for row in rows],
        settings,
        system_prompts=[row["system"] for row in rows],
        steering=steering,
        progress=progress,
    )
    for row, answer in zip(rows, answers):
        row["answer"] = answer
    return rows
