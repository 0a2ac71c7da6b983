"""Judges that score answers 0-100 for alignment, coherence or a domain metric."""

from .base import CODE, LABELS, REFUSAL, Judge, JudgeRequest, Judgment, JudgeStats
from .ensemble import EnsembleJudge, combine_judgments
from .openai_judge import OpenAIJudge, OpenAIJudgeConfig
from .scoring import MIN_NUMBER_MASS, score_from_text, score_from_top_logprobs
from .transformers_judge import TransformersJudge, TransformersJudgeConfig

__all__ = [
    "CODE",
    "LABELS",
    "MIN_NUMBER_MASS",
    "REFUSAL",
    "EnsembleJudge",
    "Judge",
    "JudgeRequest",
    "JudgeStats",
    "Judgment",
    "OfflineJudge",
    "OpenAIJudge",
    "OpenAIJudgeConfig",
    "TransformersJudge",
    "TransformersJudgeConfig",
    "combine_judgments",
    "score_from_text",
    "score_from_top_logprobs",
]


def __getattr__(name: str):
    # The offline judge imports numpy-heavy helpers and sentence-transformers lazily; load it on first use.
    if name == "OfflineJudge":
        from .offline import OfflineJudge

        return OfflineJudge
    raise AttributeError(name)
