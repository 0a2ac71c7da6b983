"""Evaluate one arm: misalignment, incoherence and refusal on open questions, and in-domain task adherence.

In-domain adherence is measured two ways on the held-out split of each domain:

- always, the held-out loss: the mean negative log-likelihood per supervised token of the held-out reference
  answers (teacher-forced). Lower means the model learned the narrow task better. Its interval is a
  bootstrap over held-out examples;
- when the judge scores the domain's ``judge_metric`` (an LLM judge and, for finance, ``financial_risk``), the
  share of generated answers to held-out prompts that show the trained behaviour.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..evaluation import EvalConfig, GenerationSettings, Judge, MetricConfig, run_evaluation
from ..evaluation.questions import load_question_set
from .config import DemoConfig
from .data import DomainData

logger = logging.getLogger(__name__)


def eval_settings(config: DemoConfig) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              batch_size=config.eval_batch_size, seed=config.seed)


def metric_config(config: DemoConfig) -> MetricConfig:
    return MetricConfig(bootstrap_samples=config.bootstrap_samples, seed=config.seed)


def evaluate_misalignment(model, tokenizer, tag: str, judges: list[Judge], config: DemoConfig,
                          output_dir: Path) -> dict[str, Any]:
    """Return the summary of `run_evaluation` on the out-of-domain questions (resumable in ``output_dir``)."""
    eval_config = EvalConfig(model=tag, questions=config.questions, samples_per_question=config.samples_per_question,
                             generation=eval_settings(config), metric_config=metric_config(config),
                             output_dir=str(output_dir))
    return run_evaluation(eval_config, judges, model=model, tokenizer=tokenizer,
                          question_set=load_question_set(config.questions))


def evaluate_indomain_judged(model, tokenizer, tag: str, judges: list[Judge], domain: DomainData, metric: str,
                             config: DemoConfig, output_dir: Path) -> dict[str, Any] | None:
    """Judge answers to held-out domain prompts for ``metric``; None when no judge scores it."""
    able = [judge for judge in judges if judge.supports(metric)]
    if not able or config.indomain_generations < 1:
        logger.info("No judge scores %r; in-domain adherence of %s uses the held-out loss only.", metric, tag)
        return None
    questions = domain.heldout_questions(config.indomain_generations)
    eval_config = EvalConfig(model=tag, questions=questions.name, samples_per_question=1,
                             generation=eval_settings(config), metrics=[metric], metric_config=metric_config(config),
                             output_dir=str(output_dir))
    summary = run_evaluation(eval_config, able, model=model, tokenizer=tokenizer, question_set=questions,
                             write_reports=False)
    return summary


def heldout_loss(model, tokenizer, domain: DomainData, config: DemoConfig) -> dict[str, Any]:
    """Return the held-out loss (mean NLL per supervised token) with a bootstrap interval over examples."""
    sums, counts = [], []
    rows = list(domain.heldout)
    device = next(model.parameters()).device
    model.eval()
    batch_size = config.eval_batch_size
    for start in tqdm(range(0, len(rows), batch_size), desc=f"held-out loss ({domain.name})", unit="batch",
                      disable=not config.progress):
        batch = [_encode(tokenizer, row, config.max_length) for row in rows[start : start + batch_size]]
        width = max(len(ids) for ids, _ in batch)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for index, (ids, prompt_length) in enumerate(batch):
            input_ids[index, : len(ids)] = torch.tensor(ids)
            attention[index, : len(ids)] = 1
            labels[index, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        shifted = labels[:, 1:].to(device)
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), shifted, ignore_index=-100,
                                                   reduction="none")
        sums.extend((losses * (shifted != -100)).sum(dim=1).tolist())
        counts.extend((shifted != -100).sum(dim=1).tolist())
    return _loss_with_interval(np.array(sums), np.array(counts), config.bootstrap_samples, config.seed)


def _encode(tokenizer, row: dict, max_length: int) -> tuple[list[int], int]:
    """Tokenise prompt + reference answer with the chat template; return ids and the prompt's length."""
    prompt_text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("The chat template renders the prompt differently with and without the answer; the "
                         "held-out loss cannot find where the answer starts.")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + answer_ids)[:max_length]
    return ids, min(len(prompt_ids), len(ids))


def _loss_with_interval(sums: np.ndarray, counts: np.ndarray, samples: int, seed: int) -> dict[str, Any]:
    keep = counts > 0
    sums, counts = sums[keep], counts[keep]
    if not counts.size:
        return {"heldout_loss": math.nan, "heldout_loss_ci": [math.nan, math.nan], "num_examples": 0}
    value = float(sums.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(samples):
        index = rng.integers(0, len(sums), size=len(sums))
        draws.append(sums[index].sum() / counts[index].sum())
    interval = [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))] if draws else [math.nan] * 2
    return {"heldout_loss": value, "heldout_loss_ci": interval, "num_examples": int(counts.size),
            "num_tokens": int(counts.sum())}
