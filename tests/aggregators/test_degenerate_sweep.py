"""A sweep of 10,050 degenerate Gramians through every registered aggregator.

Rank-deficient, near-singular, duplicated, zero-row and mixed-scale Gramians (see
``samplers.degenerate_gramians``) for ``T = 2 .. 16``: every method must return finite weights
of the right shape, and each method's defining property must hold wherever the theory says so.
The Gramians are built once per test session; each method solves them once.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import Tensor

from lightning_bmoo.aggregators import available_aggregators, get_aggregator

from .samplers import SWEEP_FAMILIES, SWEEP_SIZES, degenerate_gramians

# Gramians per family and T: 5 families x 15 sizes x 134 = 10,050 per method.
COUNT = 134
# Methods whose update never conflicts with a task, with the options and task counts for
# which the theory says so (as in test_properties.CONFLICT_AVERSE).
CONFLICT_AVERSE = {
    "mgda": ({}, SWEEP_SIZES),
    "upgrad": ({}, SWEEP_SIZES),
    "cagrad": ({"c": 1.0}, SWEEP_SIZES),
    "pcgrad": ({}, (2,)),
}


@functools.cache
def sweep() -> tuple[tuple[str, int, Tensor], ...]:
    """``(family, T, Gramians)`` for every family and size."""
    return tuple(
        (family, T, degenerate_gramians(family, T, COUNT))
        for family in SWEEP_FAMILIES
        for T in SWEEP_SIZES
    )


@functools.cache
def solved(name: str, options: tuple[tuple[str, float], ...]) -> tuple[Tensor, ...]:
    """The weights (``COUNT x T`` per entry of :func:`sweep`) of one method over the sweep.

    A fresh aggregator per family and size; call ``b`` draws from a generator seeded with ``b``.
    """
    out = []
    for _, _, Ks in sweep():
        aggregator = get_aggregator(name, **dict(options))
        gens = (torch.Generator().manual_seed(b) for b in range(len(Ks)))
        out.append(torch.stack([aggregator(M, generator=g) for M, g in zip(Ks, gens)]))
    return tuple(out)


def describe(family: str, T: int, index: Tensor) -> str:
    first = int(index.nonzero()[0, 0])
    return f"{int(index.sum())} of {COUNT} {family} Gramians with T = {T}; e.g. sample {first}"


@pytest.mark.parametrize("name", available_aggregators())
def test_weights_are_finite_and_of_the_right_shape(name):
    assert sum(len(Ks) for _, _, Ks in sweep()) >= 10_000
    for (family, T, Ks), W in zip(sweep(), solved(name, ())):
        assert W.shape == (len(Ks), T) and W.dtype == torch.float64
        bad = ~torch.isfinite(W).all(1)
        assert not bad.any(), describe(family, T, bad)


def conflicts(Ks: Tensor, W: Tensor) -> Tensor:
    """Which Gramians' updates conflict with some task beyond rounding.

    ``g_i . d = (M w)_i`` must be ``>= -|g_i| (1e-9 |d| + 1e-12 sum_j |w_j| |g_j|)``: the second
    term is the rounding level of ``M w`` itself, which is all that is left of an update that
    (nearly) vanishes, e.g. at a Pareto-stationary point.
    """
    Kw = (Ks @ W[:, :, None]).squeeze(-1)
    norms = Ks.diagonal(dim1=1, dim2=2).sqrt()
    d_norm = (W * Kw).sum(1, keepdim=True).clamp_min(0.0).sqrt()
    spread = (W.abs() * norms).sum(1, keepdim=True)
    return (Kw < -norms * (1e-9 * d_norm + 1e-12 * spread)).any(1)


@pytest.mark.parametrize("name", sorted(CONFLICT_AVERSE))
def test_not_conflicting(name):
    options, sizes = CONFLICT_AVERSE[name]
    checked = 0
    for (family, T, Ks), W in zip(sweep(), solved(name, tuple(options.items()))):
        if T in sizes:
            bad = conflicts(Ks, W)
            assert not bad.any(), describe(family, T, bad)
            checked += len(Ks)
    assert checked >= 10_000 or sizes != SWEEP_SIZES


def cosines(M: Tensor) -> Tensor:
    """The cosine matrix of the non-zero gradients."""
    norms = M.diagonal().sqrt()
    live = norms > 0
    return M[live][:, live] / torch.outer(norms[live], norms[live])


def test_imtl_g_equal_projections_where_full_rank():
    # Where the cosine matrix is clearly invertible (condition below 1e8; IMTL-G treats
    # eigenvalues below 1e-10 of the largest as zero), the update has the same projection on
    # every non-zero unit gradient.
    checked = 0
    for (family, T, Ks), W in zip(sweep(), solved("imtl_g", ())):
        for b, (M, w) in enumerate(zip(Ks, W)):
            eigenvalues = torch.linalg.eigvalsh(cosines(M))
            if not eigenvalues[0] > 1e-8 * eigenvalues[-1]:
                continue
            norms = M.diagonal().sqrt()
            live = norms > 0
            projections = (M @ w)[live] / norms[live]
            spread = float((w.abs() * norms).sum())
            error = float((projections - projections.mean()).abs().max())
            # Not asserted: a positive projection. The weights sum to 1 (the paper's scale), and
            # sum_j (C^-1 1)_j / |g_j| < 0 happens (sample 28 of near_singular, T = 3): then
            # the equal projection is negative, as in the paper and in TorchJD.
            assert error <= 1e-12 * spread, (family, T, b, projections)
            checked += 1
    assert checked >= 2_000


def test_nash_mtl_not_conflicting_where_the_bargaining_solution_exists():
    # The solution exists when 0 is outside the convex hull of the unit gradients; where it is
    # clearly outside (min-norm point of that hull longer than 0.1, computed by MGDA on the
    # cosine matrix), every task improves. Elsewhere the ridge-regularised answer may conflict.
    checked = 0
    mgda = get_aggregator("mgda")
    for (family, T, Ks), W in zip(sweep(), solved("nash_mtl", ())):
        for b, (M, w) in enumerate(zip(Ks, W)):
            C = cosines(M)
            if len(C) < 2:
                continue
            v = mgda(C)
            if not float(v @ C @ v) > 1e-2:
                continue
            assert not conflicts(M[None], w[None]).any(), (family, T, b)
            checked += 1
    assert checked >= 1_000
