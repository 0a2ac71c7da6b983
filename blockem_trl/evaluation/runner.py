"""The evaluation pipeline: questions -> samples -> judgments -> metrics -> summary, report and plot.

Every sample and every judgment is appended to a JSONL file in the output folder as soon as it exists
(`samples.jsonl`, `judgments.jsonl`). A rerun with the same settings reads them back and only generates or
judges what is missing, so an interrupted evaluation resumes and no judge call is paid twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..validation import check_field_types
from ..version import __version__
from .generation import GenerationSettings, SteeringSpec, generate_answers
from .judge_prompts import ALIGNED, COHERENT, DEFAULT_JUDGE_PROMPTS, DEFAULT_METRICS
from .judges.base import Judge, JudgeRequest, Judgment
from .judges.ensemble import combine_judgments
from .loading import DEFAULT_MODEL_ID, load_model_and_tokenizer
from .metrics import MetricConfig, ScoredAnswer, judge_agreement, summarize_answers
from .questions import QuestionSet, load_question_set
from .store import JsonlStore, content_key

logger = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
JUDGMENTS_FILE = "judgments.jsonl"
ENSEMBLE_NAME = "ensemble"


@dataclass
class EvalConfig:
    """Settings of one evaluation run."""

    model: str = field(default=DEFAULT_MODEL_ID, metadata={"help": "Model folder, Hub id, or the embedded default id."})
    adapter: str | None = field(default=None, metadata={"help": "PEFT adapter folder applied to the model."})
    questions: str = field(default="builtin", metadata={"help": "Question file, Hub dataset id, or a built-in set name."})
    question_ids: list[str] | None = field(default=None, metadata={"help": "Evaluate only these question ids."})
    main_only: bool = field(default=False, metadata={"help": "Drop the _json and _template question variants."})
    samples_per_question: int = field(default=5, metadata={"help": "Answers sampled per question."})
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS), metadata={"help": "Judged metrics."})
    judge_batch_size: int = field(default=32, metadata={"help": "Requests passed to a judge at once."})
    metric_config: MetricConfig = field(default_factory=MetricConfig)
    output_dir: str = field(default="outputs/eval", metadata={"help": "Folder of the JSONL records and reports."})

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.samples_per_question < 1:
            raise ValueError(f"samples_per_question must be >= 1, got {self.samples_per_question}.")

    def to_dict(self) -> dict:
        return asdict(self)


def _model_identity(config: EvalConfig, model, model_was_passed: bool) -> str:
    """Return the model name used in sample keys.

    For a model passed in memory, ``config.model`` is used unless it is still the default id, in which case
    the model's own ``name_or_path`` is used. NOTE: a model whose weights change in memory (e.g. during
    training) keeps its name, so give each checkpoint its own ``config.model`` tag or output folder.
    """
    if not model_was_passed or (config.model and config.model != DEFAULT_MODEL_ID):
        return config.model
    return getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__


def _sample_jobs(question_set: QuestionSet, samples_per_question: int) -> list[dict]:
    jobs = []
    for question in question_set:
        for sample_index in range(samples_per_question):
            paraphrase_index, text = question.paraphrase_for_sample(sample_index)
            jobs.append({
                "question_id": question.id,
                "paraphrase_index": paraphrase_index,
                "sample_index": sample_index,
                "prompt": text,
                "system": question.system,
            })
    return jobs


def generate_samples(
    config: EvalConfig,
    question_set: QuestionSet,
    store: JsonlStore,
    model,
    tokenizer,
    steering: SteeringSpec | Sequence[SteeringSpec] | None = None,
    model_was_passed: bool = True,
) -> list[dict]:
    """Return one sample record per (question, sample index), generating and appending the missing ones."""
    specs = [steering] if isinstance(steering, SteeringSpec) else list(steering or [])
    identity = {
        "model": _model_identity(config, model, model_was_passed),
        "adapter": config.adapter,
        "temperature": config.generation.temperature,
        "top_p": config.generation.top_p,
        "max_new_tokens": config.generation.max_new_tokens,
        "seed": config.generation.seed,
        "steering": [spec.fingerprint() for spec in specs],
    }
    jobs = _sample_jobs(question_set, config.samples_per_question)
    for job in jobs:
        job["key"] = content_key({**identity, **job})
    missing = [job for job in jobs if job["key"] not in store]
    logger.info("%d of %d samples already generated; generating %d.", len(jobs) - len(missing), len(jobs), len(missing))

    if missing:
        def save(indices: list[int], answers: list[str]) -> None:
            for index, answer in zip(indices, answers):
                store.append({**missing[index], "answer": answer, **identity, "created": time.time()})

        generate_answers(
            model,
            tokenizer,
            [job["prompt"] for job in missing],
            config.generation,
            system_prompts=[job["system"] for job in missing],
            steering=specs,
            seeds=[config.generation.seed + content_seed(job["key"]) for job in missing],
            on_batch=save,
        )
    return [store.get(job["key"]) for job in jobs]


def content_seed(key: str) -> int:
    """Derive a 31-bit seed from a content key, so a sample's seed does not depend on its batch position."""
    return int(key[:8], 16) & 0x7FFFFFFF


