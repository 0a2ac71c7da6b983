"""Resumable stage files: settings hashes, JSONL records flushed line by line, and the stage-1 tensors.

A build folder contains ``settings.json`` (each stage's settings and their hash), one JSONL file per stage
(``<stage>.jsonl``, one line per candidate or per candidate and strength) and ``stage1_stats.safetensors``.
A rerun with the same settings skips every record already written. A stage whose settings changed raises
`BuilderSettingsError` naming the changed fields, unless ``overwrite`` is set, in which case the files of
that stage and of every later stage are deleted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from blockem_trl.evaluation import JsonlStore, content_key
from blockem_trl.evaluation.store import RecordMap

logger = logging.getLogger(__name__)

STAGES = ("stage1", "baseline", "prescreen", "screen", "calibration")
"""Stages in run order; a stage's hash covers the hashes of the stages before it."""

SETTINGS_FILENAME = "settings.json"
STAGE1_TENSORS_FILENAME = "stage1_stats.safetensors"


class BuilderSettingsError(RuntimeError):
    """Raised when a build folder contains results computed with other settings."""


class NoLatentsSelectedError(RuntimeError):
    """Raised when no latent passes the screen, the calibration and ``min_effect``; the stage files are kept."""


def _changed_fields(old: dict, new: dict) -> list[str]:
    names = sorted(set(old) | set(new))
    return [f"{name}: {old.get(name)!r} -> {new.get(name)!r}" for name in names if old.get(name) != new.get(name)]


class BuildStore:
    """The files of one build folder, or in-memory records when ``output_dir`` is None."""

    def __init__(self, output_dir: str | Path | None, overwrite: bool = False):
        self.directory = Path(output_dir) if output_dir is not None else None
        self.overwrite = overwrite
        self.hashes: dict[str, str] = {}
        self._records: dict[str, JsonlStore | RecordMap] = {}
        self._tensors: dict[str, torch.Tensor] | None = None
        self._settings: dict[str, Any] = {}
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / SETTINGS_FILENAME
            if path.is_file():
                self._settings = json.loads(path.read_text(encoding="utf-8"))

    # ------------------------------------------------------------------ settings

    def open_stage(self, stage: str, settings: dict[str, Any]) -> str:
        """Record ``settings`` for ``stage`` (chained to the earlier stages) and return the stage hash.

        Raises:
            BuilderSettingsError: if the folder contains this stage's results for other settings and
                ``overwrite`` is False.
        """
        index = STAGES.index(stage)
        chained = {**settings, "previous_stage_hash": self.hashes.get(STAGES[index - 1]) if index else None}
        stage_hash = content_key(chained)[:16]
        stored = self._settings.get(stage)
        if stored is not None and stored["hash"] != stage_hash:
            changes = _changed_fields(stored["settings"], chained)
            if not self.overwrite:
                raise BuilderSettingsError(
                    f"The build folder {self.directory} contains {stage} results computed with other settings "
                    f"(hash {stored['hash']}, now {stage_hash}). Changed: {'; '.join(changes) or 'an earlier stage'}. "
                    "Use another output_dir, restore the old settings to resume, or set overwrite=True "
                    "(--overwrite) to delete this stage's and later stages' results."
                )
            logger.warning("Settings of %s changed (%s): deleting its results and those of later stages.",
                           stage, "; ".join(changes))
            self._delete_from(index)
        self.hashes[stage] = stage_hash
        self._settings[stage] = {"hash": stage_hash, "settings": chained}
        self._write_settings()
        return stage_hash

    def _delete_from(self, index: int) -> None:
        for stage in STAGES[index:]:
            self._settings.pop(stage, None)
            records = self._records.pop(stage, None)
            if records is not None:
                records.close()
            if self.directory is not None:
                (self.directory / f"{stage}.jsonl").unlink(missing_ok=True)
                if stage == "stage1":
                    (self.directory / STAGE1_TENSORS_FILENAME).unlink(missing_ok=True)
            if stage == "stage1":
                self._tensors = None

    def _write_settings(self) -> None:
        if self.directory is None:
            return
        path = self.directory / SETTINGS_FILENAME
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self._settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        temporary.replace(path)

    # ------------------------------------------------------------------ records

    def records(self, stage: str) -> JsonlStore | RecordMap:
        """Return the records of ``stage``, loading what an earlier run wrote."""
        if stage not in self.hashes:
            raise RuntimeError(f"Open stage {stage!r} with its settings (open_stage) before reading its records.")
        if stage not in self._records:
            if self.directory is None:
                self._records[stage] = RecordMap()
            else:
                self._records[stage] = JsonlStore(self.directory / f"{stage}.jsonl")
        return self._records[stage]

    # ------------------------------------------------------------------ stage-1 tensors

    def save_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self._tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
        if self.directory is not None:
            path = self.directory / STAGE1_TENSORS_FILENAME
            save_file(self._tensors, str(path.with_suffix(".tmp")), metadata={"hash": self.hashes["stage1"]})
            path.with_suffix(".tmp").replace(path)

    def load_tensors(self) -> dict[str, torch.Tensor] | None:
        """Return the stage-1 tensors saved under the current stage-1 hash, or None."""
        if self._tensors is not None:
            return self._tensors
        if self.directory is None:
            return None
        path = self.directory / STAGE1_TENSORS_FILENAME
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            stored_hash = (handle.metadata() or {}).get("hash")
        if stored_hash != self.hashes.get("stage1"):
            logger.warning("Ignoring %s: it was written with other stage-1 settings.", path)
            return None
        self._tensors = load_file(str(path))
        return self._tensors

    def close(self) -> None:
        for records in self._records.values():
            records.close()
        self._records.clear()
