"""Random weights: uniform on the simplex, drawn only from the generator given."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_bmoo.aggregators import RandomWeights, get_aggregator

from .samplers import gramian, sample_gradients


def draws(T: int, count: int, seed: int = 0):
    """``count`` weight vectors for one Gramian, each call with its own seeded generator."""
    M = gramian(sample_gradients("conflicting", T))
    aggregator = RandomWeights()
    return torch.stack(
        [aggregator(M, generator=torch.Generator().manual_seed(seed + b)) for b in range(count)]
    )


@pytest.mark.parametrize("T", [2, 3, 8])
def test_weights_lie_on_the_simplex(T):
    W = draws(T, 200)
    assert (W >= 0).all()
    torch.testing.assert_close(W.sum(1), torch.ones(200, dtype=torch.float64))


@pytest.mark.parametrize("T", [2, 3, 5])
def test_marginals_are_those_of_the_uniform_distribution_on_the_simplex(T):
    # Under Dirichlet(1, ..., 1) each weight is Beta(1, T - 1): P(w_i <= x) = 1 - (1 - x)^(T-1).
    # Kolmogorov-Smirnov against that CDF, at the 0.1% level for 4000 draws (seeded).
    n = 4000
    W = draws(T, n)
    for i in range(T):
        x = W[:, i].sort().values
        cdf = 1.0 - (1.0 - x) ** (T - 1)
        ranks = torch.arange(1, n + 1, dtype=torch.float64)
        ks = torch.maximum(ranks / n - cdf, cdf - (ranks - 1) / n).max()
        assert ks < 1.95 / math.sqrt(n), (i, float(ks))


def test_weights_ignore_the_gramian_and_follow_the_generator():
    G = sample_gradients("random", 4)
    a = RandomWeights()(gramian(G), generator=torch.Generator().manual_seed(7))
    b = RandomWeights()(gramian(G[[2, 0, 3, 1]]) * 5.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    c = RandomWeights()(gramian(G), generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a, c)


def test_never_touches_the_global_rng():
    M = gramian(sample_gradients("random", 5))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    aggregator = RandomWeights()
    aggregator(M)
    aggregator(M, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)


def test_own_generator_is_seeded_and_advances():
    M = gramian(sample_gradients("random", 3))
    a, b = RandomWeights(seed=4), RandomWeights(seed=4)
    first = a(M)
    assert torch.equal(first, b(M))
    assert not torch.equal(a(M), first)


def test_registered_as_a_stochastic_stateless_control():
    aggregator = get_aggregator("random", seed=3)
    assert isinstance(aggregator, RandomWeights)
    assert aggregator.stochastic and not aggregator.stateful
    assert repr(aggregator) == "RandomWeights(seed=3)"


def test_one_task_and_zero_gramian_do_not_draw():
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert RandomWeights()(torch.tensor([[2.0]]), generator=generator).tolist() == [1.0]
    assert RandomWeights()(torch.zeros(3, 3), generator=generator).tolist() == [1 / 3] * 3
    assert torch.equal(generator.get_state(), state)
