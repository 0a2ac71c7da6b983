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
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .constants import LATENT_SET_FILENAME, LATENT_SET_FORMAT, LATENT_SET_SCHEMA_VERSION, LAYER_CONVENTION
from .hooks import layer_index_from_hook_point
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
        if self.layer_index is None:
            self.layer_index = layer_index_from_hook_point(self.hook_point)
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
                outside the SAE's width, or a layer index that contradicts the hook point.
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
        if self.layer_index != layer_index_from_hook_point(self.hook_point):
            raise LatentSetError(
                f"layer_index {self.layer_index} contradicts hook point {self.hook_point!r}. {LAYER_CONVENTION}."
            )

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
        if not isinstance(data, dict) or data.get("format") != LATENT_SET_FORMAT:
            raise LatentSetError(f"{source} is not a blockem_trl latent set (missing 'format': {LATENT_SET_FORMAT!r}).")
        version = data.get("schema_version")
        if version != LATENT_SET_SCHEMA_VERSION:
            raise LatentSetError(
                f"{source} has schema_version {version!r}, but this blockem_trl ({__version__}) reads version "
                f"{LATENT_SET_SCHEMA_VERSION}. Upgrade blockem_trl (pip install -U blockem_trl) to read it."
            )
        for key in ("positive", "negative"):
            if not isinstance(data.get(key), list):
                raise LatentSetError(f"{source}: {key!r} must be a list of latent indices, got {data.get(key)!r}.")
        try:
            return cls(
                positive=list(data["positive"]),
                negative=list(data["negative"]),
                hook_point=data["hook_point"],
                layer_index=data.get("layer_index"),
                model_name_or_path=data.get("model_name_or_path"),
                sae=SAEReference(**data.get("sae", {})),
                records=[LatentRecord(**r) for r in data.get("records", [])],
                metadata=data.get("metadata", {}),
            )
        except (KeyError, TypeError) as error:
            raise LatentSetError(f"{source} is missing or has an invalid field: {error}.") from error

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
    if not isinstance(value, int):
        try:
            as_int = int(value)
        except (TypeError, ValueError, OverflowError):
            raise LatentSetError(f"Latent index {value!r} in {name} is not an integer.") from None
        if as_int != value:
            raise LatentSetError(f"Latent index {value!r} in {name} is not an integer.")
        value = as_int
    if value < 0:
        raise LatentSetError(f"Latent index {value} in {name} is negative. Indices count from 0.")
    return value


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
