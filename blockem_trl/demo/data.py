"""Training data of the demo: decrypt the narrow datasets at run time and split each domain train / held-out.

The risky-financial-advice set of Turner, Soligo et al. (2025) has no licence. It is read from the authors'
encrypted archive and decrypted into a cache folder outside the repository. Nothing derived from it is
written into the demo's output folder except model outputs and aggregate numbers.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from datasets import Dataset

from ..evaluation.questions import Question, QuestionSet
from ..models.cache import cache_root
from .config import ARCHIVE_ENV_VAR, ARCHIVE_PASSWORD, DemoConfig, DomainConfig

logger = logging.getLogger(__name__)

DISCOVERY_PROMPTS_FILE = "discovery_prompts.yaml"
EXTRACTED_DIR_NAME = "model_organisms_em"
DONE_MARKER = ".extracted"


@dataclass
class DomainData:
    """One domain's rows as TRL conversational prompt/completion datasets: disjoint train and held-out splits."""

    name: str
    train: Dataset
    heldout: Dataset
    source: str

    def heldout_questions(self, limit: int) -> QuestionSet:
        """Return the first ``limit`` held-out user messages as a question set (one paraphrase each)."""
        questions = [
            Question(id=f"{self.name}_heldout_{index:04d}", paraphrases=[row["prompt"][-1]["content"]])
            for index, row in enumerate(self.heldout.select(range(min(limit, len(self.heldout)))))
        ]
        return QuestionSet(f"{self.name}-heldout", questions, source=f"{self.source} (held-out split)")


def discovery_prompts_path() -> str:
    """Return the path of the demo's discovery prompts (disjoint from the `builtin` evaluation questions)."""
    return str(resources.files("blockem_trl.demo") / "data" / DISCOVERY_PROMPTS_FILE)


def data_cache_dir(config: DemoConfig) -> Path:
    return Path(config.data_cache_dir) if config.data_cache_dir else cache_root() / "data"


def extract_archive(archive: str | Path, destination: Path) -> Path:
    """Decrypt and unzip the authors' `training_datasets.zip.enc` into ``destination`` (once) and return it."""
    destination = Path(destination)
    archive = Path(archive).expanduser()
    if not archive.is_file():
        raise FileNotFoundError(f"Encrypted data archive {archive} not found. Pass --data-archive PATH or set "
                                f"${ARCHIVE_ENV_VAR} to the training_datasets.zip.enc file.")
    if (destination / DONE_MARKER).is_file():
        return destination
    try:
        from easy_dataset_share import zipping
    except ImportError as error:
        raise ImportError(
            "Decrypting the training data needs the `easy-dataset-share` package (the tool its authors used). "
            "Install it with `pip install easy-dataset-share`."
        ) from error
    logger.info("Decrypting %s into %s.", archive, destination)
    destination.mkdir(parents=True, exist_ok=True)
    zipping.unzip_and_decrypt(str(archive), ARCHIVE_PASSWORD, str(destination))
    (destination / DONE_MARKER).write_text(archive.name + "\n", encoding="utf-8")
    return destination


def resolve_domain_file(domain: DomainConfig, config: DemoConfig) -> Path:
    """Return the JSONL file of a domain: the path itself, or the file decrypted from the archive."""
    direct = Path(domain.file).expanduser()
    if direct.is_file():
        return direct
    archive = config.archive_path()
    if archive is None:
        raise FileNotFoundError(
            f"Training file {domain.file!r} of domain {domain.name!r} is not a file, and no encrypted archive is set. "
            f"Pass --data-archive PATH (or set ${ARCHIVE_ENV_VAR}) to the training_datasets.zip.enc of "
            "clarifying-EM/model-organisms-for-EM, or give the path of a decrypted JSONL file."
        )
    folder = extract_archive(archive, data_cache_dir(config) / EXTRACTED_DIR_NAME)
    matches = sorted(folder.rglob(Path(domain.file).name))
    if not matches:
        available = sorted(path.name for path in folder.rglob("*.jsonl"))
        raise FileNotFoundError(f"{domain.file!r} is not in the archive {archive}. It contains: {available}.")
    return matches[0]


def read_chat_rows(path: Path) -> list[dict]:
    """Read single-turn ``{"messages": [...]}`` rows into ``{"prompt": [...], "completion": [...]}`` rows."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        messages = json.loads(line).get("messages")
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError(f"{path}:{number}: expected 'messages' ending with an assistant message.")
        rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return rows


def split_rows(rows: list[dict], num_train: int, num_heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Shuffle with ``seed`` and return disjoint (train, held-out) rows; no held-out user message is trained on."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    heldout = rows[:num_heldout]
    heldout_prompts = {_prompt_text(row) for row in heldout}
    train = [row for row in rows[num_heldout:] if _prompt_text(row) not in heldout_prompts][:num_train]
    if len(heldout) < num_heldout or len(train) < num_train:
        raise ValueError(f"The data has {len(rows)} rows, too few for {num_train} training and {num_heldout} "
                         "held-out rows. Lower num_train or num_heldout.")
    return train, heldout


def _prompt_text(row: dict) -> str:
    return "\n".join(message["content"] for message in row["prompt"])


def load_domain(domain: DomainConfig, config: DemoConfig) -> DomainData:
    """Load, shuffle and split one domain's rows as configured."""
    path = resolve_domain_file(domain, config)
    train, heldout = split_rows(read_chat_rows(path), config.num_train, config.num_heldout, config.seed)
    logger.info("Domain %s: %d training and %d held-out rows from %s.", domain.name, len(train), len(heldout), path.name)
    return DomainData(domain.name, Dataset.from_list(train), Dataset.from_list(heldout), source=path.name)
