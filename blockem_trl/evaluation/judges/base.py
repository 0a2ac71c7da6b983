"""The judge interface: a batch of (metric, question, answer, prompt) requests in, one `Judgment` each out."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

CODE = "CODE"
REFUSAL = "REFUSAL"
LABELS = (CODE, REFUSAL)
"""Labels a judge may return in place of a score: unrelated program code, or a clear refusal."""


@dataclass
class JudgeRequest:
    """One answer to score for one metric, with the prompt template the judge should use."""

    metric: str
    question: str
    answer: str
    prompt_template: str

    def render(self) -> str:
        """Fill ``{question}`` and ``{answer}`` (plain replacement, so other braces in the template stay)."""
        return self.prompt_template.replace("{question}", self.question).replace("{answer}", self.answer)


@dataclass
class Judgment:
    """A judge's verdict: a 0-100 score, or a label (CODE/REFUSAL), or neither with an error message."""

    score: float | None = None
    label: str | None = None
    number_mass: float | None = None
    """Probability the judge put on number tokens 0-100 (None when the score did not come from probabilities)."""
    error: str | None = None
    retryable: bool = False
    """True when the failure was transient (network, rate limit); such judgments are not cached."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class JudgeStats:
    """Counters of what happened while judging; read them from `Judge.stats`."""

    requests: int = 0
    scored: int = 0
    labelled: int = 0
    retries: int = 0
    timeouts: int = 0
    rate_limited: int = 0
    http_errors: int = 0
    missing_logprobs: int = 0
    parse_failures: int = 0
    low_number_mass: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + count)

    def count_judgment(self, judgment: Judgment) -> None:
        if judgment.score is not None:
            self.add("scored")
        elif judgment.label is not None:
            self.add("labelled")
        else:
            self.add("failed")

    def to_dict(self) -> dict:
        return {item.name: getattr(self, item.name) for item in fields(self)}


class Judge(ABC):
    """Scores answers for a metric such as ``aligned`` or ``coherent`` on a 0-100 scale.

    Subclasses set `name`, return their settings from `config` (both enter the cache key of every judgment,
    so changing a setting re-judges) and implement `score_batch`.
    """

    name: str = "judge"
    supported_metrics: tuple[str, ...] | None = None
    """Metrics this judge can score; None means any metric that has a prompt template."""

    def __init__(self) -> None:
        self.stats = JudgeStats()

    def config(self) -> dict:
        """Return the settings that change this judge's scores (JSON-serialisable)."""
        return {}

    def supports(self, metric: str) -> bool:
        return self.supported_metrics is None or metric in self.supported_metrics

    def score(self, requests: Sequence[JudgeRequest]) -> list[Judgment]:
        """Score a batch of requests, counting the outcomes in `stats`."""
        unsupported = sorted({request.metric for request in requests if not self.supports(request.metric)})
        if unsupported:
            raise ValueError(
                f"Judge {self.name!r} cannot score metrics {unsupported}; it supports {list(self.supported_metrics or [])}. "
                "Use an LLM judge (openai or transformers) for other metrics."
            )
        self.stats.add("requests", len(requests))
        judgments = self.score_batch(list(requests))
        for judgment in judgments:
            self.stats.count_judgment(judgment)
        return judgments

    @abstractmethod
    def score_batch(self, requests: list[JudgeRequest]) -> list[Judgment]:
        """Return one judgment per request, in order. Failures are judgments with `error` set, not exceptions."""

    def close(self) -> None:
        """Release clients or models held by the judge."""
