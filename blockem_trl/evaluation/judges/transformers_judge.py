"""A judge that runs a local chat model with transformers and reads its next-token distribution.

The judge prompt is rendered with the model's chat template, one forward pass gives the distribution of the
first reply token, and its ``top_k`` most likely tokens are scored exactly like the OpenAI judge's
``top_logprobs`` (probability-weighted mean over the number tokens 0-100).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import torch

from .base import Judge, JudgeRequest, Judgment
from .scoring import MIN_NUMBER_MASS, score_from_top_logprobs

logger = logging.getLogger(__name__)


@dataclass
class TransformersJudgeConfig:
    """Settings of `TransformersJudge`."""

    model_name_or_path: str = field(default="", metadata={"help": "Local folder or model id of the judge model."})
    top_k: int = field(default=20, metadata={"help": "Candidate first tokens scored (like top_logprobs)."})
    batch_size: int = field(default=8, metadata={"help": "Judge prompts per forward pass."})
    min_number_mass: float = field(
        default=MIN_NUMBER_MASS, metadata={"help": "Minimum probability on number tokens for a score to count."}
    )


class TransformersJudge(Judge):
    """Judge backed by a local causal LM; pass a loaded ``model`` and ``tokenizer`` or a config to load one."""

    def __init__(
        self,
        config: TransformersJudgeConfig | None = None,
        model=None,
        tokenizer=None,
        name: str | None = None,
    ):
        super().__init__()
        self.cfg = config or TransformersJudgeConfig()
        if model is None or tokenizer is None:
            if not self.cfg.model_name_or_path:
                raise ValueError(
                    "TransformersJudge needs a judge model: pass `model` and `tokenizer`, or set "
                    "TransformersJudgeConfig.model_name_or_path to a local folder or model id."
                )
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.cfg.model_name_or_path)
            model = AutoModelForCausalLM.from_pretrained(self.cfg.model_name_or_path)
        self.model = model.eval()
        self.tokenizer = tokenizer
        model_id = self.cfg.model_name_or_path or getattr(model.config, "name_or_path", "") or type(model).__name__
        self.name = name or f"transformers:{model_id}"

    def config(self) -> dict:
        settings = asdict(self.cfg)
        settings.pop("batch_size")
        settings["model_name_or_path"] = self.name.split(":", 1)[-1]
        return settings

    @torch.no_grad()
    def score_batch(self, requests: list[JudgeRequest]) -> list[Judgment]:
        tokenizer = self.tokenizer
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": request.render()}], add_generation_prompt=True, tokenize=False
            )
            for request in requests
        ]
        original_side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        device = next(self.model.parameters()).device
        judgments: list[Judgment] = []
        try:
            for start in range(0, len(texts), self.cfg.batch_size):
                batch = tokenizer(
                    texts[start : start + self.cfg.batch_size],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                ).to(device)
                logits = self.model(**batch).logits[:, -1, :].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                values, token_ids = logprobs.topk(min(self.cfg.top_k, logprobs.shape[-1]), dim=-1)
                for row_values, row_ids in zip(values.tolist(), token_ids.tolist()):
                    top: dict[str, float] = {}
                    for token_id, logprob in zip(row_ids, row_values):
                        token = tokenizer.decode([token_id])
                        # Different token ids can decode to the same text; their probabilities add up.
                        top[token] = float(torch.logaddexp(torch.tensor(top[token]), torch.tensor(logprob))) \
                            if token in top else logprob
                    judgment = score_from_top_logprobs(top, self.cfg.min_number_mass)
                    if judgment.error is not None:
                        self.stats.add("low_number_mass")
                    judgments.append(judgment)
        finally:
            tokenizer.padding_side = original_side
        return judgments
