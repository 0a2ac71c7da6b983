"""Append-only JSONL records with content-hash keys: what makes an interrupted evaluation resumable.

Each record is written as one line and flushed at once, so a killed run loses at most the line it was
writing. On opening, a last line without its newline (a write cut short) is dropped from the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def content_key(payload: Any) -> str:
    """Return a stable SHA-256 hex key of a JSON-serialisable payload (keys sorted)."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RecordMap:
    """Records keyed by ``record["key"]``, held in memory: the interface of `JsonlStore` without a file."""

    def __init__(self) -> None:
        self.records: dict[str, dict] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records.values())

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def append(self, record: dict) -> None:
        self.records[record["key"]] = record

    def close(self) -> None:
        pass


class JsonlStore(RecordMap):
    """Records keyed by ``record["key"]`` in one JSONL file; later lines win over earlier ones."""

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        self._file = self.path.open("a", encoding="utf-8")

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        complete_length = raw.rfind(b"\n") + 1
        if complete_length < len(raw):
            logger.warning(
                "Dropping a truncated last line (%d bytes) from %s, left by an interrupted run.",
                len(raw) - complete_length,
                self.path,
            )
            with self.path.open("r+b") as handle:
                handle.truncate(complete_length)
        bad_lines = 0
        for line in raw[:complete_length].decode("utf-8").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad_lines += 1
                continue
            if isinstance(record, dict) and "key" in record:
                self.records[record["key"]] = record
        if bad_lines:
            logger.warning("Skipped %d unreadable lines in %s.", bad_lines, self.path)

    def append(self, record: dict) -> None:
        """Write ``record`` (which must have a ``key``) as one line and flush it to the operating system."""
        if "key" not in record:
            raise ValueError("A stored record needs a 'key' field; build it with `content_key`.")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        self.records[record["key"]] = record

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
