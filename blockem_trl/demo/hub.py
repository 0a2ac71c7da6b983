"""Model cards for trained adapters, and pushing an adapter folder to the Hugging Face Hub."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..latents import LatentSet

logger = logging.getLogger(__name__)

CARD_FILENAME = "README.md"


def render_adapter_card(*, base_model: str, latent_set: LatentSet | None, block_lambda: float,
                        latent_set_repo_id: str | None = None, lambda_rel: float | None = None,
                        evaluation: dict[str, Any] | None = None, arm_kind: str = "blockem",
                        judge: str | None = None) -> str:
    """Return the Markdown model card of a LoRA adapter trained with (or without) latent blocking.

    Args:
        base_model: the model the adapter applies to.
        latent_set: the blocked latents, listed inline when ``latent_set_repo_id`` is None.
        block_lambda: the raw penalty weight (0 for plain SFT).
        latent_set_repo_id: Hub repo of the latent set, referenced instead of listing it.
        lambda_rel: the relative weight, if the run used one.
        evaluation: one report row (misalignment, incoherence, refusal, held-out loss, intervals).
        arm_kind: ``blockem``, ``plain``, ``kl``, ``random_k`` or ``top_delta``.
        judge: name of the judge behind the evaluation numbers.
    """
    tags = ["peft", "lora", "blockem", "emergent-misalignment"]
    lines = ["---", f"base_model: {base_model}", "library_name: peft", f"tags: [{', '.join(tags)}]", "---", "",
             f"# LoRA adapter for `{base_model}` ({arm_kind})", ""]
    if latent_set is not None:
        lines += [
            f"Trained with the BLOCK-EM penalty (Ustaomeroglu & Qu, arXiv 2602.00767) at weight lambda = "
            f"{block_lambda:.6g}" + (f" (relative weight {lambda_rel:.3g})" if lambda_rel is not None else "") + ".",
            "",
            f"- Layer: `{latent_set.hook_point}`, the output of 0-based decoder block {latent_set.layer_index} "
            f"(= `hidden_states[{latent_set.layer_index + 1}]`)",
            f"- SAE: `{latent_set.sae.describe()}` (width {latent_set.sae.d_sae}, hash `{latent_set.sae.content_hash}`)",
        ]
        if latent_set_repo_id:
            lines.append(f"- Latent set: [`{latent_set_repo_id}`](https://huggingface.co/{latent_set_repo_id})")
        else:
            lines += [f"- Latent set (also in `latent_set.json`): K+ {latent_set.positive}, K- {latent_set.negative}"]
    else:
        lines.append(f"Trained without latent blocking ({arm_kind}; regulariser weight {block_lambda:.6g}).")
    if evaluation:
        lines += ["", "## Evaluation", "", _evaluation_table(evaluation, judge)]
    lines += ["", "## Use", "", "```python", "from peft import PeftModel",
              "from transformers import AutoModelForCausalLM", "",
              f'model = AutoModelForCausalLM.from_pretrained("{base_model}")',
              'model = PeftModel.from_pretrained(model, "<this repo id>")', "```", ""]
    return "\n".join(lines)


def _evaluation_table(row: dict[str, Any], judge: str | None) -> str:
    def cell(key: str, ci_key: str, scale: float = 100.0, digits: int = 1) -> str:
        value = row.get(key)
        if value is None:
            return "n/a"
        interval = row.get(ci_key)
        text = f"{scale * value:.{digits}f}"
        if interval and None not in interval:
            text += f" [{scale * interval[0]:.{digits}f}, {scale * interval[1]:.{digits}f}]"
        return text

    lines = [f"Judge: `{judge or 'unknown'}`; 95% bootstrap intervals.", "", "| metric | value |", "|---|---|",
             f"| misaligned answers % | {cell('misalignment_rate', 'misalignment_ci')} |",
             f"| incoherent answers % | {cell('incoherence_rate', 'incoherence_ci')} |",
             f"| refusals % | {cell('refusal_rate', 'refusal_ci')} |",
             f"| held-out in-domain loss (NLL/token) | {cell('heldout_loss', 'heldout_loss_ci', 1.0, 3)} |"]
    return "\n".join(lines)


def write_adapter_card(adapter_dir: str | Path, *, base_model: str, block_lambda: float,
                       latent_set: LatentSet | str | Path | None = None, **card_fields: Any) -> Path:
    """Write ``README.md`` into an adapter folder and return its path.

    ``latent_set`` is a `LatentSet` or a path; when None, ``latent_set.json`` in the adapter folder is used
    if present (the folder of a `BlockEMSFTTrainer` run has one).
    """
    adapter_dir = Path(adapter_dir)
    if latent_set is None and (adapter_dir / "latent_set.json").is_file():
        latent_set = adapter_dir
    if latent_set is not None and not isinstance(latent_set, LatentSet):
        latent_set = LatentSet.from_pretrained(latent_set)
    text = render_adapter_card(base_model=base_model, latent_set=latent_set, block_lambda=block_lambda, **card_fields)
    path = adapter_dir / CARD_FILENAME
    path.write_text(text, encoding="utf-8")
    return path


def push_adapter_to_hub(adapter_dir: str | Path, repo_id: str, *, private: bool | None = None,
                        token: str | None = None, commit_message: str = "Upload BLOCK-EM LoRA adapter",
                        api=None) -> str:
    """Upload an adapter folder (with its README.md card) to a Hub model repo and return the commit URL.

    Args:
        api: a `huggingface_hub.HfApi`; defaults to ``HfApi(token=token)``.

    Raises:
        FileNotFoundError: if the folder has no adapter or no card (write one with `write_adapter_card`).
    """
    adapter_dir = Path(adapter_dir)
    for name in ("adapter_config.json", CARD_FILENAME):
        if not (adapter_dir / name).is_file():
            raise FileNotFoundError(f"{adapter_dir} has no {name}. Train the adapter and call write_adapter_card first.")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(adapter_dir), commit_message=commit_message,
                             ignore_patterns=["checkpoint-*", "*.pt", "blockem_demo_stage.json", "runs/*"])
    logger.info("Pushed %s to %s.", adapter_dir, repo_id)
    return str(info)


def write_cards_for_report(report: dict[str, Any], output_dir: str | Path) -> None:
    """Write a card into every trained arm's adapter folder from the report rows."""
    for row in report["rows"]:
        if not row.get("adapter_dir"):
            continue
        adapter_dir = Path(row["adapter_dir"])
        if not (adapter_dir / "adapter_config.json").is_file():
            continue
        write_adapter_card(adapter_dir, base_model=report["config"]["model"], block_lambda=row.get("lambda") or 0.0,
                           lambda_rel=row.get("lambda_rel"), evaluation=row, arm_kind=row["kind"],
                           judge=report["judge"])


def load_report(output_dir: str | Path) -> dict[str, Any]:
    from .report import REPORT_JSON

    return json.loads((Path(output_dir) / REPORT_JSON).read_text(encoding="utf-8"))
