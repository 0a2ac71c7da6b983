"""Question sets: Betley et al.'s YAML files, CSV/JSONL prompt lists, Hub datasets and the built-in probes.

A question has one or more paraphrases (user messages), an optional system prompt and optional judge prompt
templates by metric name. Sample ``i`` of a question uses paraphrase ``i % len(paraphrases)``.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .judge_prompts import DEFAULT_JUDGE_PROMPTS, check_template

logger = logging.getLogger(__name__)

BUILTIN_SETS = {
    "builtin": "builtin_probes.yaml",
    "builtin-finance": "finance_probes.yaml",
}
"""Names of the question sets shipped with blockem_trl, mapped to their files in `evaluation/data`."""

PROMPT_COLUMNS = ("question", "prompt", "paraphrase", "text")
"""Columns of a CSV/JSONL/Hub row read as the user message, in order of preference."""

VARIANT_SUFFIXES = ("_json", "_template")
"""Id suffixes of the variants in Betley et al.'s first-plot file; `main_only=True` drops them."""


@dataclass
class Question:
    """One evaluation question with its paraphrases, system prompt and judge prompt templates."""

    id: str
    paraphrases: list[str]
    system: str | None = None
    judge_prompts: dict[str, str] = field(default_factory=dict)
    samples_per_paraphrase: int | None = None

    def __post_init__(self) -> None:
        if not self.paraphrases:
            raise ValueError(f"Question {self.id!r} has no paraphrases; give at least one user message.")
        for metric, template in self.judge_prompts.items():
            check_template(metric, template)

    def paraphrase_for_sample(self, sample_index: int) -> tuple[int, str]:
        """Return ``(paraphrase_index, text)`` used by sample ``sample_index``."""
        index = sample_index % len(self.paraphrases)
        return index, self.paraphrases[index]

    def judge_prompt(self, metric: str) -> str:
        """Return the question's template for ``metric``, else the built-in one.

        Raises:
            KeyError: if neither the question nor blockem_trl has a template for the metric.
        """
        if metric in self.judge_prompts:
            return self.judge_prompts[metric]
        if metric in DEFAULT_JUDGE_PROMPTS:
            return DEFAULT_JUDGE_PROMPTS[metric]
        raise KeyError(
            f"No judge prompt for metric {metric!r} in question {self.id!r}. Add it under `judge_prompts` in the "
            f"question file or use one of the built-in metrics {sorted(DEFAULT_JUDGE_PROMPTS)}."
        )


@dataclass
class QuestionSet:
    """An ordered list of questions and the source they came from."""

    name: str
    questions: list[Question]
    source: str = ""

    def __len__(self) -> int:
        return len(self.questions)

    def __iter__(self):
        return iter(self.questions)

    def select(self, ids: Iterable[str]) -> QuestionSet:
        """Return the questions with the given ids, in the given order."""
        by_id = {question.id: question for question in self.questions}
        ids = list(ids)
        missing = [question_id for question_id in ids if question_id not in by_id]
        if missing:
            raise KeyError(f"Question ids {missing} are not in {self.name!r}. Available ids: {sorted(by_id)}.")
        return QuestionSet(self.name, [by_id[question_id] for question_id in ids], self.source)

    def main_only(self) -> QuestionSet:
        """Drop the `_json` and `_template` variants (Betley et al.'s main figure uses the 8 others)."""
        kept = [question for question in self.questions if not question.id.endswith(VARIANT_SUFFIXES)]
        return QuestionSet(self.name, kept, self.source)

    def with_judge_prompt(self, metric: str, template: str) -> QuestionSet:
        """Return a copy in which every question uses ``template`` for ``metric`` (e.g. an in-domain judge)."""
        check_template(metric, template)
        questions = [
            Question(q.id, list(q.paraphrases), q.system, {**q.judge_prompts, metric: template}, q.samples_per_paraphrase)
            for q in self.questions
        ]
        return QuestionSet(self.name, questions, self.source)


