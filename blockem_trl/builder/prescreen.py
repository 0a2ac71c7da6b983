"""The teacher-forced prescreen: a cheap stand-in for the generation screen, used to prune candidates.

Reference answers are the unsteered greedy answers of the two models: the misaligned model's answer and the
base model's answer to each discovery prompt. For a model, the preference for misalignment is the mean over
prompts of (mean token log-likelihood of the misaligned answer) minus (that of the base answer). The induce
gain is the rise of that preference when the base model is steered towards the latent's sign. The repair
gain is its drop when the misaligned model is steered against the sign. Each costs one forward pass over
2 x prompts sequences, with no generation and no judge.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from blockem_trl.evaluation.generation import as_messages, render_chat
from blockem_trl.hooks import add_to_residual, get_hook_module

from .measure import Steering, latent_direction
from .pair import ModelPair
from .prompts import DiscoveryPrompt
from .stage1_shift import Candidate

logger = logging.getLogger(__name__)


class ReferenceBatch:
    """Chat prompts followed by reference answers, right-padded, with a mask of the answer tokens.

    Answers are cut to ``answer_tokens`` tokens when it is set.
    """

    def __init__(self, tokenizer, prompts: Sequence[DiscoveryPrompt], misaligned_answers: Sequence[str],
                 aligned_answers: Sequence[str], max_length: int, answer_tokens: int | None = None):
        sequences, answer_masks = [], []
        for answers in (misaligned_answers, aligned_answers):
            for prompt, answer in zip(prompts, answers):
                prompt_ids = tokenizer(render_chat(tokenizer, as_messages(prompt.text, prompt.system)),
                                       add_special_tokens=False)["input_ids"]
                answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"][:answer_tokens]
                answer_ids = answer_ids or [tokenizer.eos_token_id]
                ids = (prompt_ids + answer_ids)[-max_length:]
                answer_length = min(len(answer_ids), len(ids) - 1)
                sequences.append(ids)
                answer_masks.append([False] * (len(ids) - answer_length) + [True] * answer_length)
        length = max(len(ids) for ids in sequences)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.input_ids = torch.tensor([ids + [pad] * (length - len(ids)) for ids in sequences])
        self.attention_mask = torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids in sequences])
        self.answer_mask = torch.tensor([mask + [False] * (length - len(mask)) for mask in answer_masks])
        self.num_prompts = len(prompts)


@torch.no_grad()
def misalignment_preference(model: nn.Module, batch: ReferenceBatch, hook_point: str,
                            vector: torch.Tensor | None = None, batch_size: int = 16) -> float:
    """Return mean over prompts of log p(misaligned answer) - log p(base answer), per answer token.

    With ``vector``, it is added to the residual stream at ``hook_point`` on every position.
    """
    device = next(model.parameters()).device
    module = get_hook_module(model, hook_point)
    was_training = model.training
    model.eval()
    per_sequence = []
    try:
        for start in range(0, len(batch.input_ids), batch_size):
            input_ids = batch.input_ids[start : start + batch_size].to(device)
            attention_mask = batch.attention_mask[start : start + batch_size].to(device)
            answer_mask = batch.answer_mask[start : start + batch_size].to(device)
            if vector is None:
                logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            else:
                with add_to_residual(module, vector):
                    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            token_log_probs = log_probs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            mask = answer_mask[:, 1:].float()
            per_sequence.append(((token_log_probs * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).cpu())
    finally:
        if was_training:
            model.train()
    values = torch.cat(per_sequence)
    count = batch.num_prompts
    return float((values[:count] - values[count:]).mean())


def prescreen_candidates(pair: ModelPair, tokenizer, sae, candidates: Sequence[Candidate], batch: ReferenceBatch,
                         hook_point: str, mean_norm: float, induce_coefficient: float, repair_coefficient: float,
                         records, batch_size: int = 16, progress: bool = True) -> list[dict]:
    """Score each candidate without a stored record by its teacher-forced induce and repair gains."""
    baseline = records.get("unsteered")
    if baseline is None:
        with pair.base() as model:
            base_preference = misalignment_preference(model, batch, hook_point, batch_size=batch_size)
        with pair.misaligned() as model:
            misaligned_preference = misalignment_preference(model, batch, hook_point, batch_size=batch_size)
        baseline = {"key": "unsteered", "base": base_preference, "misaligned": misaligned_preference}
        records.append(baseline)
    todo = [candidate for candidate in candidates if str(candidate.index) not in records]
    for candidate in tqdm(todo, desc="prescreen", unit="latent", disable=not progress):
        direction = latent_direction(sae, candidate.index)
        induce = Steering(hook_point, direction, induce_coefficient, mean_norm, candidate.sign).spec("").vector
        repair = Steering(hook_point, direction, repair_coefficient, mean_norm, -candidate.sign).spec("").vector
        with pair.base() as model:
            induced = misalignment_preference(model, batch, hook_point, induce, batch_size)
        with pair.misaligned() as model:
            repaired = misalignment_preference(model, batch, hook_point, repair, batch_size)
        induce_gain = induced - baseline["base"]
        repair_gain = baseline["misaligned"] - repaired
        records.append({"key": str(candidate.index), **candidate.to_dict(), "induce_gain": induce_gain,
                        "repair_gain": repair_gain, "score": induce_gain + repair_gain})
    return [records.get(str(candidate.index)) for candidate in candidates]


def choose_for_generation(candidates: Sequence[Candidate], prescreen: dict[int, dict], keep: int | None,
                          audit: int) -> tuple[list[Candidate], set[int]]:
    """Return the candidates sent to the generation screen and the indices of the audited (pruned) ones.

    The best ``keep`` by prescreen score are kept. ``audit`` pruned candidates, evenly spaced through the
    rest of the ranking, are screened too, so that the agreement of the two screens covers both groups.
    """
    ranked = sorted(candidates, key=lambda candidate: prescreen[candidate.index]["score"], reverse=True)
    if keep is None or keep >= len(ranked):
        return ranked, set()
    kept, pruned = ranked[:keep], ranked[keep:]
    audit = min(audit, len(pruned))
    audited = [pruned[round(i * (len(pruned) - 1) / max(audit - 1, 1))] for i in range(audit)] if audit else []
    audited = list({candidate.index: candidate for candidate in audited}.values())
    return kept + audited, {candidate.index for candidate in audited}


def screen_agreement(prescreen: dict[int, dict], screen: Sequence[dict], rule: str) -> dict[str, float]:
    """Compare the prescreen with the generation screen on the candidates both scored.

    Returns the share of candidates on which both screens give the same pass/fail verdict, the Spearman
    correlation of their scores, and the number of candidates compared. The prescreen applies ``rule`` to
    its own gains with zero minimums, because its gains are in log-likelihood units.
    """
    from .stage2_screen import passes

    rows = [record for record in screen if record["index"] in prescreen]
    if not rows:
        return {"agreement": float("nan"), "spearman": float("nan"), "num_compared": 0}
    same = [
        passes(prescreen[row["index"]]["induce_gain"], prescreen[row["index"]]["repair_gain"], rule) == row["passed"]
        for row in rows
    ]
    fast = torch.tensor([prescreen[row["index"]]["score"] for row in rows], dtype=torch.float64)
    slow = torch.tensor([row["score"] for row in rows], dtype=torch.float64)
    return {"agreement": sum(same) / len(same), "spearman": _spearman(fast, slow), "num_compared": len(rows)}


def _spearman(first: torch.Tensor, second: torch.Tensor) -> float:
    if len(first) < 3:
        return float("nan")
    ranks = [_average_ranks(values) for values in (first, second)]
    centred = [rank - rank.mean() for rank in ranks]
    denominator = centred[0].norm() * centred[1].norm()
    return float((centred[0] * centred[1]).sum() / denominator) if denominator > 0 else float("nan")


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(values)
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(len(values), dtype=values.dtype)
    for value in values.unique():
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks
