"""PCGrad against the paper's vector-form algorithm on explicit gradients."""

from __future__ import annotations

import pytest
import torch

from lightning_bmoo.aggregators import PCGrad

from .samplers import KINDS, gramian, sample_gradients


def draw_orders(T: int, seed: int) -> list[list[int]]:
    """The visiting orders PCGrad draws from ``torch.Generator().manual_seed(seed)``."""
    g = torch.Generator().manual_seed(seed)
    perms = torch.rand(T, T - 1, generator=g, dtype=torch.float64).argsort(dim=1).tolist()
    return [[p + (p >= i) for p in perm] for i, perm in enumerate(perms)]


def pcgrad_reference(G: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """Algorithm 1 of Yu et al. (2020) on the gradient vectors, averaged instead of summed."""
    projected = []
    for i, order in enumerate(orders):
        g = G[i].clone()
        for j in order:
            dot = g @ G[j]
            if dot < 0:
                g = g - dot / (G[j] @ G[j]) * G[j]
        projected.append(g)
    return torch.stack(projected).mean(dim=0)


def update(G: torch.Tensor, seed: int) -> torch.Tensor:
    w = PCGrad()(gramian(G), generator=torch.Generator().manual_seed(seed))
    return w @ G


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [2, 3, 5, 8, 16])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_vector_algorithm(kind, T, seed):
    G = sample_gradients(kind, T, seed=seed)
    expected = pcgrad_reference(G, draw_orders(T, seed))
    torch.testing.assert_close(update(G, seed), expected, rtol=1e-9, atol=1e-12 * G.norm().item())


def test_visiting_order_matters_and_is_taken_from_the_generator():
    G = sample_gradients("conflicting", 6)
    updates = {tuple(update(G, seed).tolist()) for seed in range(5)}
    assert len(updates) > 1
    state = torch.get_rng_state()
    PCGrad()(gramian(G))
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must not be used"


def test_own_generator_is_seeded():
    M = gramian(sample_gradients("conflicting", 6))
    assert torch.equal(PCGrad(seed=4)(M), PCGrad(seed=4)(M))
    expected = PCGrad()(M, generator=torch.Generator().manual_seed(4))
    assert torch.equal(PCGrad(seed=4)(M), expected)


def test_without_conflict_is_exactly_the_mean():
    G = sample_gradients("aligned", 8)
    assert (gramian(G) > 0).all()
    assert torch.equal(PCGrad()(gramian(G)), torch.full((8,), 1 / 8, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(5))
def test_two_tasks_do_not_conflict_with_the_update(seed):
    G = sample_gradients("conflicting", 2, seed=seed)
    assert G[0] @ G[1] < 0
    d = update(G, seed)
    assert (G @ d >= -1e-12 * G.norm() * d.norm()).all()


def test_zero_gradient_is_never_projected_on():
    G = sample_gradients("conflicting", 5)
    G[3] = 0.0
    w = PCGrad()(gramian(G), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w @ G, pcgrad_reference(G, draw_orders(5, 0)))


def test_seed_must_be_an_int():
    with pytest.raises(TypeError, match="seed"):
        PCGrad(seed=1.5)
