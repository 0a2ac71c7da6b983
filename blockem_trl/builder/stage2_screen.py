"""Stage 2: the induce-and-repair screen, with unsteered baselines and a pass rule.

Induce: steer the base model along the latent's unit decoder direction, towards the sign its activation
moved in the misaligned model, and measure the rise in misalignment. Repair: steer the misaligned model the
opposite way and measure the drop. Each test is one batched generation over all discovery prompts, followed
by one round of judging. A latent's screen score is induce gain + repair gain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from tqdm.auto import tqdm

from .config import BuilderConfig
from .measure import Experiment, Steering, latent_direction
from .pair import ModelPair
from .stage1_shift import Candidate

logger = logging.getLogger(__name__)

BASELINE_MODELS = ("base", "misaligned")


def run_baselines(pair: ModelPair, experiment: Experiment, records) -> dict[str, dict]:
    """Generate and judge unsteered answers of both models once; reuse stored ones on a rerun."""
    baselines = {}
    for which in BASELINE_MODELS:
        record = records.get(which)
        if record is None:
            with pair.model(which) as model:
                answers, rates = experiment.run(model)
            record = {"key": which, "answers": answers, "rates": rates}
            records.append(record)
        logger.info("Unsteered %s model: misalignment measure %.3f, incoherence rate %.3f.",
                    which, record["rates"]["measure"], record["rates"]["incoherence_rate"])
        baselines[which] = record
    return baselines


def steered_measures(pair: ModelPair, experiment: Experiment, sae, candidate: Candidate, hook_point: str,
                     mean_norm: float, induce_coefficient: float | None,
                     repair_coefficient: float | None) -> dict[str, dict]:
    """Run the induce test (base model, towards the sign) and the repair test (misaligned model, against it).

    A test whose coefficient is None is skipped.
    """
    direction = latent_direction(sae, candidate.index)
    results = {}
    if induce_coefficient is not None:
        steering = Steering(hook_point, direction, induce_coefficient, mean_norm, candidate.sign)
        with pair.base() as model:
            _, results["induce"] = experiment.run(model, steering.spec(f"latent_{candidate.index}_induce"))
    if repair_coefficient is not None:
        steering = Steering(hook_point, direction, repair_coefficient, mean_norm, -candidate.sign)
        with pair.misaligned() as model:
            _, results["repair"] = experiment.run(model, steering.spec(f"latent_{candidate.index}_repair"))
    return results


def passes(induce_gain: float, repair_gain: float, rule: str = "both", min_induce_gain: float = 0.0,
           min_repair_gain: float = 0.0, min_score: float = 0.0) -> bool:
    """Apply a pass rule (see `BuilderConfig.pass_rule`) to a latent's two gains."""
    score = induce_gain + repair_gain
    induce_ok = induce_gain >= min_induce_gain
    repair_ok = repair_gain >= min_repair_gain
    if rule == "both":
        return induce_ok and repair_ok and score > min_score
    if rule == "either":
        return (induce_ok or repair_ok) and score > min_score
    return score > min_score


def screen_candidates(pair: ModelPair, experiment: Experiment, sae, candidates: Iterable[Candidate],
                      hook_point: str, mean_norm: float, baselines: dict[str, dict], config: BuilderConfig,
                      records, on_record: Callable[[dict], None] | None = None) -> list[dict]:
    """Screen each candidate that has no stored record yet and return all records, in candidate order.

    The returned records carry ``passed`` under the current pass rule, which is not stored, so a changed
    rule needs no new generations.
    """
    candidates = list(candidates)
    base_measure = baselines["base"]["rates"]["measure"]
    misaligned_measure = baselines["misaligned"]["rates"]["measure"]
    todo = [candidate for candidate in candidates if str(candidate.index) not in records]
    if len(todo) < len(candidates):
        logger.info("Screen: %d of %d candidates already screened, resuming.", len(candidates) - len(todo), len(candidates))
    for candidate in tqdm(todo, desc="stage 2 screen", unit="latent", disable=not config.progress):
        measures = steered_measures(pair, experiment, sae, candidate, hook_point, mean_norm,
                                    config.induce_coefficient, config.repair_coefficient)
        induce_gain = measures["induce"]["measure"] - base_measure
        repair_gain = misaligned_measure - measures["repair"]["measure"]
        record = {
            "key": str(candidate.index),
            **candidate.to_dict(),
            "induce_gain": induce_gain,
            "repair_gain": repair_gain,
            "score": induce_gain + repair_gain,
            "induce": measures["induce"],
            "repair": measures["repair"],
        }
        records.append(record)
        if on_record is not None:
            on_record(record)
    results = []
    for candidate in candidates:
        record = dict(records.get(str(candidate.index)))
        record["passed"] = passes(record["induce_gain"], record["repair_gain"], config.pass_rule,
                                  config.min_induce_gain, config.min_repair_gain, config.min_score)
        results.append(record)
    return results
