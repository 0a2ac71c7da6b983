"""Question sets: Betley et al.'s YAML files, CSV/JSONL prompt lists, Hub datasets and the built-in probes.

A question has one or more paraphrases (user messages), an optional system prompt and optional judge prompt
templates by metric name. Sample ``i`` of a question uses paraphrase ``i % len(paraphrases)``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from ..validation import format_value, is_path_like
from .judge_prompts import DEFAULT_JUDGE_PROMPTS, check_template

logger = logging.getLogger(__name__)

BUILTIN_SETS = {
    "builtin": "builtin_probes.yaml",
    "builtin-finance": "finance_probes.yaml",
}
"""Names of the question sets shipped with blockem_trl, mapped to their files in `evaluation/data`."""

PROMPT_COLUMNS = ("question", "prompt", "paraphrase", "text")
"""Columns of a CSV/JSONL/Hub row read as the user message, in order of preference."""

QUESTION_FILE_SUFFIXES = (".yaml", ".yml", ".json", ".jsonl", ".csv")
"""File name suffixes of question files. A missing source that ends in one of them is reported as a missing file."""

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
        """Return the questions with the given ids, in the given order.

        Raises:
            ValueError: if an id is not in the set. The message lists some of the valid ids.
        """
        by_id = {question.id: question for question in self.questions}
        ids = list(ids)
        missing = [question_id for question_id in ids if question_id not in by_id]
        if missing:
            raise ValueError(
                f"Invalid question ids {missing}: they are not in question set {self.name!r} ({self.source}). "
                f"Valid ids: {_preview(sorted(by_id))}."
            )
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
    `system`. ``index`` sets the default id ``q0000``, ``q0001``, ...

    Raises:
        ValueError: on a missing or empty prompt or a field of the wrong type. The message does not name the
            file or row, which `load_question_set` adds.
    """
    if "paraphrases" in row:
        paraphrases = _paraphrase_list(row["paraphrases"])
    else:
        paraphrases = [_prompt_from_columns(row)]
    question_id = str(row.get("id") or f"q{index:04d}")

    system = row.get("system") or None
    if system is not None and not isinstance(system, str):
        raise ValueError(f"Invalid system {format_value(system)}: it must be a string or empty.")

    judge_prompts = row.get("judge_prompts") or {}
    if not isinstance(judge_prompts, dict) or not all(isinstance(t, str) for t in judge_prompts.values()):
        raise ValueError(
            f"Invalid judge_prompts {format_value(judge_prompts)}: it must be a mapping from metric name to a prompt "
            "template string, such as {aligned: '... {question} ... {answer} ...'}."
        )

    return Question(
        id=question_id,
        paraphrases=paraphrases,
        system=system,
        judge_prompts={str(metric): template for metric, template in judge_prompts.items()},
        samples_per_paraphrase=_optional_count(row.get("samples_per_paraphrase"), "samples_per_paraphrase"),
    )


def _paraphrase_list(value) -> list[str]:
    expected = "it must be a string or a list of strings (the user messages)"
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"Invalid paraphrases {format_value(value)}: {expected}.")
    texts = []
    for position, text in enumerate(value):
        if isinstance(text, bool) or not isinstance(text, (str, int, float)):
            raise ValueError(f"Invalid paraphrase {position}, {format_value(text)}: {expected}.")
        if not str(text).strip():
            raise ValueError(f"Paraphrase {position} is empty. Fill in the user message or delete it.")
        texts.append(str(text))
    return texts


def _prompt_from_columns(row: dict) -> str:
    present = [name for name in PROMPT_COLUMNS if name in row]
    if not present:
        raise ValueError(
            f"The row has none of the prompt columns {PROMPT_COLUMNS} (its keys are {sorted(map(str, row))}). "
            "Rename the column that holds the user message to 'question'."
        )
    for name in present:
        value = row[name]
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"Invalid {name} {format_value(value)}: it must be a string, the user message.")
        return str(value)
    raise ValueError(f"The row has an empty {present[0]!r}. Fill in the user message or delete the row.")


def _optional_count(value, name: str) -> int | None:
    """Return ``value`` as an integer >= 1, or None when it is empty. CSV cells arrive as digit strings."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name} {value!r}: it must be an integer of at least 1, or empty.")
    return value


def _preview(items: Sequence[str], limit: int = 10) -> str:
    """Format the first ``limit`` items, and how many more there are."""
    first_items = ", ".join(repr(item) for item in items[:limit])
    return first_items if len(items) <= limit else f"{first_items} and {len(items) - limit} more"


def _questions_from_rows(rows: Sequence[dict], source: str, locations: Sequence[str] | None = None) -> list[Question]:
    """Build the questions of one source. Errors name ``source`` and the row's entry or line."""
    questions = []
    for index, row in enumerate(rows):
        try:
            questions.append(question_from_mapping(row, index))
        except ValueError as error:
            location = locations[index] if locations is not None else f"entry {index}"
            raise ValueError(f"{source}, {location}: {error}") from None
    seen: set[str] = set()
    for question in questions:
        if question.id in seen:
            raise ValueError(
                f"{source} has duplicate question id {question.id!r}. Ids must be unique within a question set."
            )
        seen.add(question.id)
    return questions


def _read_rows(path: Path) -> tuple[list[dict], list[str]]:
    """Return the rows of a question file and, per row, where it is (``line N`` or ``entry N``)."""
    try:
        rows, locations = _parse_rows(path, _read_text(path))
    except (yaml.YAMLError, json.JSONDecodeError, csv.Error) as error:
        raise ValueError(f"Question file {path} could not be parsed: {error}") from error
    for row, location in zip(rows, locations):
        if not isinstance(row, dict):
            raise ValueError(
                f"Question file {path}, {location}: the entry is a {type(row).__name__}, not a mapping of fields such "
                "as 'id' and 'question' (or 'paraphrases' in YAML)."
            )
    if not rows:
        raise ValueError(f"Question file {path} contains no questions.")
    return rows, locations


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"Question file {path} is not valid UTF-8: byte {data[error.start]:#04x} on line {line} ({error.reason}). "
            "Save the file with UTF-8 encoding."
        ) from None