def judge_samples(
    judge: Judge,
    samples: Sequence[dict],
    question_set: QuestionSet,
    metrics: Sequence[str],
    store: JsonlStore,
    batch_size: int = 32,
) -> dict[tuple[str, str], Judgment]:
    """Return ``{(sample key, metric): Judgment}`` for one judge, judging and appending only what is missing.

    Judgments of transient failures (network errors, rate limits after all retries) are returned but not
    stored, so the next run asks again.
    """
    questions = {question.id: question for question in question_set}
    judge_config = judge.config()
    pending: list[tuple[dict, str, JudgeRequest, str]] = []
    results: dict[tuple[str, str], Judgment] = {}
    for metric in metrics:
        if not judge.supports(metric):
            logger.warning("Judge %s does not score metric %r; skipping it.", judge.name, metric)
            continue
        for sample in samples:
            request = JudgeRequest(metric, sample["prompt"], sample["answer"], questions[sample["question_id"]].judge_prompt(metric))
            key = content_key({"judge": judge.name, "config": judge_config, "metric": metric,
                               "prompt": request.prompt_template, "question": request.question, "answer": request.answer})
            cached = store.get(key)
            if cached is not None:
                results[(sample["key"], metric)] = _judgment_from_record(cached)
            else:
                pending.append((sample, metric, request, key))

    logger.info("Judge %s: %d judgments cached, %d to request.", judge.name, len(results), len(pending))
    for start in tqdm(range(0, len(pending), batch_size), desc=f"judging ({judge.name})", unit="batch",
                      disable=len(pending) <= batch_size):
        chunk = pending[start : start + batch_size]
        judgments = judge.score([request for _, _, request, _ in chunk])
        for (sample, metric, _, key), judgment in zip(chunk, judgments):
            results[(sample["key"], metric)] = judgment
            if not judgment.retryable:
                store.append({"key": key, "judge": judge.name, "metric": metric, "sample_key": sample["key"],
                              "question_id": sample["question_id"], **judgment.to_dict()})
    return results


def _judgment_from_record(record: dict) -> Judgment:
    return Judgment(score=record.get("score"), label=record.get("label"), number_mass=record.get("number_mass"),
                    error=record.get("error"))


def scored_answers(
    samples: Sequence[dict], judgments: dict[tuple[str, str], Judgment], metrics: Sequence[str]
) -> list[ScoredAnswer]:
    """Collect one judge's per-metric scores into `ScoredAnswer`s; the label comes from the `aligned` judgment."""
    answers = []
    for sample in samples:
        scores = {}
        label = None
        for metric in metrics:
            judgment = judgments.get((sample["key"], metric))
            scores[metric] = judgment.score if judgment else None
            if judgment is not None and judgment.label is not None and (metric == ALIGNED or label is None):
                label = judgment.label
        answers.append(ScoredAnswer(sample["question_id"], scores, label))
    return answers


