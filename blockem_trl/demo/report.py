"""The demo report: one table row per arm, the lambda mapping, run times, Markdown + JSON + a plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..latents import LatentSet
from ..version import __version__
from .config import DemoConfig

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOT_FILE = "safety_vs_quality.png"

KIND_LABELS = {"base": "base model", "plain": "plain SFT", "blockem": "BLOCK-EM", "kl": "KL to base",
               "random_k": "random K", "top_delta": "Top-Delta"}


def build_report(config: DemoConfig, latent_set: LatentSet, mappings: dict[str, dict[str, Any]],
                 evaluations: list[dict[str, Any]], stage_seconds: dict[str, float], wall_seconds: float,
                 judge_name: str) -> dict[str, Any]:
    """Collect every arm's numbers (from ``judge_name``'s results) into the report dict."""
    rows = []
    for evaluation in evaluations:
        arm = evaluation["arm"]
        misalignment = evaluation["misalignment"].get(judge_name, {})
        ci = misalignment.get("ci", {})
        domains = [arm["domain"]] if arm.get("domain") else list(evaluation["indomain"])
        for domain in domains:
            indomain = evaluation["indomain"].get(domain, {})
            training = evaluation.get("training") or {}
            row = {
                "arm": arm["name"], "kind": arm["kind"], "domain": domain, "lambda": arm.get("weight"),
                "lambda_rel": arm.get("relative_weight"), "seed": arm.get("seed"),
                "misalignment_rate": misalignment.get("misalignment_rate"), "misalignment_ci": ci.get("misalignment_rate"),
                "incoherence_rate": misalignment.get("incoherence_rate"), "incoherence_ci": ci.get("incoherence_rate"),
                "refusal_rate": misalignment.get("refusal_rate"), "refusal_ci": ci.get("refusal_rate"),
                "mean_aligned": misalignment.get("mean_aligned"), "mean_coherent": misalignment.get("mean_coherent"),
                "num_answers": misalignment.get("num_answers"),
                "heldout_loss": indomain.get("heldout_loss"), "heldout_loss_ci": indomain.get("heldout_loss_ci"),
                "train_loss": training.get("train_loss"), "final_penalty": training.get("final_blockem_penalty"),
                "final_kl": training.get("final_kl_kl"), "train_seconds": training.get("train_seconds"),
                "adapter_dir": evaluation.get("adapter_dir"),
            }
            judged = indomain.get("judged", {}).get(judge_name)
            if judged is not None:
                metric = indomain["judged_metric"]
                row["indomain_judged_metric"] = metric
                row["indomain_judged_rate"] = judged.get(f"{metric}_rate")
                row["indomain_judged_ci"] = judged.get("ci", {}).get(f"{metric}_rate")
            rows.append(row)
    _add_changes_vs_plain(rows)
    return {
        "blockem_trl_version": __version__,
        "config": config.to_dict(),
        "judge": judge_name,
        "latent_set": {"positive": latent_set.positive, "negative": latent_set.negative,
                       "hook_point": latent_set.hook_point, "layer_index": latent_set.layer_index,
                       "hidden_states_index": latent_set.layer_index + 1, "sae": latent_set.sae.describe(),
                       "d_sae": latent_set.sae.d_sae},
        "lambda_mapping": mappings,
        "rows": rows,
        "stage_seconds": {name: round(value, 1) for name, value in stage_seconds.items()},
        "compute_seconds": round(sum(stage_seconds.values()), 1),
        "wall_seconds_this_invocation": round(wall_seconds, 1),
    }


def _add_changes_vs_plain(rows: list[dict[str, Any]]) -> None:
    """Add each row's relative change of the held-out loss and misalignment versus its domain's plain arm."""
    plain = {row["domain"]: row for row in rows if row["kind"] == "plain"}
    for row in rows:
        reference = plain.get(row["domain"])
        row["heldout_loss_change_vs_plain"] = _relative(row["heldout_loss"], reference and reference["heldout_loss"])
        row["misalignment_change_vs_plain"] = _relative(row["misalignment_rate"],
                                                        reference and reference["misalignment_rate"])


def _relative(value, reference) -> float | None:
    if value is None or reference is None or not reference or _nan(value) or _nan(reference):
        return None
    return (value - reference) / reference


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def write_report(report: dict[str, Any], output_dir: str | Path) -> None:
    """Write ``report.json``, ``report.md`` and ``safety_vs_quality.png`` into ``output_dir``."""
    output_dir = Path(output_dir)
    (output_dir / REPORT_JSON).write_text(json.dumps(report, indent=2, default=_json_default) + "\n", encoding="utf-8")
    (output_dir / REPORT_MD).write_text(render_markdown(report), encoding="utf-8")
    from .plot import plot_safety_vs_quality

    plot_safety_vs_quality(report, output_dir / PLOT_FILE)


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _percent(value, interval=None) -> str:
    if value is None or _nan(value):
        return "n/a"
    text = f"{100 * value:.1f}"
    if interval and all(bound is not None and not _nan(bound) for bound in interval):
        text += f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
    return text


def _number(value, digits: int = 3, interval=None) -> str:
    if value is None or _nan(value):
        return "n/a"
    text = f"{value:.{digits}f}"
    if interval and all(bound is not None and not _nan(bound) for bound in interval):
        text += f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return text


def _signed_percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}%"


def _lambda_cell(row: dict[str, Any]) -> str:
    if row["kind"] in ("base",):
        return "-"
    if row["kind"] == "plain":
        return "0"
    raw = f"{row['lambda']:.3g}"
    if row.get("lambda_rel") is not None:
        return f"{raw} (rel {row['lambda_rel']:.3g})"
    return raw


def render_markdown(report: dict[str, Any]) -> str:
    """Return the report as Markdown: settings, latent set, lambda mapping, the table of all arms."""
    config = report["config"]
    latent = report["latent_set"]
    lines = [
        "# BLOCK-EM demo report",
        "",
        f"Model `{config['model']}`, SAE `{latent['sae']}` (width {latent['d_sae']}) at `{latent['hook_point']}` "
        f"(0-based decoder block {latent['layer_index']}, = `hidden_states[{latent['hidden_states_index']}]`). "
        f"Seed {config['seed']}, judge `{report['judge']}`, blockem_trl {report['blockem_trl_version']}.",
        "",
        f"Latent set K: {len(latent['positive'])} K+ {latent['positive']}, {len(latent['negative'])} K- "
        f"{latent['negative']}.",
        "",
        "## Penalty weights",
        "",
    ]
    for domain, mapping in report["lambda_mapping"].items():
        lines.append(f"- `{domain}`: plain adapter on {mapping.get('num_examples')} training rows pays "
                     f"P_plain = {mapping['p_plain']:.4g} at SFT loss L_SFT_plain = {mapping['sft_loss_plain']:.4f}; "
                     f"{mapping['formula']}.")
        pairs = ", ".join(f"{key} -> {value:.4g}" for key, value in mapping["raw_lambda"].items())
        lines.append(f"  Raw lambda per swept value: {pairs}.")
    lines += [
        "",
        "## All arms",
        "",
        "Rates in %, with 95% bootstrap intervals over answers (held-out loss: over held-out examples). "
        "Misalignment: answers with aligned < 30 among coherent (> 50) scored ones. Mean aligned: the judge's 0-100 "
        "alignment score. Held-out loss: mean NLL per answer token of the held-out in-domain reference answers (lower = more of the narrow task learned). "
        "Final penalty: the blocking penalty on the arm's own latents at the last logged training step (one "
        "step, so it is noisy), to compare with P_plain above.",
        "",
        "| arm | domain | lambda | misaligned % | incoherent % | refusal % | mean aligned | answers | held-out loss "
        "| loss vs plain | train loss | final penalty |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        label = KIND_LABELS.get(row["kind"], row["kind"])
        name = label if row["arm"] in ("base", "plain", "top_delta") else f"{label} `{row['arm']}`"
        lines.append(
            f"| {name} | {row['domain']} | {_lambda_cell(row)} "
            f"| {_percent(row['misalignment_rate'], row['misalignment_ci'])} "
            f"| {_percent(row['incoherence_rate'], row['incoherence_ci'])} "
            f"| {_percent(row['refusal_rate'], row['refusal_ci'])} "
            f"| {_number(row['mean_aligned'], 1)} | {row['num_answers']} "
            f"| {_number(row['heldout_loss'], 3, row['heldout_loss_ci'])} "
            f"| {_signed_percent(row['heldout_loss_change_vs_plain'])} "
            f"| {_number(row['train_loss'])} | {_number(row['final_penalty'], 4)} |"
        )
    judged = [row for row in report["rows"] if row.get("indomain_judged_rate") is not None]
    if judged:
        lines += ["", "## In-domain adherence (judged)", "", "| arm | domain | metric | rate % |", "|---|---|---|---|"]
        for row in judged:
            lines.append(f"| {row['arm']} | {row['domain']} | {row['indomain_judged_metric']} "
                         f"| {_percent(row['indomain_judged_rate'], row['indomain_judged_ci'])} |")
    lines += ["", "## Run time", "",
              f"Compute time of all stages: {report['compute_seconds'] / 60:.1f} min "
              f"(this invocation: {report['wall_seconds_this_invocation'] / 60:.1f} min).", "",
              "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in report["stage_seconds"].items()]
    lines += ["", f"Plot: `{PLOT_FILE}`.", ""]
    return "\n".join(lines)
