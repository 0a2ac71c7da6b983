"""Write an evaluation summary as JSON, a Markdown report and a matplotlib plot."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .judge_prompts import ALIGNED, COHERENT
from .metrics import ScoredAnswer

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
PLOT_FILE = "scores.png"


def _format_rate(value: float, interval: Sequence[float] | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{100 * value:.1f}%"
    if interval and not any(math.isnan(bound) for bound in interval):
        text += f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
    return text


def _format_score(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.1f}"


def _json_default(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def _replace_nan(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _replace_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace_nan(item) for item in value]
    return value


def write_summary(summary: Mapping, path: Path) -> None:
    """Write the summary as JSON (NaN written as null), atomically."""
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(_replace_nan(dict(summary)), indent=2, default=_json_default), encoding="utf-8")
    os.replace(temporary, path)


def render_markdown(summary: Mapping) -> str:
    """Render the summary as a Markdown report: overall table per judge, then per-question tables."""
    config = summary["config"]
    metric_config = config["metric_config"]
    lines = [
        "# Emergent-misalignment evaluation",
        "",
        f"- model: `{config['model']}`" + (f" + adapter `{config['adapter']}`" if config.get("adapter") else ""),
        f"- questions: {summary['questions']['name']} ({len(summary['questions']['ids'])} questions, "
        f"{summary['num_samples']} answers, {config['samples_per_question']} per question)",
        f"- sampling: temperature {config['generation']['temperature']}, max {config['generation']['max_new_tokens']} "
        f"new tokens, seed {config['generation']['seed']}",
        f"- misaligned: aligned < {metric_config['aligned_threshold']} and coherent > "
        f"{metric_config['coherent_threshold']}; incoherent: coherent <= {metric_config['coherent_threshold']}",
        f"- intervals: {100 * metric_config['confidence']:.0f}% bootstrap over answers "
        f"({metric_config['bootstrap_samples']} resamples, seed {metric_config['seed']})",
        f"- time: {summary['timing_s']['total']:.0f} s ({summary['timing_s']['generation']:.0f} s generation)",
        "",
        "## Overall",
        "",
        "| judge | misaligned | incoherent | refusal | mean aligned | mean coherent | scored |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in summary["results"].items():
        overall = result["overall"]
        ci = overall.get("ci", {})
        lines.append(
            f"| {name} | {_format_rate(overall['misalignment_rate'], ci.get('misalignment_rate'))} | "
            f"{_format_rate(overall['incoherence_rate'], ci.get('incoherence_rate'))} | "
            f"{_format_rate(overall.get('refusal_rate', math.nan))} | {_format_score(overall['mean_aligned'])} | "
            f"{_format_score(overall['mean_coherent'])} | {overall['num_scored']}/{overall['num_answers']} |"
        )
        for key, value in overall.items():
            if key.startswith("mean_") and key not in ("mean_aligned", "mean_coherent"):
                metric = key[len("mean_"):]
                lines.append(f"|  ↳ {metric} | mean {_format_score(value)}, above threshold "
                             f"{_format_rate(overall.get(f'{metric}_rate'), ci.get(f'{metric}_rate'))} | | | | | |")

    if summary.get("agreement"):
        lines += ["", "## Judge agreement", "", "| metric | pair | Pearson r | same side of threshold | n |",
                  "|---|---|---|---|---|"]
        for metric, pairs in summary["agreement"].items():
            for pair, values in pairs.items():
                pearson = values["pearson"]
                pearson_text = "n/a" if pearson is None or math.isnan(pearson) else f"{pearson:.2f}"
                lines.append(f"| {metric} | {pair} | {pearson_text} | {_format_rate(values['threshold_agreement'])} | "
                             f"{values['n']} |")

    for name, result in summary["results"].items():
        lines += ["", f"## Per question ({name})", "", "| question | misaligned | incoherent | mean aligned | mean coherent |",
                  "|---|---|---|---|---|"]
        for question_id, block in result["per_question"].items():
            ci = block.get("ci", {})
            lines.append(
                f"| {question_id} | {_format_rate(block['misalignment_rate'], ci.get('misalignment_rate'))} | "
                f"{_format_rate(block['incoherence_rate'])} | {_format_score(block['mean_aligned'])} | "
                f"{_format_score(block['mean_coherent'])} |"
            )

    lines += ["", "## Judge counters", "", "| judge | counters |", "|---|---|"]
    for name, info in summary["judges"].items():
        counters = ", ".join(f"{key} {value}" for key, value in info["stats"].items() if value)
        lines.append(f"| {name} | {counters or 'none'} |")
    return "\n".join(lines) + "\n"


def plot_scores(answers_by_judge: Mapping[str, Sequence[ScoredAnswer]], summary: Mapping, path: Path) -> None:
    """Plot aligned vs coherent scores per judge (thresholds dashed) and the misalignment rate per question."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric_config = summary["config"]["metric_config"]
    names = list(answers_by_judge)
    figure, axes = plt.subplots(1, len(names) + 1, figsize=(4.5 * (len(names) + 1), 4.2), squeeze=False)
    for axis, name in zip(axes[0], names):
        points = [(a.scores.get(COHERENT), a.scores.get(ALIGNED)) for a in answers_by_judge[name]]
        points = [(x, y) for x, y in points if x is not None and y is not None]
        if points:
            xs, ys = zip(*points)
            axis.scatter(xs, ys, s=10, alpha=0.5)
        axis.axhline(metric_config["aligned_threshold"], color="red", linestyle="--", linewidth=1)
        axis.axvline(metric_config["coherent_threshold"], color="gray", linestyle="--", linewidth=1)
        axis.set(xlim=(0, 100), ylim=(0, 100), xlabel="coherent", ylabel="aligned", title=name)

    axis = axes[0][-1]
    width = 0.8 / max(1, len(names))
    question_ids = list(next(iter(summary["results"].values()))["per_question"])
    for offset, name in enumerate(names):
        rates = [summary["results"][name]["per_question"][q]["misalignment_rate"] for q in question_ids]
        rates = [0.0 if rate is None or math.isnan(rate) else rate for rate in rates]
        axis.bar([i + offset * width for i in range(len(question_ids))], rates, width=width, label=name)
    axis.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(question_ids))])
    axis.set_xticklabels(question_ids, rotation=60, ha="right", fontsize=7)
    axis.set(ylabel="misalignment rate", ylim=(0, 1), title="per question")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_reports(summary: Mapping, answers_by_judge: Mapping[str, Sequence[ScoredAnswer]], output_dir: Path) -> None:
    """Write summary.json, report.md and scores.png into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_summary(summary, output_dir / SUMMARY_FILE)
    (output_dir / REPORT_FILE).write_text(render_markdown(_replace_nan(dict(summary))), encoding="utf-8")
    plot_scores(answers_by_judge, summary, output_dir / PLOT_FILE)
