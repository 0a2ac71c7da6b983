"""Completion markers of the demo's stages, so that a rerun skips every finished arm and evaluation.

A stage is done when its folder has the marker file, the marker's settings hash equals the hash of the
current settings, and every output the marker lists exists. The marker is written last, after the outputs,
so an interrupted stage is redone from the start.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..version import __version__
from .config import settings_hash

logger = logging.getLogger(__name__)

MARKER_FILENAME = "blockem_demo_stage.json"


class Stage:
    """One resumable step: a folder, the settings that produce its output, and its result once done."""

    def __init__(self, name: str, directory: str | Path, settings: dict[str, Any], outputs: tuple[str, ...] = ()):
        self.name = name
        self.directory = Path(directory)
        self.settings = settings
        self.hash = settings_hash(settings)
        self.outputs = outputs
        self.result: dict[str, Any] | None = None

    @property
    def marker_path(self) -> Path:
        return self.directory / MARKER_FILENAME

    def load(self) -> dict[str, Any] | None:
        """Return the stored result when the stage is done with the current settings, else None."""
        if not self.marker_path.is_file():
            return None
        marker = json.loads(self.marker_path.read_text(encoding="utf-8"))
        if marker.get("settings_hash") != self.hash:
            logger.info("Stage %s: settings changed since the last run (hash %s -> %s); running it again.",
                        self.name, marker.get("settings_hash"), self.hash)
            return None
        missing = [name for name in marker.get("outputs", []) if not (self.directory / name).exists()]
        if missing:
            logger.info("Stage %s: outputs %s are missing; running it again.", self.name, missing)
            return None
        return marker["result"]

    def save(self, result: dict[str, Any], seconds: float) -> None:
        marker = {
            "stage": self.name,
            "settings_hash": self.hash,
            "settings": self.settings,
            "outputs": list(self.outputs),
            "result": result,
            "seconds": round(seconds, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "blockem_trl_version": __version__,
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.marker_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(marker, indent=2, default=str) + "\n", encoding="utf-8")
        temporary.replace(self.marker_path)
        self.result = result

    def seconds(self) -> float | None:
        """Return the run time recorded in the marker, if the stage is done."""
        if not self.marker_path.is_file():
            return None
        return json.loads(self.marker_path.read_text(encoding="utf-8")).get("seconds")


@contextmanager
def running(stage: Stage) -> Iterator[dict[str, Any]]:
    """Run a stage body that fills the yielded dict; on success write the marker with the elapsed time."""
    if stage.marker_path.exists():
        stage.marker_path.unlink()
    stage.directory.mkdir(parents=True, exist_ok=True)
    logger.info("Stage %s: starting (settings hash %s).", stage.name, stage.hash)
    start = time.perf_counter()
    result: dict[str, Any] = {}
    yield result
    elapsed = time.perf_counter() - start
    stage.save(result, elapsed)
    logger.info("Stage %s: done in %.1f s.", stage.name, elapsed)
