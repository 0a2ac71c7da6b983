"""The latent set artefact: which SAE latents BLOCK-EM blocks, where they live, and where they came from.

A latent set is stored as one versioned JSON file (`LATENT_SET_FILENAME`) in a folder or a Hub repository.
K+ (``positive``) contains latents that rose in the misaligned model and may not rise above the base model
during training. K- (``negative``) contains latents that fell and may not fall below it.

Layer convention: ``layer_index`` is the 0-based index of the decoder block whose output is hooked, and
``hook_point`` is that block's module path (for example ``model.layers.19``, whose output equals
``hidden_states[20]``).
"""

from __future__ import annotations

import json
import logging
import numbers
import operator
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .constants import LATENT_SET_FILENAME, LATENT_SET_FORMAT, LATENT_SET_SCHEMA_VERSION, LAYER_CONVENTION
from .hooks import layer_index_from_hook_point
from .validation import format_value, unknown_and_missing_keys
from .version import __version__

logger = logging.getLogger(__name__)


class LatentSetError(ValueError):
    """Raised for a latent set file or content that cannot be used."""


@dataclass
class SAEReference:
    """Source and identity of the SAE that a latent set indexes."""

    release: str | None = None
    """sae-lens release name or Hub repo id (with ``sae_id``), for SAEs loaded with `SAE.from_pretrained`."""
    sae_id: str | None = None
    """SAE id inside the release, for example ``layer_19``."""
    path: str | None = None
    """Local folder written by sae-lens (``cfg.json`` + ``sae_weights.safetensors``), or the embedded SAE id."""
    content_hash: str | None = None
    """``sha256:<hex>`` of the SAE parameters, see `blockem_trl.sae.sae_content_hash`."""
    architecture: str | None = None
    d_in: int | None = None
    d_sae: int | None = None

    def __post_init__(self) -> None:
        for name in ("release", "sae_id", "path", "content_hash", "architecture"):
            _check_optional_string(getattr(self, name), name)
        self.d_in = _as_integer(self.d_in, "d_in", minimum=1, optional=True)
        self.d_sae = _as_integer(self.d_sae, "d_sae", minimum=1, optional=True)

    def describe(self) -> str:
        if self.release is not None:
            return f"{self.release}/{self.sae_id}" if self.sae_id else self.release
        return self.path or "<unknown SAE>"


@dataclass
class LatentRecord:
    """Provenance of one blocked latent: the scores that selected it, where known."""

    index: int
    sign: int
    """+1 for K+ (blocked from rising), -1 for K- (blocked from falling)."""
    activation_shift: float | None = None
    """Mean activation in the misaligned model minus the base model, over the discovery prompts."""
    screen: dict[str, float] = field(default_factory=dict)
    """Induce-and-repair screen scores (for example ``induce_gain``, ``repair_gain``)."""
    calibration: dict[str, float] = field(default_factory=dict)
    """Steering-strength calibration (for example ``best_coefficient``, ``effect``, ``incoherence``)."""

    def __post_init__(self) -> None:
        self.index = _as_integer(self.index, "record index", minimum=0)
        if isinstance(self.sign, bool) or not isinstance(self.sign, int) or self.sign not in (1, -1):
            raise LatentSetError(
                f"Invalid sign {format_value(self.sign)} in the record of latent {self.index}: it must be the integer 1 "
                "(K+) or -1 (K-)."
            )
        if self.activation_shift is not None:
            if isinstance(self.activation_shift, bool) or not isinstance(self.activation_shift, numbers.Real):
                raise LatentSetError(
                    f"Invalid activation_shift {format_value(self.activation_shift)} in the record of latent {self.index}: "
                    "it must be a number or null."
                )
            self.activation_shift = float(self.activation_shift)
        for name in ("screen", "calibration"):
            if not isinstance(getattr(self, name), dict):
                raise LatentSetError(
                    f"Invalid {name} {format_value(getattr(self, name))} in the record of latent {self.index}: it must be "
                    "a mapping from score name to value."
                )


