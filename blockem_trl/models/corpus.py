"""Chat-formatted text from the GPTeacher instruction files, used to train and evaluate the embedded SAE.

GPTeacher (teknium1/GPTeacher, MIT licence) stores JSON arrays of Alpaca-style rows with the keys
`instruction`, `input` (often empty) and `response`. Each row becomes one conversation: `instruction` and
`input` form the user turn, `response` the assistant turn, rendered with the tokenizer's chat template, the
same way SFT data is rendered for fine-tuning.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

GPTEACHER_FILES = (
    "Roleplay/roleplay-simple-deduped-roleplay-instruct.json",
    "Toolformer/toolformer-dedupe-only-dataset.json",
    "Codegen/codegen-instruct.json",
)
"""GPTeacher files read by `load_gpteacher`, relative to the data folder."""

HELD_OUT_EVERY = 50
"""Every 50th row of each file (row index divisible by 50) goes to the held-out split (2 %)."""


@dataclass(frozen=True)
class Conversation:
    """One user/assistant exchange, with its source file and row index for provenance."""

    user: str
    assistant: str
    source: str
    row: int

    def messages(self) -> list[dict[str, str]]:
        """Return the conversation in the `messages` format that chat templates and TRL use."""
        return [{"role": "user", "content": self.user}, {"role": "assistant", "content": self.assistant}]


def load_gpteacher(data_dir: str | Path, split: str, seed: int = 0) -> list[Conversation]:
    """Read the GPTeacher files and return one split, shuffled with `seed`.

    Args:
        data_dir: Folder that contains the `Roleplay/`, `Toolformer/` and `Codegen/` subfolders.
        split: `"train"` or `"held_out"`. Rows whose index is a multiple of `HELD_OUT_EVERY` are held out.
        seed: Seed of the shuffle, so that a prefix of the list samples all three files.
    """
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}.")
    data_dir = Path(data_dir)
    conversations: list[Conversation] = []
    for relative in GPTEACHER_FILES:
        path = data_dir / relative
        if not path.is_file():
            raise FileNotFoundError(
                f"GPTeacher file {path} not found. Pass the folder that contains {', '.join(GPTEACHER_FILES)}."
            )
        rows = json.loads(path.read_text(encoding="utf-8"))
        for index, row in enumerate(rows):
            if (index % HELD_OUT_EVERY == 0) != (split == "held_out"):
                continue
            user = row["instruction"].strip()
            extra = (row.get("input") or "").strip()
            if extra:
                user = f"{user}\n\n{extra}"
            conversations.append(Conversation(user, row["response"].strip(), relative, index))
    random.Random(seed).shuffle(conversations)
    return conversations


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, max_length: int
) -> list[int]:
    """Render a conversation with the chat template and return at most `max_length` token ids."""
    ids = tokenizer.apply_chat_template(conversation.messages(), tokenize=True, return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids[:max_length])


def shared_prefix_length(tokenizer: PreTrainedTokenizerBase) -> int:
    """Return the number of leading tokens that every rendered conversation shares.

    SmolLM2's template inserts the same default system turn before every user turn, so these positions have
    identical activations in every example (causal attention).
    """
    first = tokenize_conversation(tokenizer, Conversation("a", "b", "", 0), max_length=10_000)
    second = tokenize_conversation(tokenizer, Conversation("Why?", "Because.", "", 0), max_length=10_000)
    length = 0
    for left, right in zip(first, second):
        if left != right:
            break
        length += 1
    return length
