"""Emergent-misalignment evaluation: question sets, generation, judges, metrics and reports."""

from .em_metric import compute_em_rates
from .generation import GenerationSettings, SteeringSpec, generate_answers, generate_for_questions
from .judge_prompts import ALIGNED, COHERENT, DEFAULT_JUDGE_PROMPTS, FINANCIAL_RISK
from .judges import EnsembleJudge, Judge, JudgeRequest, Judgment, OpenAIJudge, OpenAIJudgeConfig, TransformersJudge
from .metrics import MetricConfig, ScoredAnswer, judge_agreement, summarize_answers
from .questions import Question, QuestionSet, load_question_set
from .runner import EvalConfig, generate_samples, judge_samples, run_evaluation
from .store import JsonlStore, content_key

__all__ = [
    "ALIGNED",
    "COHERENT",
    "DEFAULT_JUDGE_PROMPTS",
    "FINANCIAL_RISK",
    "EnsembleJudge",
    "EvalConfig",
    "GenerationSettings",
    "JsonlStore",
    "Judge",
    "JudgeRequest",
    "Judgment",
    "MetricConfig",
    "OfflineJudge",
    "OpenAIJudge",
    "OpenAIJudgeConfig",
    "Question",
    "QuestionSet",
    "ScoredAnswer",
    "SteeringSpec",
    "TransformersJudge",
    "compute_em_rates",
    "content_key",
    "generate_answers",
    "generate_for_questions",
    "generate_samples",
    "judge_agreement",
    "judge_samples",
    "load_question_set",
    "run_evaluation",
    "summarize_answers",
]


def __getattr__(name: str):
    if name == "OfflineJudge":
        from .judges.offline import OfflineJudge

        return OfflineJudge
    raise AttributeError(name)
