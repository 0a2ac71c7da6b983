import torch

from blockem_trl.penalty import blocking_penalty, blocking_penalty_terms, latent_violations


def test_penalty_matches_hand_computation():
    # One sequence of two tokens, K+ = latent 0, K- = latent 1.
    latents = torch.tensor([[[3.0, 1.0], [0.5, 4.0]]])
    base = torch.tensor([[[1.0, 2.0], [1.0, 4.0]]])
    signs = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[True, True]])
    # token 0: K+ rose by 2 -> 4; K- fell by 1 -> 1. token 1: K+ fell (free), K- unchanged -> 0.
    expected = (4.0 + 1.0 + 0.0) / 2
    assert blocking_penalty(latents, base, signs, mask).item() == expected


def test_penalty_ignores_masked_tokens():
    latents = torch.tensor([[[3.0], [9.0]]])
    base = torch.zeros(1, 2, 1)
    terms = blocking_penalty_terms(latents, base, torch.tensor([1.0]), torch.tensor([[True, False]]))
    assert terms.penalty_sum.item() == 9.0
    assert terms.num_tokens.item() == 1
    assert terms.num_violating_tokens.item() == 1


def test_moving_the_safe_way_is_free():
    base = torch.rand(2, 5, 4) + 1.0
    signs = torch.tensor([1.0, 1.0, -1.0, -1.0])
    safe = base - signs * torch.rand(2, 5, 4)  # K+ fall, K- rise
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert blocking_penalty(safe, base, signs, mask).item() == 0.0
    assert latent_violations(safe, base, signs).eq(0).all()
    unsafe = base + signs * 0.5
    assert blocking_penalty(unsafe, base, signs, mask).item() > 0


def test_drift_sums_are_signed_per_set():
    latents = torch.tensor([[[2.0, 5.0]]])
    base = torch.tensor([[[1.0, 7.0]]])
    terms = blocking_penalty_terms(latents, base, torch.tensor([1.0, -1.0]), torch.tensor([[True]]))
    assert terms.positive_drift_sum.item() == 1.0
    assert terms.negative_drift_sum.item() == -2.0


def test_empty_mask_gives_zero_penalty():
    latents = torch.ones(1, 3, 2, requires_grad=True)
    penalty = blocking_penalty(latents, torch.zeros(1, 3, 2), torch.tensor([1.0, 1.0]), torch.zeros(1, 3, dtype=torch.bool))
    assert penalty.item() == 0.0
    penalty.backward()
    assert latents.grad.eq(0).all()


def test_penalty_gradient_flows_to_latents_only_when_violating():
    latents = torch.tensor([[[2.0, 0.0]]], requires_grad=True)
    base = torch.tensor([[[1.0, 1.0]]])
    blocking_penalty(latents, base, torch.tensor([1.0, 1.0]), torch.tensor([[True]])).backward()
    # d/dz relu(z - b)^2 = 2 (z - b) for the violating latent, 0 for the one below base.
    assert latents.grad.tolist() == [[[2.0, 0.0]]]
