"""Stage 3: sweep each survivor's steering strength, keep its best effect within the incoherence budget, rank.

At every strength alpha (relative to the mean residual-stream norm), the induce test, the repair test or both
are run as in stage 2. A strength is admissible when its incoherence stays within the budget. A latent's
calibrated effect is its largest effect over admissible strengths, and latents are ranked by it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from .config import BuilderConfig
from .measure import Experiment
from .pair import ModelPair
from .stage1_shift import Candidate
from .stage2_screen import steered_measures

logger = logging.getLogger(__name__)


@dataclass
class Calibration:
    """A latent's calibration: best admissible strength, its effect and incoherence, and the sweep size."""

    index: int
    best_coefficient: float | None
    effect: float
    incoherence: float
    num_admissible: int
    num_strengths: int

    def to_dict(self) -> dict[str, float]:
        return {
            "best_coefficient": math.nan if self.best_coefficient is None else self.best_coefficient,
            "effect": self.effect,
            "incoherence": self.incoherence,
            "num_admissible": float(self.num_admissible),
            "num_strengths": float(self.num_strengths),
        }


def _strength_record(index: int, coefficient: float, measures: dict[str, dict], baselines: dict[str, dict],
                     config: BuilderConfig) -> dict:
    effect = 0.0
    incoherence = -math.inf
    if "induce" in measures:
        effect += measures["induce"]["measure"] - baselines["base"]["rates"]["measure"]
        rise = baselines["base"]["rates"]["incoherence_rate"] if config.incoherence_relative else 0.0
        incoherence = max(incoherence, measures["induce"]["incoherence_rate"] - rise)
    if "repair" in measures:
        effect += baselines["misaligned"]["rates"]["measure"] - measures["repair"]["measure"]
        rise = baselines["misaligned"]["rates"]["incoherence_rate"] if config.incoherence_relative else 0.0
        incoherence = max(incoherence, measures["repair"]["incoherence_rate"] - rise)
    return {"key": f"{index}@{coefficient:g}", "index": index, "coefficient": coefficient, "effect": effect,
            "incoherence": incoherence, **measures}


def calibrate_candidates(pair: ModelPair, experiment: Experiment, sae, survivors: Sequence[Candidate],
                         hook_point: str, mean_norm: float, baselines: dict[str, dict], config: BuilderConfig,
                         records) -> list[Calibration]:
    """Sweep ``config.calibration_coefficients`` for each survivor, skipping stored (latent, strength) pairs."""
    induce = config.calibration_mode in ("both", "induce")
    repair = config.calibration_mode in ("both", "repair")
    jobs = [(candidate, coefficient) for candidate in survivors for coefficient in config.calibration_coefficients]
    todo = [(candidate, coefficient) for candidate, coefficient in jobs
            if f"{candidate.index}@{coefficient:g}" not in records]
    if len(todo) < len(jobs):
        logger.info("Calibration: %d of %d (latent, strength) pairs already done, resuming.", len(jobs) - len(todo), len(jobs))
    for candidate, coefficient in tqdm(todo, desc="stage 3 calibrate", unit="run", disable=not config.progress):
        measures = steered_measures(pair, experiment, sae, candidate, hook_point, mean_norm,
                                    coefficient if induce else None, coefficient if repair else None)
        records.append(_strength_record(candidate.index, coefficient, measures, baselines, config))
    return [summarize(candidate.index, [records.get(f"{candidate.index}@{c:g}") for c in config.calibration_coefficients],
                      config.incoherence_budget)
            for candidate in survivors]


def summarize(index: int, strength_records: Sequence[dict], budget: float) -> Calibration:
    """Return the largest effect among strengths whose incoherence is within ``budget``.

    A latent with no admissible strength gets ``effect = -inf`` and ``best_coefficient = None``.
    """
    admissible = [record for record in strength_records if record["incoherence"] <= budget]
    if not admissible:
        lowest = min(record["incoherence"] for record in strength_records)
        return Calibration(index, None, -math.inf, lowest, 0, len(strength_records))
    best = max(admissible, key=lambda record: (record["effect"], -record["coefficient"]))
    return Calibration(index, best["coefficient"], best["effect"], best["incoherence"], len(admissible),
                       len(strength_records))


def rank_latents(calibrations: Sequence[Calibration], screen_scores: dict[int, float], num_latents: int,
                 min_effect: float | None = None) -> list[int]:
    """Return up to ``num_latents`` latent indices with an admissible strength, best calibrated effect first.

    Ties are broken by the screen score. With ``min_effect`` set, only latents whose effect is above it are kept.
    """
    usable = [calibration for calibration in calibrations if calibration.best_coefficient is not None]
    dropped = len(calibrations) - len(usable)
    if dropped:
        logger.warning("%d survivors have no steering strength within the incoherence budget and are not kept.", dropped)
    if min_effect is not None:
        weak = [calibration.index for calibration in usable if not calibration.effect > min_effect]
        if weak:
            logger.warning("Latents %s have a calibrated effect not above min_effect=%g and are not kept.", weak,
                           min_effect)
        usable = [calibration for calibration in usable if calibration.effect > min_effect]
    usable.sort(key=lambda calibration: (calibration.effect, screen_scores.get(calibration.index, 0.0)), reverse=True)
    selected = usable[:num_latents]
    wrong_way = [calibration.index for calibration in selected if calibration.effect <= 0]
    if wrong_way:
        logger.warning(
            "Kept latents %s have a calibrated effect <= 0: steering them did not move misalignment the expected "
            "way. Set min_effect=0 to drop them.", wrong_way,
        )
    return [calibration.index for calibration in selected]
