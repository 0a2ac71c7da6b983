"""`LatentSetBuilder`: runs the three discovery stages and returns a `LatentSet`; also a `TrainerCallback`.

Stage 1 ranks SAE latents by their activation shift between the base and the misaligned model and keeps
the top candidates in each direction. An optional teacher-forced prescreen prunes them. Stage 2 keeps
the candidates that pass the induce-and-repair steering screen. Stage 3 sweeps each survivor's steering
strength under an incoherence budget, ranks, keeps |K| latents and splits them into K+ (rose) and K- (fell).

Layer convention: the hook point is the module path of the decoder block whose output is read and steered,
for example ``model.layers.19`` = output of 0-based block 19 = ``hidden_states[20]``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn
from transformers import TrainerCallback

from blockem_trl.evaluation import GenerationSettings, Judge
from blockem_trl.hooks import layer_index_from_hook_point, normalize_hook_point
from blockem_trl.latents import LatentRecord, LatentSet
from blockem_trl.sae import load_sae, sae_hook_point, sae_reference
from blockem_trl.version import __version__

from .config import BASELINE_FIELDS, CALIBRATION_FIELDS, PRESCREEN_FIELDS, SCREEN_FIELDS, STAGE1_FIELDS, BuilderConfig
from .measure import Experiment
from .pair import ModelPair
from .prescreen import ReferenceBatch, choose_for_generation, prescreen_candidates, screen_agreement
from .prompts import load_discovery_prompts
from .stage1_shift import Candidate, activation_stats, select_candidates
from .stage2_screen import run_baselines, screen_candidates
from .stage3_calibrate import calibrate_candidates, rank_latents
from .store import BuildStore, NoLatentsSelectedError

logger = logging.getLogger(__name__)


class LatentSetBuilder(TrainerCallback):
    """Find the BLOCK-EM latent set K from a base model and a misaligned model (or LoRA adapter).

    Args:
        config: the discovery settings; `BuilderConfig.quick()` is a preset for small models on CPU.
        sae: an `sae_lens.SAE`, or anything `blockem_trl.sae.load_sae` accepts (folder, embedded id).
            Needed for the callback; `build` also takes it directly.
        sae_id: SAE id inside a sae-lens release, when ``sae`` is a release name.
        judge: the judge of the screen and the calibration. Defaults to the offline judge of
            `blockem_trl.evaluation`, which is a cheap proxy meant for small models.

    Example:
        ```python
        builder = LatentSetBuilder(BuilderConfig.quick(output_dir="discovery"), sae=sae)
        latent_set = builder.build(base_model, "path/to/misaligned_lora", tokenizer)
        ```

    As a callback, attach it to a misaligning `SFTTrainer` run with a LoRA adapter. In ``on_train_end`` it
    builds K from the trained adapter (turned off for the base model) and saves ``latent_set.json`` into
    ``args.output_dir``. The stage files go to ``<output_dir>/latent_discovery`` unless
    ``config.output_dir`` is set.
    """

    def __init__(self, config: BuilderConfig | None = None, sae: Any = None, sae_id: str | None = None,
                 judge: Judge | None = None):
        self.config = config or BuilderConfig()
        self.sae = sae
        self.sae_id = sae_id
        self.judge = judge
        self.timings: dict[str, float] = {}
        self.latent_set: LatentSet | None = None

    # ------------------------------------------------------------------ public API

    def build(self, base_model: nn.Module | None, misaligned: nn.Module | str | os.PathLike, tokenizer,
              sae: Any = None, base_name: str | None = None, sae_name: str | None = None) -> LatentSet:
        """Run all stages (resuming from ``config.output_dir``) and return the latent set.

        Args:
            base_model: the model before misaligning fine-tuning. May be None when ``misaligned`` is a
                `peft.PeftModel`, whose adapter is turned off for the base model.
            misaligned: the misaligned model, a merged checkpoint folder, or a LoRA adapter folder (loaded
                onto ``base_model``, and removed again when the build ends).
            tokenizer: a fast tokenizer with a chat template.
            sae: overrides the SAE given to the constructor.
            base_name: name or path recorded for the base model; defaults to its ``config.name_or_path``.
            sae_name: folder, release or id recorded for an SAE passed as an object.

        Raises:
            BuilderSettingsError: if ``config.output_dir`` contains results of other settings.
        """
        sae_object, sae_name = self._resolve_sae(sae, sae_name)
        pair = ModelPair(base_model, misaligned, base_name=base_name)
        store = BuildStore(self.config.output_dir, overwrite=self.config.overwrite)
        try:
            return self._build(pair, tokenizer, sae_object, sae_name, store)
        finally:
            store.close()
            pair.close()

    # ------------------------------------------------------------------ stages

    def _build(self, pair: ModelPair, tokenizer, sae, sae_name: str | None, store: BuildStore) -> LatentSet:
        config = self.config
        self.timings = {}
        hook_point = self._hook_point(sae)
        prompts = load_discovery_prompts(config.prompts, config.all_paraphrases, config.max_prompts,
                                         config.system_prompt)
        reference = sae_reference(sae, sae_name, self.sae_id)
        identity = pair.identity()
        logger.info("Discovery on %d prompts at %s (0-based decoder block %d, = hidden_states[%d]) with %s.",
                    len(prompts), hook_point, layer_index_from_hook_point(hook_point),
                    layer_index_from_hook_point(hook_point) + 1, reference.describe())

        # Stage 1: activation shift and candidates.
        stage1_settings = {**config.stage_settings(STAGE1_FIELDS), "hook_point": hook_point, "models": identity,
                           "sae_hash": reference.content_hash, "prompts": [p.to_dict() for p in prompts]}
        store.open_stage("stage1", stage1_settings)
        with self._timed("stage1_shift"):
            tensors = store.load_tensors()
            if tensors is None:
                tensors = self._stage1(pair, tokenizer, sae, prompts, hook_point)
                store.save_tensors(tensors)
            else:
                logger.info("Stage 1: reusing cached activation statistics.")
        shift = tensors["misaligned_mean"] - tensors["base_mean"]
        mean_norm = float(tensors["base_mean_norm"])
        candidates = select_candidates(shift, config.num_candidates)
        logger.info("Stage 1: mean residual norm %.2f; %d candidates (%d rose, %d fell).", mean_norm,
                    len(candidates), sum(c.sign > 0 for c in candidates), sum(c.sign < 0 for c in candidates))

        experiment = Experiment(
            tokenizer, prompts, self._judge(),
            GenerationSettings(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                               batch_size=config.batch_size, seed=config.seed),
            config.samples_per_prompt, config.screen_metric, config.judge_batch_size)

        # Unsteered answers: the baselines of the screen and the references of the prescreen.
        store.open_stage("baseline", {**config.stage_settings(BASELINE_FIELDS), "judge": self._judge_identity()})
        with self._timed("baseline"):
            baselines = run_baselines(pair, experiment, store.records("baseline"))

        # Optional teacher-forced prescreen.
        prescreen: dict[int, dict] = {}
        to_screen, audited = candidates, set()
        store.open_stage("prescreen", config.stage_settings(PRESCREEN_FIELDS))
        if config.prescreen:
            with self._timed("prescreen"):
                prescreen = self._prescreen(pair, tokenizer, sae, candidates, prompts, baselines, hook_point,
                                            mean_norm, store)
            to_screen, audited = choose_for_generation(candidates, prescreen, config.prescreen_keep,
                                                       config.prescreen_audit)

        # Stage 2: induce-and-repair screen.
        store.open_stage("screen", {**config.stage_settings(SCREEN_FIELDS), "judge": self._judge_identity(),
                                    "screened": sorted(c.index for c in to_screen)})
        with self._timed("stage2_screen"):
            screen = screen_candidates(pair, experiment, sae, to_screen, hook_point, mean_norm, baselines, config,
                                       store.records("screen"))
        survivors = [c for c, record in zip(to_screen, screen) if record["passed"] and c.index not in audited]
        agreement = screen_agreement(prescreen, screen, config.pass_rule) if prescreen else {}
        logger.info("Stage 2: %d of %d screened candidates pass.", len(survivors), len(to_screen) - len(audited))
        if agreement:
            logger.info("Prescreen agrees with the generation screen on %.0f%% of %d candidates (Spearman %.2f).",
                        100 * agreement["agreement"], agreement["num_compared"], agreement["spearman"])

        # Stage 3: calibration and ranking.
        store.open_stage("calibration", config.stage_settings(CALIBRATION_FIELDS))
        with self._timed("stage3_calibrate"):
            calibrations = calibrate_candidates(pair, experiment, sae, survivors, hook_point, mean_norm, baselines,
                                                config, store.records("calibration"))
        screen_by_index = {record["index"]: record for record in screen}
        selected = rank_latents(calibrations, {i: r["score"] for i, r in screen_by_index.items()}, config.num_latents,
                                min_effect=config.min_effect)
        if not selected:
            raise NoLatentsSelectedError(
                f"No latent passed the screen and the calibration ({len(survivors)} of {len(to_screen) - len(audited)} passed "
                f"the screen; budget {config.incoherence_budget}). Results are in {config.output_dir}. Try more "
                "candidates (num_candidates), a looser pass_rule, incoherence_relative=True, a larger "
                f"incoherence_budget or a lower min_effect (now {config.min_effect})."
            )

        latent_set = self._latent_set(
            selected, candidates, screen_by_index, {c.index: c for c in calibrations}, prescreen, hook_point,
            reference, pair, prompts, mean_norm, store, agreement,
            counts={"candidates": len(candidates), "prescreened": len(prescreen), "screened": len(to_screen),
                    "audited": len(audited), "survivors": len(survivors), "selected": len(selected)},
        )
        if config.output_dir is not None and config.save_latent_set:
            path = latent_set.save_pretrained(config.output_dir)
            logger.info("Saved the latent set (%d K+, %d K-) to %s.", len(latent_set.positive),
                        len(latent_set.negative), path)
        self.latent_set = latent_set
        return latent_set

    def _stage1(self, pair: ModelPair, tokenizer, sae, prompts, hook_point: str) -> dict:
        config = self.config
        stats = {}
        for which in ("base", "misaligned"):
            with pair.model(which) as model:
                stats[which] = activation_stats(model, tokenizer, sae, prompts, hook_point, config.batch_size,
                                                config.max_length, config.exclude_system_tokens, config.progress,
                                                description=f"stage 1 ({which})")
        import torch

        return {
            "base_mean": stats["base"].mean_latents,
            "misaligned_mean": stats["misaligned"].mean_latents,
            "base_mean_norm": torch.tensor(stats["base"].mean_norm),
            "misaligned_mean_norm": torch.tensor(stats["misaligned"].mean_norm),
        }

    def _prescreen(self, pair, tokenizer, sae, candidates, prompts, baselines, hook_point, mean_norm, store) -> dict:
        config = self.config
        step = config.samples_per_prompt
        batch = ReferenceBatch(tokenizer, prompts, baselines["misaligned"]["answers"][::step],
                               baselines["base"]["answers"][::step], config.max_length,
                               config.prescreen_answer_tokens)
        records = prescreen_candidates(pair, tokenizer, sae, candidates, batch, hook_point, mean_norm,
                                       config.induce_coefficient, config.repair_coefficient,
                                       store.records("prescreen"), config.batch_size, config.progress)
        return {record["index"]: record for record in records}

    def _latent_set(self, selected, candidates, screen_by_index, calibrations, prescreen, hook_point, reference,
                    pair, prompts, mean_norm, store, agreement, counts) -> LatentSet:
        by_index: dict[int, Candidate] = {c.index: c for c in candidates}
        records = []
        for index in selected:
            screen = screen_by_index[index]
            scores = {"induce_gain": screen["induce_gain"], "repair_gain": screen["repair_gain"],
                      "score": screen["score"]}
            if index in prescreen:
                scores.update({f"prescreen_{name}": prescreen[index][name]
                               for name in ("induce_gain", "repair_gain", "score")})
            calibration = calibrations[index].to_dict()
            records.append(LatentRecord(index=index, sign=by_index[index].sign,
                                        activation_shift=by_index[index].shift, screen=_json_safe(scores),
                                        calibration=_json_safe(calibration)))
        metadata = {
            "builder": "blockem_trl.builder.LatentSetBuilder",
            "library_version": __version__,
            "settings": self.config.to_dict(),
            "settings_hashes": dict(store.hashes),
            "models": pair.identity(),
            "prompts": {"source": self.config.prompts, "items": [p.to_dict() for p in prompts]},
            "judge": self._judge_identity(),
            "steering_unit": "alpha * mean_norm * unit decoder direction",
            "mean_residual_norm": mean_norm,
            "counts": counts,
            "screen_agreement": agreement,
            "timings_s": {name: round(seconds, 2) for name, seconds in self.timings.items()},
            "note": "Evaluate models trained with this set on questions disjoint from the discovery prompts.",
        }
        return LatentSet(
            positive=[i for i in selected if by_index[i].sign > 0],
            negative=[i for i in selected if by_index[i].sign < 0],
            hook_point=hook_point, sae=reference, model_name_or_path=pair.base_name, records=records,
            metadata=_json_safe(metadata),
        )

    # ------------------------------------------------------------------ helpers

    def _resolve_sae(self, sae: Any, sae_name: str | None):
        sae = sae if sae is not None else self.sae
        if sae is None:
            raise ValueError("No SAE given. Pass sae= to LatentSetBuilder or to build() (an sae_lens.SAE or a folder).")
        if isinstance(sae, (str, os.PathLike)):
            return load_sae(sae, self.sae_id), str(sae)
        if sae_name is None:
            sae_name = getattr(getattr(sae.cfg, "metadata", None), "sae_lens_release", None)
        return sae, sae_name

    def _hook_point(self, sae) -> str:
        hook_point = self.config.hook_point or sae_hook_point(sae)
        if hook_point is None:
            raise ValueError(
                "The SAE records no hook point. Set BuilderConfig.hook_point to the module path of the decoder block "
                "output it reads, for example 'model.layers.19' (0-based block 19, = hidden_states[20])."
            )
        hook_point = normalize_hook_point(hook_point)
        recorded = sae_hook_point(sae)
        if recorded is not None and layer_index_from_hook_point(recorded) != layer_index_from_hook_point(hook_point):
            raise ValueError(
                f"hook_point {hook_point!r} differs from the SAE's hook point {recorded!r}. The SAE only reads the "
                "layer it was trained on: drop hook_point or use a matching SAE."
            )
        return hook_point

    def _judge(self) -> Judge:
        if self.judge is None:
            from blockem_trl.evaluation.judges.offline import OfflineJudge

            self.judge = OfflineJudge()
        return self.judge

    def _judge_identity(self) -> dict:
        judge = self._judge()
        return {"name": judge.name, "config": judge.config()}

    @contextmanager
    def _timed(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
            logger.info("%s took %.1f s.", name, self.timings[name])

    # ------------------------------------------------------------------ TrainerCallback

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        """Build K from the trained adapter (base = adapter off) and save it into ``args.output_dir``."""
        if not state.is_world_process_zero:
            return control
        if model is None or not hasattr(model, "disable_adapter"):
            raise ValueError(
                "LatentSetBuilder as a callback needs a PEFT (LoRA) model in the trainer, so that turning the adapter "
                "off gives the base model. Pass peft_config to the trainer, or call build() with both models."
            )
        tokenizer = processing_class if processing_class is not None else kwargs.get("tokenizer")
        if tokenizer is None:
            raise ValueError("The trainer has no tokenizer (processing_class); pass one to the trainer.")
        if self.config.output_dir is None:
            self.config.output_dir = str(Path(args.output_dir) / "latent_discovery")
        self.config.save_latent_set = False
        latent_set = self.build(None, model, tokenizer)
        path = latent_set.save_pretrained(args.output_dir)
        logger.info("Saved the latent set built after training to %s.", path)
        return control


def _json_safe(value: Any) -> Any:
    """Replace NaN and infinities (not valid JSON) with None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value

