"""Discovery prompts and their chat-template token masks (which tokens enter the activation averages)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

from blockem_trl.evaluation import load_question_set
from blockem_trl.evaluation.generation import as_messages, render_chat

logger = logging.getLogger(__name__)

# Two user messages that differ in their first character: the rendered chats agree up to the user content.
_SENTINELS = ("Alpha sentinel message.", "Omega sentinel message.")


@dataclass(frozen=True)
class DiscoveryPrompt:
    """One discovery prompt: a user message with its question id and optional system prompt."""

    id: str
    text: str
    system: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def load_discovery_prompts(source: str, all_paraphrases: bool = True, max_prompts: int | None = None,
                           system_prompt: str | None = None) -> list[DiscoveryPrompt]:
    """Load questions with `blockem_trl.evaluation.load_question_set` and expand them to prompts.

    Prompt ids are ``<question id>`` or ``<question id>#<paraphrase index>``.
    """
    question_set = load_question_set(source)
    prompts = []
    for question in question_set:
        paraphrases = question.paraphrases if all_paraphrases else question.paraphrases[:1]
        for index, text in enumerate(paraphrases):
            prompt_id = question.id if len(paraphrases) == 1 else f"{question.id}#{index}"
            prompts.append(DiscoveryPrompt(prompt_id, text, question.system or system_prompt))
    if max_prompts is not None:
        prompts = prompts[:max_prompts]
    if not prompts:
        raise ValueError(f"The discovery prompt source {source!r} contains no prompts. Pass a non-empty question set.")
    return prompts


def user_content_offset(tokenizer, system: str | None) -> int:
    """Return the character offset in the rendered chat where the user message's content starts.

    Everything before it is the system block (the given system prompt or the template's default one) and
    the user turn's header.
    """
    first, second = (render_chat(tokenizer, as_messages(text, system)) for text in _SENTINELS)
    offset = 0
    while offset < min(len(first), len(second)) and first[offset] == second[offset]:
        offset += 1
    return offset


@dataclass
class TokenizedPrompts:
    """A batch of right-padded chat prompts and the mask of tokens that enter the averages."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    average_mask: torch.Tensor
    """True on non-padding tokens at or after the user message (system-block tokens are False when excluded)."""


def tokenize_prompts(tokenizer, prompts: list[DiscoveryPrompt], max_length: int,
                     exclude_system_tokens: bool = True) -> TokenizedPrompts:
    """Render prompts with the chat template (with the generation prompt) and build the averaging mask.

    Raises:
        ValueError: if the tokenizer is not a fast tokenizer, which is needed for character offsets.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer, and the builder needs character offsets to find "
            "system-prompt tokens. Load the tokenizer with use_fast=True."
        )
    texts = [render_chat(tokenizer, as_messages(prompt.text, prompt.system)) for prompt in prompts]
    original_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        encoded = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                            add_special_tokens=False, return_offsets_mapping=True)
    finally:
        tokenizer.padding_side = original_side
    attention_mask = encoded["attention_mask"].bool()
    average_mask = attention_mask.clone()
    if exclude_system_tokens:
        for row, prompt in enumerate(prompts):
            offset = user_content_offset(tokenizer, prompt.system)
            starts = encoded["offset_mapping"][row, :, 0]
            average_mask[row] &= starts >= offset
    empty = [prompts[row].id for row in range(len(prompts)) if not average_mask[row].any()]
    if empty:
        raise ValueError(
            f"Prompts {empty} have no tokens left after removing the system block (max_length={max_length}). "
            "Raise max_length or shorten the system prompt."
        )
    return TokenizedPrompts(encoded["input_ids"], attention_mask, average_mask)