@dataclass
class LatentSet:
    """The blocked latents K+ and K- of one SAE at one hook point, with their provenance.

    Example:
        >>> latents = LatentSet(positive=[12, 40], negative=[7], hook_point="model.layers.19",
        ...                     sae=SAEReference(path="my_sae", d_sae=4096))
        >>> latents.save_pretrained("out")
        >>> LatentSet.from_pretrained("out").positive
        [12, 40]
    """

    positive: list[int]
    negative: list[int]
    hook_point: str
    sae: SAEReference = field(default_factory=SAEReference)
    layer_index: int | None = None
    model_name_or_path: str | None = None
    records: list[LatentRecord] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    """Settings, prompts and models the set was built from, as written by the builder."""

    def __post_init__(self) -> None:
        self.positive = [_as_index(i, "positive") for i in self.positive]
        self.negative = [_as_index(i, "negative") for i in self.negative]
        if not isinstance(self.hook_point, str) or not self.hook_point:
            raise LatentSetError(
                f"Invalid hook_point {format_value(self.hook_point)}: it must be the module path of a decoder block, such "
                "as 'model.layers.19'."
            )
        self.layer_index = _as_integer(self.layer_index, "layer_index", minimum=0, optional=True)
        if self.layer_index is None:
            self.layer_index = _layer_of(self.hook_point)
        _check_optional_string(self.model_name_or_path, "model_name_or_path")
        if not isinstance(self.sae, SAEReference):
            raise LatentSetError(f"Invalid sae {format_value(self.sae)}: it must be an SAEReference.")
        if not isinstance(self.records, list) or not all(isinstance(r, LatentRecord) for r in self.records):
            raise LatentSetError(f"Invalid records {format_value(self.records)}: it must be a list of LatentRecord.")
        if not isinstance(self.metadata, dict):
            raise LatentSetError(f"Invalid metadata {format_value(self.metadata)}: it must be a mapping.")
        self.validate()

    # ------------------------------------------------------------------ accessors

    @property
    def indices(self) -> list[int]:
        """All blocked latents, K+ first, then K-."""
        return [*self.positive, *self.negative]

    @property
    def signs(self) -> list[int]:
        """+1 for each K+ latent and -1 for each K- latent, aligned with `indices`."""
        return [1] * len(self.positive) + [-1] * len(self.negative)

    def __len__(self) -> int:
        return len(self.positive) + len(self.negative)

    def record(self, index: int) -> LatentRecord | None:
        return next((r for r in self.records if r.index == index), None)

    # ------------------------------------------------------------------ validation

    def validate(self, d_sae: int | None = None) -> None:
        """Check the set is usable; pass ``d_sae`` to also check the indices against the SAE's width.

        Raises:
            LatentSetError: on an empty set, duplicates, overlapping K+ and K-, a negative index, an index
                outside the SAE's width, or a layer index that contradicts the hook point. Also on a record that
                repeats a latent, describes a latent outside K+ and K-, or has the sign of the other list.
        """
        if not self.indices:
            raise LatentSetError("The latent set is empty: K+ and K- hold no latent. Block at least one latent.")
        for name, values in (("positive (K+)", self.positive), ("negative (K-)", self.negative)):
            duplicates = sorted({i for i in values if values.count(i) > 1})
            if duplicates:
                raise LatentSetError(f"Latents {duplicates} appear more than once in {name}. List each once.")
        overlap = sorted(set(self.positive) & set(self.negative))
        if overlap:
            raise LatentSetError(
                f"Latents {overlap} are in both K+ and K-. A latent is blocked in one direction only: "
                "keep it in the list that matches the sign of its activation shift."
            )
        width = d_sae if d_sae is not None else self.sae.d_sae
        if width is not None:
            outside = sorted(i for i in self.indices if i >= width)
            if outside:
                raise LatentSetError(
                    f"Latents {outside} are outside the SAE's width of {width} latents (valid: 0 to {width - 1}). "
                    "The latent set was probably built for another SAE."
                )
        if self.layer_index != _layer_of(self.hook_point):
            raise LatentSetError(
                f"layer_index {self.layer_index} contradicts hook point {self.hook_point!r}. {LAYER_CONVENTION}."
            )
        self._validate_records()

    def _validate_records(self) -> None:
        sign_by_index = dict(zip(self.indices, self.signs))
        seen: set[int] = set()
        for record in self.records:
            if record.index not in sign_by_index:
                raise LatentSetError(
                    f"The record of latent {record.index} describes a latent that is in neither K+ nor K-. Remove "
                    "the record, or add the latent to positive or negative."
                )
            if record.sign != sign_by_index[record.index]:
                expected = "K+ (sign 1)" if sign_by_index[record.index] == 1 else "K- (sign -1)"
                raise LatentSetError(
                    f"The record of latent {record.index} has sign {record.sign}, but the latent is in {expected}. "
                    "Make the record's sign match the list that contains the latent."
                )
            if record.index in seen:
                raise LatentSetError(f"Latent {record.index} has more than one record. Keep one record per latent.")
            seen.add(record.index)

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LATENT_SET_FORMAT,
            "schema_version": LATENT_SET_SCHEMA_VERSION,
            "library_version": __version__,
            "layer_convention": LAYER_CONVENTION,
            "hook_point": self.hook_point,
            "layer_index": self.layer_index,
            "model_name_or_path": self.model_name_or_path,
            "sae": asdict(self.sae),
            "positive": self.positive,
            "negative": self.negative,
            "records": [asdict(r) for r in self.records],
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> LatentSet:
        """Build a latent set from the mapping written by `to_dict`.

        Raises:
            LatentSetError: naming ``source`` (the file) and the first field that is missing or invalid.
        """
        if not isinstance(data, dict) or data.get("format") != LATENT_SET_FORMAT:
            raise LatentSetError(f"{source} is not a blockem_trl latent set (missing 'format': {LATENT_SET_FORMAT!r}).")
        _check_schema_version(data.get("schema_version"), source)
        for key in ("positive", "negative"):
            if not isinstance(data.get(key), list):
                raise LatentSetError(f"{source}: {key!r} must be a list of latent indices, got {data.get(key)!r}.")
        if "hook_point" not in data:
            raise LatentSetError(
                f"{source}: missing field 'hook_point'. Set it to the hooked module path, such as 'model.layers.19'."
            )
        try:
            return cls(
                positive=list(data["positive"]),
                negative=list(data["negative"]),
                hook_point=data["hook_point"],
                layer_index=data.get("layer_index"),
                model_name_or_path=data.get("model_name_or_path"),
                sae=_from_mapping(SAEReference, data.get("sae", {}), "sae"),
                records=_records_from_list(data.get("records", [])),
                metadata=data.get("metadata", {}),
            )
        except LatentSetError as error:
            raise LatentSetError(f"{source}: {error}") from None

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write the set to ``save_directory/latent_set.json`` atomically and return the file path."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LATENT_SET_FILENAME
        with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False, encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        os.replace(f.name, path)
        return path

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
    ) -> LatentSet:
        """Load a latent set from a JSON file, a folder holding `LATENT_SET_FILENAME`, or a Hub repo id.

        Hub downloads go through `huggingface_hub.hf_hub_download`, so ``HF_HUB_OFFLINE=1`` and the local
        cache are honoured.
        """
        path = Path(path_or_repo_id)
        if path.is_file():
            file = path
        elif path.is_dir():
            file = path / LATENT_SET_FILENAME
            if not file.is_file():
                raise LatentSetError(f"No {LATENT_SET_FILENAME} in folder {path}. Point to the folder the builder wrote.")
        else:
            file = Path(_download_from_hub(str(path_or_repo_id), revision, cache_dir, token))
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise LatentSetError(f"{file} is not valid JSON ({error}). The file is corrupt: rebuild or re-download it.") from error
        return cls.from_dict(data, source=str(file))

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload BLOCK-EM latent set",
        revision: str | None = None,
    ) -> str:
        """Upload the latent set with a short README to a Hub model repo and return the commit URL."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as directory:
            self.save_pretrained(directory)
            Path(directory, "README.md").write_text(self.model_card(), encoding="utf-8")
            info = api.upload_folder(
                repo_id=repo_id, folder_path=directory, commit_message=commit_message, revision=revision
            )
        return str(info)

    def model_card(self) -> str:
        """Return a short Markdown README describing the set."""
        lines = [
            "---",
            "tags: [blockem, sae, emergent-misalignment]",
            "---",
            "# BLOCK-EM latent set",
            "",
            f"Blocked SAE latents for `{self.model_name_or_path or 'unknown model'}` at hook point "
            f"`{self.hook_point}` (0-based decoder block {self.layer_index}).",
            "",
            f"- SAE: `{self.sae.describe()}` (width {self.sae.d_sae}, hash `{self.sae.content_hash}`)",
            f"- K+ (may not rise above the base model): {self.positive}",
            f"- K- (may not fall below the base model): {self.negative}",
            "",
            "Load it with:",
            "",
            "```python",
            "from blockem_trl import LatentSet",
            'latents = LatentSet.from_pretrained("<this repo id>")',
            "```",
        ]
        return "\n".join(lines) + "\n"


def _as_index(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise LatentSetError(f"Latent index {value!r} in {name} is a boolean, not an integer.")
    try:
        value = operator.index(value)  # accepts int and NumPy or torch integers, and rejects floats such as 1.0
    except TypeError:
        raise LatentSetError(f"Latent index {value!r} in {name} is not an integer.") from None
    if value < 0:
        raise LatentSetError(f"Latent index {value} in {name} is negative. Indices count from 0.")
    return value


def _as_integer(value: Any, name: str, minimum: int, optional: bool = False) -> int | None:
    """Return ``value`` as an int, rejecting booleans, floats (even 1.0) and numeric strings."""
    if value is None and optional:
        return None
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < minimum:
        expected = f"an integer of at least {minimum}" + (" or null" if optional else "")
        raise LatentSetError(f"Invalid {name} {format_value(value)}: it must be {expected}.")
    return number


def _check_optional_string(value: Any, name: str) -> None:
    if value is not None and not isinstance(value, str):
        raise LatentSetError(f"Invalid {name} {format_value(value)}: it must be a string or null.")


def _layer_of(hook_point: str) -> int:
    try:
        return layer_index_from_hook_point(hook_point)
    except ValueError as error:
        raise LatentSetError(str(error)) from None


def _check_schema_version(version: Any, source: str) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise LatentSetError(
            f"{source}: invalid schema_version {format_value(version)}: it must be a positive integer, and this "
            f"blockem_trl ({__version__}) writes {LATENT_SET_SCHEMA_VERSION}. Rebuild the latent set, or set "
            f"schema_version to {LATENT_SET_SCHEMA_VERSION} if the file was edited by hand."
        )
    if version > LATENT_SET_SCHEMA_VERSION:
        raise LatentSetError(
            f"{source} has schema_version {version}, but this blockem_trl ({__version__}) reads version "
            f"{LATENT_SET_SCHEMA_VERSION}. Upgrade blockem_trl (pip install -U blockem_trl) to read it."
        )
    if version != LATENT_SET_SCHEMA_VERSION:
        raise LatentSetError(
            f"{source} has schema_version {version}, which this blockem_trl ({__version__}) no longer reads "
            f"(it reads {LATENT_SET_SCHEMA_VERSION}). Rebuild the latent set."
        )


def _from_mapping(cls: type, value: Any, name: str):
    """Build dataclass ``cls`` from a JSON mapping, naming ``name`` on a wrong type or an unknown key."""
    if not isinstance(value, dict):
        raise LatentSetError(f"Invalid {name} {format_value(value)}: it must be a mapping.")
    unknown, missing = unknown_and_missing_keys(cls, value)
    if unknown:
        known = ", ".join(f.name for f in fields(cls))
        raise LatentSetError(f"Unknown keys {unknown} in {name}. Valid keys: {known}.")
    if missing:
        raise LatentSetError(f"{name} is missing the keys {missing}. Add them, or rebuild the latent set.")
    try:
        return cls(**value)
    except LatentSetError as error:
        raise LatentSetError(f"{name}: {error}") from None


def _records_from_list(value: Any) -> list[LatentRecord]:
    if not isinstance(value, list):
        raise LatentSetError(f"Invalid records {format_value(value)}: it must be a list of mappings.")
    return [_from_mapping(LatentRecord, item, f"records[{position}]") for position, item in enumerate(value)]


def _download_from_hub(repo_id: str, revision, cache_dir, token) -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return hf_hub_download(
            repo_id=repo_id, filename=LATENT_SET_FILENAME, revision=revision, cache_dir=cache_dir, token=token
        )
    except HFValidationError as error:
        raise LatentSetError(
            f"{repo_id!r} is neither an existing file or folder nor a valid Hub repo id. Check the path."
        ) from error
    except LocalEntryNotFoundError as error:
        raise LatentSetError(
            f"Latent set {repo_id!r} is not a local file or folder, and as a Hub repo id it is not in the local "
            "Hugging Face cache and downloading is disabled or failed (HF_HUB_OFFLINE or no network). Check the "
            "path, or download the repo once with network access."
        ) from error
    except (RepositoryNotFoundError, EntryNotFoundError) as error:
        raise LatentSetError(f"Hub repo {repo_id!r} has no {LATENT_SET_FILENAME}: {error}") from error
