"""The safety-versus-quality plot: misalignment, incoherence and held-out loss against lambda, baselines marked."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# Line style and colours per baseline kind; several arms of one kind (e.g. two KL weights) take the colours in turn.
BASELINE_STYLES = {"base": (":", ("black",)), "kl": ("--", ("tab:orange", "tab:red", "tab:brown")),
                   "random_k": ("-.", ("tab:gray", "tab:olive", "tab:cyan")), "top_delta": ("--", ("tab:purple",))}
PANELS = (("misalignment_rate", "misalignment_ci", "misaligned answers (%)", 100.0),
          ("incoherence_rate", "incoherence_ci", "incoherent answers (%)", 100.0),
          ("heldout_loss", "heldout_loss_ci", "held-out in-domain loss (NLL/token)", 1.0))


def _finite(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def plot_safety_vs_quality(report: dict[str, Any], path: str | Path) -> None:
    """Draw one panel per metric for the first domain: BLOCK-EM against lambda, other arms as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    domain = report["config"]["domains"][0]["name"]
    relative = report["config"]["lambda_mode"] == "relative"
    sweep = sorted((row for row in rows if row["domain"] == domain and row["kind"] in ("plain", "blockem")),
                   key=lambda row: row["lambda"] or 0.0)
    x_values = [0.0 if row["kind"] == "plain" else (row["lambda_rel"] if relative else row["lambda"]) for row in sweep]
    positive = [value for value in x_values if value > 0]

    figure, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4))
    for axis, (key, ci_key, label, scale) in zip(axes, PANELS):
        points = [(x, row) for x, row in zip(x_values, sweep) if _finite(row[key])]
        if points:
            xs = [x for x, _ in points]
            ys = [scale * row[key] for _, row in points]
            errors = [_error_bars(row[key], row.get(ci_key), scale) for _, row in points]
            axis.errorbar(xs, ys, yerr=list(zip(*errors)), marker="o", color="tab:blue", capsize=3,
                          label="BLOCK-EM (lambda = 0: plain SFT)")
        seen: dict[str, int] = {}
        for row in rows:
            if row["kind"] not in BASELINE_STYLES or row["domain"] != domain or not _finite(row[key]):
                continue
            style, colors = BASELINE_STYLES[row["kind"]]
            color = colors[seen.get(row["kind"], 0) % len(colors)]
            seen[row["kind"]] = seen.get(row["kind"], 0) + 1
            axis.axhline(scale * row[key], color=color, linestyle=style, linewidth=1.2, label=row["arm"])
        if positive:
            # Symlog keeps lambda = 0 (plain SFT) on the axis; ticks sit at the swept values only.
            axis.set_xscale("symlog", linthresh=min(positive))
            axis.set_xlim(-0.3 * min(positive), 1.5 * max(positive))
            ticks = sorted(set(x_values))
            axis.set_xticks(ticks, [f"{tick:g}" for tick in ticks])
            axis.minorticks_off()
        axis.set_xlabel("lambda_rel (lambda / (L_SFT_plain / P_plain))" if relative else "lambda")
        if scale == 100.0:  # a rate panel: keep at least 0-5% in view, so all-zero rates do not read as noise
            bottom, top = axis.get_ylim()
            axis.set_ylim(max(bottom, -1.0), max(top, 5.0))
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    figure.suptitle(f"BLOCK-EM on {report['config']['model']} ({domain}; judge {report['judge']})", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _error_bars(value: float, interval, scale: float) -> tuple[float, float]:
    if not interval or not all(_finite(bound) for bound in interval):
        return 0.0, 0.0
    return max(0.0, scale * (value - interval[0])), max(0.0, scale * (interval[1] - value))
