"""The end-to-end BLOCK-EM experiment: misalign, discover, block, compare, report.

Stages, each resumable (see `stages.py`):

1. ``arms/<domain>/plain``: plain LoRA SFT (lambda = 0), the misaligned reference;
2. ``latents``: `LatentSetBuilder` on the base model versus the plain adapter of the first domain;
3. ``calibration/<domain>``: the penalty the plain adapter pays, which maps relative weights to raw ones;
4. ``arms/<domain>/<arm>``: BLOCK-EM over the lambda sweep, KL to base, random-K and Top-Delta;
5. ``eval/...``: every arm and the base model, on open questions and on held-out domain rows;
6. ``report.md``, ``report.json`` and ``safety_vs_quality.png`` in the output folder.

Pass `DemoComponents` to inject the model loader, SAE, judges or data (tests use tiny random ones).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..evaluation import Judge
from ..latents import LatentSet
from .arms import ArmSpec, adapter_exists, format_weight, random_latent_set, top_delta_latent_set, train_arm
from .config import DemoConfig, evaluation_settings, settings_hash, training_settings
from .data import DomainData, discovery_prompts_path, load_domain
from .evaluate import evaluate_indomain_judged, evaluate_misalignment, heldout_loss
from .lambdas import measure_plain_penalty, raw_lambda
from .stages import Stage, running

logger = logging.getLogger(__name__)

ModelLoader = Callable[[], tuple[Any, Any]]


@dataclass
class DemoComponents:
    """Parts of the experiment that can be injected instead of loaded from the config.

    Args:
        load_model: returns a fresh ``(model, tokenizer)`` of the base model on every call.
        sae: the SAE object; defaults to ``load_sae(config.sae, config.sae_id)``.
        judges: the judges; the first one's results fill the report table.
        domains: ``{domain name: DomainData}``; defaults to decrypting and splitting the configured files.
    """

    load_model: ModelLoader | None = None
    sae: Any = None
    judges: list[Judge] | None = None
    domains: dict[str, DomainData] | None = field(default=None)


class DemoPipeline:
    """Run (or resume) the whole experiment for one `DemoConfig`; `run` returns the report dict."""

    def __init__(self, config: DemoConfig, components: DemoComponents | None = None):
        self.config = config
        self.components = components or DemoComponents()
        self.output_dir = Path(config.output_dir)
        self.stage_seconds: dict[str, float] = {}
        self._sae = None
        self._judges: list[Judge] | None = None

    # ------------------------------------------------------------------ components

    def load_model(self):
        loader = self.components.load_model or (lambda: load_base_model(self.config))
        return loader()

    @property
    def sae(self):
        if self._sae is None:
            if self.components.sae is not None:
                self._sae = self.components.sae
            else:
                from ..sae import load_sae

                self._sae = load_sae(self.config.sae, sae_id=self.config.sae_id)
        return self._sae

    @property
    def judges(self) -> list[Judge]:
        if self._judges is None:
            self._judges = self.components.judges or build_judges(self.config)
        return self._judges

    def domain_data(self) -> dict[str, DomainData]:
        if self.components.domains is not None:
            missing = [d.name for d in self.config.domains if d.name not in self.components.domains]
            if missing:
                raise ValueError(f"DemoComponents.domains has no data for domains {missing}.")
            return self.components.domains
        return {domain.name: load_domain(domain, self.config) for domain in self.config.domains}

    # ------------------------------------------------------------------ run

    def run(self) -> dict[str, Any]:
        config = self.config
        started = time.perf_counter()
        if config.threads:
            torch.set_num_threads(config.threads)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        data = self.domain_data()
        train_hash = settings_hash({**training_settings(config),
                                    "data": {name: d.source for name, d in sorted(data.items())}})

        plain_arms = {name: ArmSpec("plain", "plain", name) for name in data}
        plain_stages = {name: self._train_stage(arm, data[name], train_hash) for name, arm in plain_arms.items()}
        discovery_domain = config.domains[0].name
        latent_set, latents_stage = self._latents_stage(plain_stages[discovery_domain])

        arms: list[tuple[ArmSpec, Stage]] = [(plain_arms[name], plain_stages[name]) for name in data]
        mappings: dict[str, dict[str, Any]] = {}
        for name in data:
            measured = self._calibration_stage(name, data[name], plain_stages[name], latent_set, latents_stage)
            mappings[name] = self._lambda_mapping(measured)
            for spec, stage in self._regularised_arms(name, data[name], mappings[name], latent_set, latents_stage,
                                                      train_hash):
                arms.append((spec, stage))

        evaluations = self._evaluate_all(arms, data)
        from .report import build_report, write_report

        report = build_report(config, latent_set, mappings, evaluations, self.stage_seconds,
                              wall_seconds=time.perf_counter() - started, judge_name=self.judges[0].name)
        write_report(report, self.output_dir)
        from .hub import write_cards_for_report

        write_cards_for_report(report, self.output_dir)
        return report

    # ------------------------------------------------------------------ training stages

    def _arm_dir(self, arm: ArmSpec) -> Path:
        return self.output_dir / "arms" / arm.domain / arm.name

    def _train_stage(self, arm: ArmSpec, data: DomainData, train_hash: str, latent_set: LatentSet | None = None,
                     extra: dict[str, Any] | None = None) -> Stage:
        directory = self._arm_dir(arm)
        settings = {"training": train_hash, "arm": arm.to_dict(), **(extra or {})}
        if arm.kind in ("blockem", "random_k", "top_delta"):
            # Only the blocking arms use the reference mode: changing it must not retrain the plain arm and K.
            settings["block_reference"] = self.config.block_reference
        stage = Stage(f"train {arm.domain}/{arm.name}", directory, settings, outputs=("adapter_config.json",))
        result = stage.load()
        if result is not None and adapter_exists(directory):
            logger.info("Stage %s: done, skipping.", stage.name)
            stage.result = result
        else:
            model, tokenizer = self.load_model()
            with running(stage) as output:
                output.update(train_arm(arm, model, tokenizer, data.train, self.config, directory,
                                        latent_set=latent_set, sae=self.sae if latent_set is not None else None))
            del model
            _free_memory()
        self.stage_seconds[stage.name] = stage.seconds() or 0.0
        return stage

    def _latents_stage(self, plain: Stage) -> tuple[LatentSet, Stage]:
        from ..builder import LatentSetBuilder

        from ..sae import sae_content_hash

        config = self.config
        builder_config = make_builder_config(config, self.output_dir / "latents")
        settings = {"plain": plain.hash, "builder": builder_config.to_dict(), "sae": config.sae, "sae_id": config.sae_id,
                    "sae_hash": sae_content_hash(self.sae), "judge": [j.name for j in self.judges]}
        settings["builder"].pop("progress")
        if settings["builder"].get("min_effect") is None:
            # Left out while unset, so runs made before the option existed keep their stage hash.
            settings["builder"].pop("min_effect")
        stage = Stage("latents", self.output_dir / "latents", settings, outputs=("latent_set.json",))
        if stage.load() is None:
            model, tokenizer = self.load_model()
            with running(stage) as output:
                builder = LatentSetBuilder(builder_config, sae=self.sae, judge=self.judges[0])
                latent_set = builder.build(model, plain.directory, tokenizer, base_name=config.model, sae_name=config.sae)
                output.update({"positive": latent_set.positive, "negative": latent_set.negative,
                               "timings_s": builder.timings})
            del model
            _free_memory()
        self.stage_seconds["latents"] = stage.seconds() or 0.0
        latent_set = LatentSet.from_pretrained(stage.directory)
        logger.info("Latent set: K+ %s, K- %s at %s (0-based decoder block %d, = hidden_states[%d]).",
                    latent_set.positive, latent_set.negative, latent_set.hook_point, latent_set.layer_index,
                    latent_set.layer_index + 1)
        return latent_set, stage

    def _calibration_stage(self, domain: str, data: DomainData, plain: Stage, latent_set: LatentSet,
                           latents_stage: Stage) -> dict[str, Any]:
        from peft import PeftModel

        config = self.config
        stage = Stage(f"calibration {domain}", self.output_dir / "calibration" / domain,
                      {"plain": plain.hash, "latents": latents_stage.hash, "examples": config.calibration_examples})
        result = stage.load()
        if result is None:
            rows = data.train.select(range(min(config.calibration_examples, len(data.train))))
            model, tokenizer = self.load_model()
            plain_model = PeftModel.from_pretrained(model, str(plain.directory), is_trainable=True)
            with running(stage) as output:
                output.update(measure_plain_penalty(plain_model, tokenizer, rows, latent_set, self.sae, config,
                                                    stage.directory / "trainer"))
            result = stage.result
            del model, plain_model
            _free_memory()
        self.stage_seconds[stage.name] = stage.seconds() or 0.0
        return result

    def _lambda_mapping(self, measured: dict[str, Any]) -> dict[str, Any]:
        """Return the measured plain-adapter values and the raw weight of every swept value."""
        config = self.config
        values = sorted(set(config.lambdas) | {config.ablation_value})
        if config.lambda_mode == "relative":
            raw = {format_weight(value): raw_lambda(value, measured) for value in values}
        else:
            raw = {format_weight(value): value for value in values}
        return {**measured, "mode": config.lambda_mode, "raw_lambda": raw,
                "formula": "lambda = lambda_rel * sft_loss_plain / p_plain" if config.lambda_mode == "relative"
                else "lambda given raw"}

    def _regularised_arms(self, domain: str, data: DomainData, mapping: dict[str, Any], latent_set: LatentSet,
                          latents_stage: Stage, train_hash: str):
        config = self.config
        relative = config.lambda_mode == "relative"

        def weight_of(value: float) -> float:
            return mapping["raw_lambda"][format_weight(value)]

        for value in config.lambdas:
            arm = ArmSpec(f"blockem_l{format_weight(value)}", "blockem", domain, weight_of(value),
                          value if relative else None)
            yield arm, self._train_stage(arm, data, train_hash, latent_set, {"latents": latents_stage.hash})
        for value in config.kl_lambdas:
            arm = ArmSpec(f"kl_{format_weight(value)}", "kl", domain, value)
            yield arm, self._train_stage(arm, data, train_hash)

        ablation = config.ablation_value
        d_sae = int(self.sae.cfg.d_sae)
        for seed in config.random_seeds:
            arm = ArmSpec(f"random_k_s{seed}", "random_k", domain, weight_of(ablation),
                          ablation if relative else None, seed=seed)
            random_set = random_latent_set(latent_set, d_sae, seed)
            yield arm, self._train_stage(arm, data, train_hash, random_set,
                                         {"latents": random_set.indices, "signs": random_set.signs})
        if config.top_delta:
            import safetensors.torch

            from ..builder.store import STAGE1_TENSORS_FILENAME

            tensors = safetensors.torch.load_file(str(latents_stage.directory / STAGE1_TENSORS_FILENAME))
            top_set = top_delta_latent_set(latent_set, tensors["misaligned_mean"] - tensors["base_mean"])
            arm = ArmSpec("top_delta", "top_delta", domain, weight_of(ablation), ablation if relative else None)
            yield arm, self._train_stage(arm, data, train_hash, top_set,
                                         {"latents": top_set.indices, "signs": top_set.signs})

    # ------------------------------------------------------------------ evaluation

    def _evaluate_all(self, arms: list[tuple[ArmSpec, Stage]], data: dict[str, DomainData]) -> list[dict[str, Any]]:
        evaluations = [self._evaluate(None, None, data)]
        for arm, stage in arms:
            evaluations.append(self._evaluate(arm, stage, {arm.domain: data[arm.domain]}))
        return evaluations

    def _evaluate(self, arm: ArmSpec | None, trained: Stage | None, data: dict[str, DomainData]) -> dict[str, Any]:
        config = self.config
        name = "base" if arm is None else f"{arm.domain}/{arm.name}"
        directory = self.output_dir / "eval" / name
        settings = {"evaluation": evaluation_settings(config), "model": config.model,
                    "trained": trained.hash if trained is not None else None,
                    "judges": [{"name": j.name, "config": j.config()} for j in self.judges],
                    "domains": sorted(data)}
        stage = Stage(f"eval {name}", directory, settings, outputs=("misalignment/summary.json",))
        result = stage.load()
        if result is None:
            model, tokenizer = self.load_model()
            if trained is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(trained.directory))
            model.eval()
            tag = f"demo:{name}"
            with running(stage) as output:
                summary = evaluate_misalignment(model, tokenizer, tag, self.judges, config, directory / "misalignment")
                output["misalignment"] = {judge: block["overall"] for judge, block in summary["results"].items()}
                output["indomain"] = {}
                for domain_name, domain in data.items():
                    entry = heldout_loss(model, tokenizer, domain, config)
                    metric = next(d.judge_metric for d in config.domains if d.name == domain_name)
                    if metric:
                        judged = evaluate_indomain_judged(model, tokenizer, tag, self.judges, domain, metric, config,
                                                          directory / f"indomain_{domain_name}")
                        if judged is not None:
                            entry["judged"] = {judge: block["overall"] for judge, block in judged["results"].items()}
                            entry["judged_metric"] = metric
                    output["indomain"][domain_name] = entry
                output["arm"] = arm.to_dict() if arm is not None else {"name": "base", "kind": "base"}
                output["training"] = trained.result if trained is not None else None
                output["adapter_dir"] = str(trained.directory) if trained is not None else None
            result = stage.result
            del model
            _free_memory()
        self.stage_seconds[stage.name] = stage.seconds() or 0.0
        return result


def run_demo(config: DemoConfig, components: DemoComponents | None = None) -> dict[str, Any]:
    """Run (or resume) the whole BLOCK-EM experiment and return the report (also written to disk)."""
    return DemoPipeline(config, components).run()


def load_base_model(config: DemoConfig):
    """Load a fresh copy of the configured base model and its tokenizer (on the GPU when there is one)."""
    from ..models.smollm2 import DEFAULT_MODEL_ID, load_default_model

    dtype = getattr(torch, config.dtype)
    device = "cuda" if torch.cuda.is_available() else None
    if config.model == DEFAULT_MODEL_ID:
        return load_default_model(dtype=dtype, device=device)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype)
    if device is not None:
        model.to(device)
    return model, tokenizer


def make_builder_config(config: DemoConfig, output_dir: str | Path):
    """Return the `BuilderConfig` of the latents stage: the preset, the demo's prompts, then ``config.builder``."""
    from ..builder import BuilderConfig

    overrides = {"prompts": discovery_prompts_path(), "seed": config.seed, "hook_point": config.hook_point,
                 **config.builder, "output_dir": str(output_dir), "progress": config.progress,
                 # The stage's settings hash covers every builder setting, so stale stage files can go.
                 "overwrite": True}
    return BuilderConfig.quick(**overrides) if config.builder_preset == "quick" else BuilderConfig(**overrides)


def build_judges(config: DemoConfig) -> list[Judge]:
    """Return the configured judge (offline by default)."""
    if config.judge == "offline":
        from ..evaluation.judges.offline import OfflineJudge

        return [OfflineJudge()]
    if config.judge == "openai":
        from ..evaluation import OpenAIJudge, OpenAIJudgeConfig

        settings = {"base_url": config.judge_base_url}
        if config.judge_model:
            settings["model"] = config.judge_model
        return [OpenAIJudge(OpenAIJudgeConfig(**settings))]
    from ..evaluation.judges import TransformersJudge, TransformersJudgeConfig

    if not config.judge_model:
        raise ValueError("judge='transformers' needs judge_model: a local folder or model id of the judge model.")
    return [TransformersJudge(TransformersJudgeConfig(model_name_or_path=config.judge_model))]


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