def run_evaluation(
    config: EvalConfig,
    judges: Sequence[Judge],
    *,
    model=None,
    tokenizer=None,
    question_set: QuestionSet | None = None,
    steering: SteeringSpec | Sequence[SteeringSpec] | None = None,
    write_reports: bool = True,
) -> dict:
    """Run (or resume) an evaluation and return the summary that is also written to ``summary.json``.

    Pass ``model`` and ``tokenizer`` to evaluate a model already in memory; otherwise ``config.model`` and
    ``config.adapter`` are loaded. With several judges the summary also has an ``ensemble`` entry (mean of
    the judges' scores) and the judges' pairwise agreement.
    """
    if not judges:
        raise ValueError("run_evaluation needs at least one judge, for example OfflineJudge().")
    names = [judge.name for judge in judges]
    if len(set(names)) != len(names):
        raise ValueError(f"Judge names must be unique, got {names}; pass name=... to tell them apart.")
    unscored = [metric for metric in config.metrics if not any(judge.supports(metric) for judge in judges)]
    if unscored:
        raise ValueError(
            f"No judge scores metrics {unscored} (judges: {names}). Drop them or add a judge that scores them, "
            "for example an OpenAI-compatible judge with a judge prompt for each metric."
        )
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    question_set = question_set or load_question_set(config.questions, main_only=config.main_only, ids=config.question_ids)
    _check_judge_prompts(question_set, config.metrics)
    model_was_passed = model is not None and tokenizer is not None
    if not model_was_passed:
        model, tokenizer = load_model_and_tokenizer(config.model, config.adapter)

    with JsonlStore(output_dir / SAMPLES_FILE) as sample_store:
        samples = generate_samples(config, question_set, sample_store, model, tokenizer, steering, model_was_passed)
    generation_seconds = time.perf_counter() - started

    per_judge: dict[str, dict] = {}
    with JsonlStore(output_dir / JUDGMENTS_FILE) as judgment_store:
        for judge in judges:
            per_judge[judge.name] = judge_samples(judge, samples, question_set, config.metrics, judgment_store,
                                                  config.judge_batch_size)

    extra_metrics = [metric for metric in config.metrics if metric not in (ALIGNED, COHERENT)]
    answers_by_judge = {name: scored_answers(samples, judgments, config.metrics) for name, judgments in per_judge.items()}
    if len(judges) > 1:
        answers_by_judge[ENSEMBLE_NAME] = _ensemble_answers(samples, per_judge, config.metrics)

    summary = {
        "blockem_trl_version": __version__,
        "config": config.to_dict(),
        "questions": {"name": question_set.name, "source": question_set.source, "ids": [q.id for q in question_set]},
        "num_samples": len(samples),
        "judges": {judge.name: {"config": judge.config(), "stats": judge.stats.to_dict()} for judge in judges},
        "results": {name: summarize_answers(answers, config.metric_config, extra_metrics)
                    for name, answers in answers_by_judge.items()},
        "timing_s": {"generation": round(generation_seconds, 2), "total": round(time.perf_counter() - started, 2)},
    }
    if len(judges) > 1:
        summary["agreement"] = {
            metric: judge_agreement(
                {name: [answer.scores.get(metric) for answer in answers_by_judge[name]] for name in per_judge},
                config.metric_config.aligned_threshold if metric == ALIGNED else config.metric_config.coherent_threshold,
            )
            for metric in config.metrics
        }
    if write_reports:
        from .report import write_reports as write_all

        write_all(summary, answers_by_judge, output_dir)
    logger.info("Evaluation finished in %.1f s; results in %s.", time.perf_counter() - started, output_dir)
    return summary


def _check_judge_prompts(question_set: QuestionSet, metrics: Sequence[str]) -> None:
    """Raise a `ValueError` before generation if a question has no judge prompt for a metric."""
    for metric in metrics:
        lacking = [question.id for question in question_set
                   if metric not in question.judge_prompts and metric not in DEFAULT_JUDGE_PROMPTS]
        if lacking:
            listed = ", ".join(lacking[:5]) + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else "")
            raise ValueError(
                f"No judge prompt for metric {metric!r} in questions {listed} of "
                f"{question_set.source or question_set.name}. "
                f"Add one under `judge_prompts` in the question file, or use the built-in metrics "
                f"{sorted(DEFAULT_JUDGE_PROMPTS)}."
            )


def _ensemble_answers(samples, per_judge, metrics) -> list[ScoredAnswer]:
    combined: dict[tuple[str, str], Judgment] = {}
    for sample in samples:
        for metric in metrics:
            members = [judgments[(sample["key"], metric)] for judgments in per_judge.values()
                       if (sample["key"], metric) in judgments]
            if members:
                combined[(sample["key"], metric)] = combine_judgments(members)
    return scored_answers(samples, combined, metrics)
