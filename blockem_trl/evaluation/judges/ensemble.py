"""Several judges at once: the mean of their scores, plus their pairwise agreement."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .base import Judge, JudgeRequest, Judgment


class EnsembleJudge(Judge):
    """Scores with every member judge and returns the mean score of the members that gave one.

    A label (CODE/REFUSAL) wins when more than half of the members return it. `last_member_judgments` keeps
    the members' own judgments of the latest batch, for agreement reports.
    """

    def __init__(self, judges: Sequence[Judge], name: str | None = None):
        super().__init__()
        if len(judges) < 2:
            raise ValueError(f"An ensemble needs at least 2 judges, got {len(judges)}.")
        self.judges = list(judges)
        self.name = name or "ensemble(" + "+".join(judge.name for judge in self.judges) + ")"
        self.last_member_judgments: dict[str, list[Judgment]] = {}

    def config(self) -> dict:
        return {judge.name: judge.config() for judge in self.judges}

    def supports(self, metric: str) -> bool:
        return all(judge.supports(metric) for judge in self.judges)

    def score_batch(self, requests: list[JudgeRequest]) -> list[Judgment]:
        self.last_member_judgments = {judge.name: judge.score(requests) for judge in self.judges}
        return [
            combine_judgments([member[index] for member in self.last_member_judgments.values()])
            for index in range(len(requests))
        ]

    def close(self) -> None:
        for judge in self.judges:
            judge.close()


def combine_judgments(judgments: Sequence[Judgment]) -> Judgment:
    """Combine one answer's judgments from several judges: majority label, else mean score."""
    labels = [judgment.label for judgment in judgments if judgment.label is not None]
    for label in set(labels):
        if labels.count(label) * 2 > len(judgments):
            return Judgment(label=label)
    scores = [judgment.score for judgment in judgments if judgment.score is not None]
    if not scores:
        errors = "; ".join(judgment.error for judgment in judgments if judgment.error)
        return Judgment(error=f"no member judge gave a score ({errors or 'labels disagree'})")
    return Judgment(score=math.fsum(scores) / len(scores))
