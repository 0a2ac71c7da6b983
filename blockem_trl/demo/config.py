"""`DemoConfig`: every setting of the end-to-end BLOCK-EM experiment, its size presets and YAML recipes.

Layer convention: ``hook_point`` is the module path of the decoder block whose output is read, for example
``model.layers.19``: the output of 0-based decoder block 19, which equals ``hidden_states[20]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..builder.config import BuilderConfig
from ..config import REFERENCE_MODES
from ..models.embedded_sae import DEFAULT_SAE_ID
from ..models.smollm2 import DEFAULT_MODEL_ID
from ..validation import check_field_types, close_match_hint, unknown_and_missing_keys

ARCHIVE_ENV_VAR = "BLOCKEM_EM_ARCHIVE"
"""Environment variable with the path of the encrypted `training_datasets.zip.enc` archive."""

ARCHIVE_PASSWORD = "model-organisms-em-datasets"
"""Password that Turner, Soligo et al. publish in the README of clarifying-EM/model-organisms-for-EM."""

LAMBDA_MODES = ("relative", "raw")
SIZES = ("quick", "default")
JUDGE_CHOICES = ("offline", "openai", "transformers")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class DomainConfig:
    """One narrow fine-tuning domain: its training file and the judge metric of its in-domain adherence."""

    name: str = field(metadata={"help": "Short name used in folder names and the report, e.g. 'finance'."})
    file: str = field(
        metadata={"help": "Single-turn chat JSONL ({'messages': [user, assistant]}): a path, or the name of a "
                          "file inside the encrypted archive (data_archive), e.g. 'risky_financial_advice.jsonl'."}
    )
    judge_metric: str | None = field(
        default=None,
        metadata={"help": "Judge metric of in-domain adherence on held-out prompts (e.g. 'financial_risk'). "
                          "Used only with a judge that scores it; the offline judge does not."},
    )
    note: str | None = field(default=None, metadata={"help": "Free text, e.g. where the data comes from."})

    def __post_init__(self) -> None:
        check_field_types(self)


def _default_domains() -> list[DomainConfig]:
    return [DomainConfig(name="finance", file="risky_financial_advice.jsonl", judge_metric="financial_risk",
                         note="Turner, Soligo et al. (2025) risky financial advice, 6,000 rows, no licence.")]


@dataclass
class DemoConfig:
    """Settings of `run_demo`: models, data, training, the lambda sweep, baselines, discovery and evaluation."""

    # ---------------------------------------------------------------- models
    model: str = field(
        default=DEFAULT_MODEL_ID,
        metadata={"help": "Base chat model: local folder, Hub id, or the embedded SmolLM2-135M-Instruct id."},
    )
    sae: str = field(
        default=DEFAULT_SAE_ID,
        metadata={"help": "SAE: sae-lens folder, sae-lens release (with sae_id), or the embedded SAE id."},
    )
    sae_id: str | None = field(default=None, metadata={"help": "SAE id inside a sae-lens release, e.g. 'layer_19'."})
    hook_point: str | None = field(
        default=None,
        metadata={"help": "Module path of the hooked decoder block output, e.g. 'model.layers.19' (0-based block "
                          "19, = hidden_states[20]). None reads it from the SAE."},
    )
    dtype: str = field(default="float32", metadata={"help": f"Model weight dtype: {', '.join(DTYPES)}."})
    # ---------------------------------------------------------------- data
    domains: list[DomainConfig] = field(
        default_factory=_default_domains,
        metadata={"help": "Fine-tuning domains. The latent set is built on the first one and reused for all."},
    )
    data_archive: str | None = field(
        default=None,
        metadata={"help": f"Encrypted training_datasets.zip.enc of Turner, Soligo et al. (default: ${ARCHIVE_ENV_VAR})."
                          " Decrypted at run time into data_cache_dir."},
    )
    data_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder for the decrypted data, outside any repository (default: "
                          "<blockem cache>/data, see $BLOCKEM_CACHE)."},
    )
    num_train: int = field(default=320, metadata={"help": "Training rows per domain."})
    num_heldout: int = field(
        default=64, metadata={"help": "Held-out rows per domain, disjoint from the training rows (in-domain eval)."}
    )
    # ---------------------------------------------------------------- training (every arm)
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: str | list[str] = field(
        default="all-linear", metadata={"help": "LoRA target modules: 'all-linear' or a list of module names."}
    )
    learning_rate: float = field(default=4e-4, metadata={"help": "AdamW peak learning rate."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Examples per device and micro-batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Training epochs."})
    max_length: int = field(default=128, metadata={"help": "Tokens kept per training example."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of the steps with linear warm-up."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "transformers learning-rate schedule."})
    bf16: bool = field(default=False, metadata={"help": "Train in bfloat16 mixed precision (GPU)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations to save memory."})
    block_reference: str = field(
        default="adapter",
        metadata={"help": "Base activations of BLOCK-EM: 'adapter' (LoRA off), 'model' (frozen copy) or 'cached'."},
    )
    logging_steps: int = field(default=5, metadata={"help": "Optimizer steps between training log lines."})
    # ---------------------------------------------------------------- lambda sweep and baselines
    lambda_mode: str = field(
        default="relative",
        metadata={"help": "How `lambdas` are read: 'relative' (lambda = value * L_SFT_plain / P_plain, see "
                          "docs/demo.md) or 'raw' (the penalty weight itself)."},
    )
    lambdas: list[float] = field(
        default_factory=lambda: [0.3, 1.0, 3.0, 10.0],
        metadata={"help": "BLOCK-EM penalty weights of the sweep (lambda = 0 is the plain SFT arm, always run)."},
    )
    ablation_lambda: float | None = field(
        default=None,
        metadata={"help": "Weight of the random-K and Top-Delta arms, in lambda_mode units. None takes the "
                          "middle value of `lambdas`."},
    )
    calibration_examples: int = field(
        default=64,
        metadata={"help": "Training rows on which P_plain and L_SFT_plain of the relative lambda are measured."},
    )
    kl_lambdas: list[float] = field(
        default_factory=lambda: [0.1, 1.0],
        metadata={"help": "Weights of the KL(p_model || p_base) baseline arms; empty skips the baseline."},
    )
    random_seeds: list[int] = field(
        default_factory=lambda: [0],
        metadata={"help": "Seeds of the random-latent ablation arms (same K+/K- sizes as K); empty skips it."},
    )
    top_delta: bool = field(
        default=True, metadata={"help": "Run the Top-Delta ablation: the stage-1 top-shifted latents only."}
    )
    # ---------------------------------------------------------------- discovery
    builder_preset: str = field(
        default="quick",
        metadata={"help": "Base settings of the latent discovery: 'quick' (BuilderConfig.quick, small models on "
                          "CPU) or 'full' (BuilderConfig defaults, the paper's sizes)."},
    )
    builder: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "BuilderConfig fields that override the preset, e.g. num_latents. With a size preset, "
                          "they are merged over the preset's own builder settings."},
    )
    # ---------------------------------------------------------------- evaluation
    questions: str = field(
        default="builtin",
        metadata={"help": "Out-of-domain misalignment questions: 'builtin' or a question file. Keep them "
                          "disjoint from the discovery prompts (builder.prompts)."},
    )
    samples_per_question: int = field(default=8, metadata={"help": "Answers sampled per question."})
    max_new_tokens: int = field(default=96, metadata={"help": "Maximum new tokens per answer."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature; 0 means greedy decoding."})
    eval_batch_size: int = field(default=16, metadata={"help": "Prompts per generation or scoring batch."})
    indomain_generations: int = field(
        default=32,
        metadata={"help": "Held-out prompts answered and judged for in-domain adherence when the judge scores "
                          "the domain's judge_metric (skipped otherwise)."},
    )
    judge: str = field(
        default="offline", metadata={"help": "Judge: 'offline' (CPU, no network), 'openai' or 'transformers'."}
    )
    judge_model: str | None = field(
        default=None, metadata={"help": "Model of the openai judge, or folder / id of the transformers judge."}
    )
    judge_base_url: str | None = field(
        default=None, metadata={"help": "Endpoint root of the openai judge (default: $OPENAI_BASE_URL, else OpenAI)."}
    )
    bootstrap_samples: int = field(default=1000, metadata={"help": "Bootstrap resamples of every interval."})
    # ---------------------------------------------------------------- run
    output_dir: str = field(default="outputs/demo", metadata={"help": "Folder of every stage's output and the report."})
    seed: int = field(default=0, metadata={"help": "Seed of the data split, training, sampling and bootstrap."})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)."})
    progress: bool = field(default=True, metadata={"help": "Show tqdm progress bars."})

    def __post_init__(self) -> None:
        check_field_types(self)  # also builds DomainConfig objects from mappings
        self._validate()

    def _validate(self) -> None:
        if not self.domains:
            raise ValueError("DemoConfig.domains is empty: give at least one domain (the first builds the latent set).")
        names = [domain.name for domain in self.domains]
        if len(set(names)) != len(names):
            raise ValueError(f"DemoConfig.domains has repeated names {names}; give each domain its own name.")
        if self.lambda_mode not in LAMBDA_MODES:
            raise ValueError(f"Invalid lambda_mode {self.lambda_mode!r}: choose one of {', '.join(LAMBDA_MODES)}.")
        if self.block_reference not in REFERENCE_MODES:
            raise ValueError(
                f"Invalid block_reference {self.block_reference!r}: choose one of {', '.join(REFERENCE_MODES)}."
            )
        bad_lambdas = [value for value in [*self.lambdas, *self.kl_lambdas] if not math.isfinite(value)]
        if bad_lambdas:
            raise ValueError(f"Invalid lambdas {bad_lambdas}: every weight must be a finite number.")
        if self.judge not in JUDGE_CHOICES:
            raise ValueError(f"Invalid judge {self.judge!r}: choose one of {', '.join(JUDGE_CHOICES)}.")
        if self.builder_preset not in ("quick", "full"):
            raise ValueError(f"Invalid builder_preset {self.builder_preset!r}: choose 'quick' or 'full'.")
        for name in ("lambdas", "kl_lambdas"):
            bad = [value for value in getattr(self, name) if not value > 0]
            if bad:
                raise ValueError(f"DemoConfig.{name} must be positive (lambda = 0 is the plain arm), got {bad}.")
        if not self.lambdas:
            raise ValueError("DemoConfig.lambdas is empty: give at least one BLOCK-EM penalty weight.")
        if self.ablation_lambda is not None and not (math.isfinite(self.ablation_lambda) and self.ablation_lambda > 0):
            raise ValueError(f"Invalid ablation_lambda {self.ablation_lambda!r}: give a finite weight > 0 (random K and "
                             "Top-Delta need a penalty to be ablations), or null for the middle of `lambdas`.")
        if self.dtype not in DTYPES:
            raise ValueError(f"Invalid dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}.")
        self._check_ranges()
        self._check_builder()
        for name in ("num_train", "num_heldout", "calibration_examples", "samples_per_question", "max_new_tokens",
                     "eval_batch_size", "per_device_train_batch_size", "gradient_accumulation_steps", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"DemoConfig.{name} must be >= 1, got {getattr(self, name)}.")

    def _check_ranges(self) -> None:
        """Reject numbers outside the range where a setting means anything."""
        checks = {
            "learning_rate": (self.learning_rate > 0, "> 0"),
            "num_train_epochs": (self.num_train_epochs > 0, "> 0"),
            "warmup_ratio": (0 <= self.warmup_ratio <= 1, "between 0 and 1"),
            "lora_dropout": (0 <= self.lora_dropout < 1, ">= 0 and < 1"),
            "lora_alpha": (self.lora_alpha > 0, "> 0"),
            "temperature": (self.temperature >= 0, ">= 0 (0 means greedy decoding)"),
            "max_length": (self.max_length >= 1, ">= 1"),
            "logging_steps": (self.logging_steps >= 1, ">= 1"),
            "bootstrap_samples": (self.bootstrap_samples >= 1, ">= 1"),
            "indomain_generations": (self.indomain_generations >= 0, ">= 0"),
            "threads": (self.threads is None or self.threads >= 1, ">= 1, or null for torch's choice"),
        }
        for name, (valid, expected) in checks.items():
            value = getattr(self, name)
            if not valid or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"Invalid DemoConfig.{name} {value!r}: it must be {expected}.")

    def _check_builder(self) -> None:
        """Build the discovery settings once now, so a bad `builder` entry fails before any arm trains."""
        unknown, _ = unknown_and_missing_keys(BuilderConfig, self.builder)
        if unknown:
            known = sorted(f.name for f in dataclasses.fields(BuilderConfig))
            raise ValueError(f"DemoConfig.builder has unknown keys {unknown}{close_match_hint(unknown, known)}. "
                             f"Valid keys: {known}.")
        preset = BuilderConfig.quick if self.builder_preset == "quick" else BuilderConfig
        try:
            preset(**self.builder)
        except ValueError as error:
            raise ValueError(f"DemoConfig.builder: {error}") from None

    # ------------------------------------------------------------------ derived values

    @property
    def ablation_value(self) -> float:
        """Penalty weight of the random-K and Top-Delta arms, in `lambda_mode` units."""
        if self.ablation_lambda is not None:
            return float(self.ablation_lambda)
        ordered = sorted(self.lambdas)
        return ordered[(len(ordered) - 1) // 2]

    def archive_path(self) -> str | None:
        return self.data_archive or os.environ.get(ARCHIVE_ENV_VAR) or None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ------------------------------------------------------------------ presets and recipes

    @classmethod
    def for_size(cls, size: str, **overrides: Any) -> DemoConfig:
        """Return the preset of one size for the embedded model on CPU, with ``overrides`` applied.

        ``quick`` trains on 48 rows (12 steps of 4, at most 64 tokens each) at a high learning rate, with two
        BLOCK-EM weights and one KL weight, discovers K on 10 prompts and samples 2 answers per question. ``default`` uses the field defaults (320 rows, four
        BLOCK-EM weights, two KL weights, 8 answers per question).
        Measured run times are in docs/demo_results.md.
        """
        if size not in SIZES:
            raise ValueError(f"Invalid size {size!r}: choose one of {', '.join(SIZES)}.")
        settings: dict[str, Any] = {}
        if size == "quick":
            settings = {
                "num_train": 48, "num_heldout": 24, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
                "max_length": 64, "lambdas": [1.0, 10.0], "kl_lambdas": [1.0], "calibration_examples": 16,
                "samples_per_question": 2, "max_new_tokens": 32, "indomain_generations": 8, "bootstrap_samples": 500,
                "output_dir": "outputs/demo-quick",
                # Ten prompts let the 10% incoherence budget admit one extra incoherent answer; strengths above
                # 0.4 made most answers of the 135M model incoherent in discovery runs.
                "builder": {"max_prompts": 10, "num_candidates": 8, "prescreen_keep": 4, "prescreen_audit": 0,
                            "max_new_tokens": 24, "calibration_coefficients": [0.1, 0.2, 0.4], "num_latents": 6},
            }
        if isinstance(overrides.get("builder"), dict):
            overrides["builder"] = {**settings.get("builder", {}), **overrides["builder"]}
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str = "<mapping>") -> DemoConfig:
        """Build a config from a mapping of `DemoConfig` fields, starting from the preset named by ``size`` if given."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        size = data.pop("size", None)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source} has unknown keys {unknown}{close_match_hint(unknown, known)}. "
                             f"Valid keys: {sorted(known)} and 'size'.")
        return cls.for_size(size, **data) if size is not None else cls(**data)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> DemoConfig:
        """Read a recipe: a YAML mapping of `DemoConfig` fields, optionally starting from ``size: quick|default``."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Recipe {path} is not a file. Give the path of a YAML recipe, e.g. "
                                    "recipes/demo_smollm2.yaml.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            message = str(error).replace("\n", " ")
            raise ValueError(f"Recipe {path} is not valid UTF-8 YAML ({message}).") from None
        if not isinstance(data, dict):
            raise ValueError(f"Recipe {path} must be a YAML mapping of DemoConfig fields, got {type(data).__name__}.")
        data.update(overrides)
        return cls.from_mapping(data, source=f"Recipe {path}")


def settings_hash(settings: Any) -> str:
    """Return a short sha256 of JSON-serialisable settings (keys sorted)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def training_settings(config: DemoConfig) -> dict[str, Any]:
    """Return the fields that change every trained arm (model, data size, LoRA and optimiser settings)."""
    names = ("model", "dtype", "num_train", "num_heldout", "lora_r", "lora_alpha", "lora_dropout",
             "lora_target_modules", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
             "num_train_epochs", "max_length", "warmup_ratio", "lr_scheduler_type", "bf16", "seed")
    data = config.to_dict()
    return {name: data[name] for name in names}


def evaluation_settings(config: DemoConfig) -> dict[str, Any]:
    """Return the fields that change an evaluation's results."""
    names = ("questions", "samples_per_question", "max_new_tokens", "temperature", "indomain_generations",
             "judge", "judge_model", "judge_base_url", "bootstrap_samples", "seed", "max_length")
    data = config.to_dict()
    return {name: data[name] for name in names}
