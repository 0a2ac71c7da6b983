"""Steered generation and its misalignment measures: the one experiment that stages 2 and 3 repeat."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from blockem_trl.evaluation import (
    ALIGNED,
    COHERENT,
    DEFAULT_JUDGE_PROMPTS,
    GenerationSettings,
    Judge,
    JudgeRequest,
    SteeringSpec,
    compute_em_rates,
    generate_answers,
)

from .prompts import DiscoveryPrompt

logger = logging.getLogger(__name__)


def latent_direction(sae, index: int) -> torch.Tensor:
    """Return the unit decoder direction of latent ``index``, shape ``(d_in,)``, in float32 on the CPU."""
    direction = sae.W_dec[index].detach().to("cpu", torch.float32)
    norm = direction.norm()
    if norm == 0:
        raise ValueError(f"Latent {index} has a zero decoder direction and cannot be steered. Drop it from the candidates.")
    return direction / norm


@dataclass
class Steering:
    """Steering of one latent: ``coefficient * mean_norm * sign * unit_direction`` added at the hook point."""

    hook_point: str
    direction: torch.Tensor
    coefficient: float
    mean_norm: float
    sign: int

    def spec(self, name: str) -> SteeringSpec:
        return SteeringSpec(hook_point=self.hook_point, direction=self.sign * self.direction,
                            coefficient=self.coefficient * self.mean_norm, name=name)


class Experiment:
    """Generates answers to the discovery prompts (optionally steered) and judges them for misalignment."""

    def __init__(self, tokenizer, prompts: Sequence[DiscoveryPrompt], judge: Judge, settings: GenerationSettings,
                 samples_per_prompt: int = 1, screen_metric: str = "misalignment_rate", judge_batch_size: int = 64):
        self.tokenizer = tokenizer
        self.prompts = [prompt for prompt in prompts for _ in range(samples_per_prompt)]
        self.judge = judge
        self.settings = settings
        self.screen_metric = screen_metric
        self.judge_batch_size = judge_batch_size

    def generate(self, model: nn.Module, steering: SteeringSpec | None = None) -> list[str]:
        """Generate one answer per prompt and sample in a single batched call."""
        return generate_answers(model, self.tokenizer, [prompt.text for prompt in self.prompts], self.settings,
                                system_prompts=[prompt.system for prompt in self.prompts], steering=steering,
                                progress=False)

    def measure(self, answers: Sequence[str]) -> dict[str, float]:
        """Judge the answers for ``aligned`` and ``coherent`` and return the rates plus ``measure``.

        ``measure`` is the screen's misalignment measure: the misalignment rate, or
        ``(100 - mean aligned) / 100`` for ``screen_metric="mean_aligned"``.
        """
        requests = [JudgeRequest(metric, prompt.text, answer, DEFAULT_JUDGE_PROMPTS[metric])
                    for metric in (ALIGNED, COHERENT) for prompt, answer in zip(self.prompts, answers)]
        judgments = []
        for start in range(0, len(requests), self.judge_batch_size):
            judgments.extend(self.judge.score(requests[start : start + self.judge_batch_size]))
        count = len(answers)
        aligned, coherent = judgments[:count], judgments[count:]
        failed = sum(judgment.error is not None for judgment in judgments)
        if failed:
            logger.warning("The judge failed on %d of %d requests; they count as unscored.", failed, len(judgments))
        rates = compute_em_rates([j.score for j in aligned], [j.score for j in coherent], [j.label for j in aligned])
        if self.screen_metric == "mean_aligned":
            mean_aligned = rates["mean_aligned"]
            rates["measure"] = (100.0 - mean_aligned) / 100.0 if not math.isnan(mean_aligned) else math.nan
        else:
            rates["measure"] = rates["misalignment_rate"]
        return {key: float(value) for key, value in rates.items()}

    def run(self, model: nn.Module, steering: SteeringSpec | None = None) -> tuple[list[str], dict[str, float]]:
        answers = self.generate(model, steering)
        return answers, self.measure(answers)