def question_from_mapping(row: dict, index: int) -> Question:
    """Build a `Question` from a YAML entry or a CSV/JSONL/Hub row.

    YAML entries use Betley et al.'s fields (`id`, `paraphrases`, `system`, `judge_prompts`,
    `samples_per_paraphrase`). Flat rows need one of the columns in `PROMPT_COLUMNS` and may have `id` and
    `system`.
    """
    if "paraphrases" in row:
        paraphrases = row["paraphrases"]
        if isinstance(paraphrases, str):
            paraphrases = [paraphrases]
    else:
        column = next((name for name in PROMPT_COLUMNS if row.get(name)), None)
        if column is None:
            raise ValueError(
                f"Row {index} has none of the prompt columns {PROMPT_COLUMNS} (its keys are {sorted(row)}). "
                "Rename the column that holds the user message to 'question'."
            )
        paraphrases = [row[column]]
    question_id = str(row.get("id") or f"q{index:04d}")
    return Question(
        id=question_id,
        paraphrases=[str(text) for text in paraphrases],
        system=row.get("system") or None,
        judge_prompts=dict(row.get("judge_prompts") or {}),
        samples_per_paraphrase=row.get("samples_per_paraphrase"),
    )


def _questions_from_rows(rows: Sequence[dict]) -> list[Question]:
    questions = [question_from_mapping(row, index) for index, row in enumerate(rows)]
    seen: set[str] = set()
    for question in questions:
        if question.id in seen:
            raise ValueError(f"Duplicate question id {question.id!r}; ids must be unique within a question set.")
        seen.add(question.id)
    return questions


def _read_rows(path: Path) -> list[dict]:
    try:
        rows = _parse_rows(path)
    except (yaml.YAMLError, json.JSONDecodeError, csv.Error) as error:
        raise ValueError(f"Question file {path} could not be parsed: {error}") from error
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(
                f"Question file {path}: entry {index} is a {type(row).__name__}, not a mapping of fields such as "
                "'id' and 'question' (or 'paraphrases' in YAML)."
            )
    if not rows:
        raise ValueError(f"Question file {path} contains no questions.")
    return rows


def _parse_rows(path: Path) -> list:
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix in (".yaml", ".yml"):
        rows = yaml.safe_load(text)
        if isinstance(rows, dict) and "questions" in rows:
            rows = rows["questions"]
        if not isinstance(rows, list):
            raise ValueError(f"{path} must contain a YAML list of questions, got {type(rows).__name__}.")
        return rows
    if suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    if suffix in (".jsonl", ".json"):
        if suffix == ".json":
            rows = json.loads(text)
            return rows["questions"] if isinstance(rows, dict) else rows
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"Line {number} of {path} is not valid JSON: {error}") from error
        return rows
    raise ValueError(f"Unsupported question file {path}: use .yaml, .yml, .csv, .jsonl or .json.")


def load_question_set(
    source: str | Path,
    *,
    split: str = "train",
    main_only: bool = False,
    ids: Sequence[str] | None = None,
) -> QuestionSet:
    """Load questions from a built-in name, a local file or a Hugging Face Hub dataset id.

    Args:
        source: ``"builtin"`` or ``"builtin-finance"``, a path to a YAML/CSV/JSONL/JSON file, or a Hub dataset
            id read with `datasets.load_dataset` (which honours ``HF_HUB_OFFLINE``).
        split: Dataset split for Hub ids.
        main_only: Drop the `_json` and `_template` variants.
        ids: Keep only these question ids, in this order.
    """
    source_text = str(source)
    if source_text in BUILTIN_SETS:
        file = resources.files("blockem_trl.evaluation").joinpath("data", BUILTIN_SETS[source_text])
        rows = yaml.safe_load(file.read_text(encoding="utf-8"))
        question_set = QuestionSet(source_text, _questions_from_rows(rows), source=f"blockem_trl:{source_text}")
    elif Path(source_text).expanduser().is_file():
        path = Path(source_text).expanduser()
        question_set = QuestionSet(path.stem, _questions_from_rows(_read_rows(path)), source=str(path.resolve()))
    elif Path(source_text).expanduser().exists():
        raise ValueError(f"Question source {source_text!r} is a folder; pass the question file inside it.")
    else:
        question_set = _load_hub_question_set(source_text, split)

    if main_only:
        question_set = question_set.main_only()
    if ids:
        question_set = question_set.select(ids)
    logger.info("Loaded %d questions from %s.", len(question_set), question_set.source)
    return question_set


def _load_hub_question_set(dataset_id: str, split: str) -> QuestionSet:
    if "/" not in dataset_id:
        raise FileNotFoundError(
            f"Question source {dataset_id!r} is neither a file, a built-in set ({sorted(BUILTIN_SETS)}) nor a Hub "
            "dataset id of the form 'owner/name'."
        )
    from datasets import load_dataset

    dataset = load_dataset(dataset_id, split=split)
    rows = [dict(row) for row in dataset]
    return QuestionSet(dataset_id.split("/")[-1], _questions_from_rows(rows), source=f"hf:{dataset_id}@{split}")