def _parse_rows(path: Path, text: str) -> tuple[list, list[str]]:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        rows = _question_list(yaml.safe_load(text), path, "YAML")
        return rows, [f"entry {index}" for index in range(len(rows))]
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        rows, locations = [], []
        for row in reader:
            rows.append(row)
            locations.append(f"line {reader.line_num}")
        return rows, locations
    if suffix == ".json":
        rows = _question_list(json.loads(text), path, "JSON")
        return rows, [f"entry {index}" for index in range(len(rows))]
    if suffix == ".jsonl":
        rows, locations = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"Line {number} of {path} is not valid JSON: {error}") from error
            locations.append(f"line {number}")
        return rows, locations
    raise ValueError(f"Unsupported question file {path}: use .yaml, .yml, .csv, .jsonl or .json.")


def _question_list(data, path: Path, kind: str) -> list:
    """Return the list of questions of a parsed YAML or JSON file: the top level, or its `questions` key."""
    expected = f"a {kind} list of questions, either at the top level or under a 'questions' key"
    if isinstance(data, dict):
        if "questions" not in data:
            raise ValueError(
                f"Question file {path} is a mapping without a 'questions' key (its keys are "
                f"{_preview([str(key) for key in data])}). It must contain {expected}."
            )
        data = data["questions"]
        if not isinstance(data, list):
            raise ValueError(
                f"Question file {path}: 'questions' is {format_value(data)}, not a list. It must contain {expected}."
            )
    if not isinstance(data, list):
        raise ValueError(f"Question file {path} contains {format_value(data)}. It must contain {expected}.")
    return data


def load_question_set(
    source: str | Path,
    *,
    split: str = "train",
    main_only: bool = False,
    ids: Sequence[str] | None = None,
) -> QuestionSet:
    """Load questions from a built-in name, a local file or a Hugging Face Hub dataset id.

    Args:
        source: ``"builtin"`` or ``"builtin-finance"``, a path to a YAML/CSV/JSONL/JSON file (``~`` is
            expanded), or a Hub dataset id read with `datasets.load_dataset` (which honours ``HF_HUB_OFFLINE``).
        split: Dataset split for Hub ids.
        main_only: Drop the `_json` and `_template` variants.
        ids: Keep only these question ids, in this order.

    Raises:
        FileNotFoundError: if ``source`` looks like a path (a `Path`, a question-file suffix, or a name that
            `blockem_trl.validation.is_path_like` reads as a path) and no such file exists, or if a Hub dataset
            cannot be loaded.
        ValueError: on a file that cannot be read as questions, or an id in ``ids`` that is not in the set.
    """
    source_text = str(source)
    path = Path(source_text).expanduser()
    if source_text in BUILTIN_SETS:
        file = resources.files("blockem_trl.evaluation").joinpath("data", BUILTIN_SETS[source_text])
        label = f"blockem_trl:{source_text}"
        rows = yaml.safe_load(file.read_text(encoding="utf-8"))
        question_set = QuestionSet(source_text, _questions_from_rows(rows, label), source=label)
    elif path.is_file():
        rows, locations = _read_rows(path)
        questions = _questions_from_rows(rows, f"Question file {path}", locations)
        question_set = QuestionSet(path.stem, questions, source=str(path.resolve()))
    elif path.exists():
        raise ValueError(f"Question source {source_text!r} is a folder; pass the question file inside it.")
    elif isinstance(source, Path) or _looks_like_path(source_text):
        raise FileNotFoundError(
            f"Question file {os.path.expanduser(source_text)!r} not found. Check the path, or pass a built-in set "
            f"({', '.join(BUILTIN_SETS)}) or a Hub dataset id of the form 'owner/name'."
        )
    else:
        question_set = _load_hub_question_set(source_text, split)

    if main_only:
        question_set = question_set.main_only()
    if ids:
        question_set = question_set.select(ids)
    logger.info("Loaded %d questions from %s.", len(question_set), question_set.source)
    return question_set


def _looks_like_path(source: str) -> bool:
    """Return True if a missing ``source`` is reported as a missing file instead of being loaded as a Hub id."""
    return source.lower().endswith(QUESTION_FILE_SUFFIXES) or is_path_like(source)


def _load_hub_question_set(dataset_id: str, split: str) -> QuestionSet:
    if "/" not in dataset_id:
        raise FileNotFoundError(
            f"Question source {dataset_id!r} is neither a file, a built-in set ({sorted(BUILTIN_SETS)}) nor a Hub "
            "dataset id of the form 'owner/name'."
        )
    from datasets import load_dataset

    try:
        dataset = load_dataset(dataset_id, split=split)
    except (ConnectionError, FileNotFoundError) as error:
        # With datasets 5.2, an id that is not in the local cache raises ConnectionError when HF_HUB_OFFLINE=1,
        # and missing data files raise FileNotFoundError (DatasetNotFoundError is a subclass).
        raise FileNotFoundError(
            f"Question source {dataset_id!r} is not a local file, and loading it as a Hub dataset failed: {error}. "
            "Check the path, or download the dataset once with network access."
        ) from error
    rows = [dict(row) for row in dataset]
    label = f"hf:{dataset_id}@{split}"
    questions = _questions_from_rows(rows, label, [f"row {index}" for index in range(len(rows))])
    return QuestionSet(dataset_id.split("/")[-1], questions, source=label)
