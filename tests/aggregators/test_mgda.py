"""MGDA: optimality certificates (KKT, grid and Frank-Wolfe comparisons), degenerate inputs."""

from __future__ import annotations

import itertools

import pytest
import torch

from lightning_bmoo.aggregators import MGDA

from .samplers import gramian, sample_gradients

NONDEGENERATE = ("random", "conflicting", "duplicated", "extreme_scale", "aligned")


def objective(M, w):
    return w @ M @ w


def assert_kkt(G, w, rtol=1e-8):
    """w on the simplex, g_i . d >= |d|^2 for all i, with equality where w_i > 0."""
    assert w.shape == (G.shape[0],)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    d = w @ G
    slack = G @ d - d @ d
    tol = rtol * G.norm(dim=1) * d.norm() + 1e-300
    assert (slack >= -tol).all(), (slack, tol)
    support = w > 1e-6 * w.max()
    assert (slack[support].abs() <= tol[support]).all(), (slack, w)


def frank_wolfe(M, iters=20000):
    """Away-step-free Frank-Wolfe with exact line search: slow, simple, independent."""
    T = M.shape[0]
    w = torch.full((T,), 1.0 / T, dtype=torch.float64)
    for _ in range(iters):
        grad = M @ w
        e = torch.zeros(T, dtype=torch.float64)
        e[grad.argmin()] = 1.0
        step = e - w
        curvature = step @ M @ step
        if curvature <= 0:
            break
        gamma = float((-(grad @ step) / curvature).clamp(0.0, 1.0))
        w = w + gamma * step
    return w


@pytest.mark.parametrize("kind", NONDEGENERATE)
@pytest.mark.parametrize("T", [2, 3, 5, 8, 16, 32, 64])
@pytest.mark.parametrize("seed", range(2))
def test_kkt(kind, T, seed):
    G = sample_gradients(kind, T, n=80, seed=seed)
    assert_kkt(G, MGDA()(gramian(G)))


@pytest.mark.parametrize("T", [2, 3])
@pytest.mark.parametrize("kind", ["random", "conflicting", "aligned"])
def test_not_beaten_by_a_grid(T, kind):
    G = sample_gradients(kind, T, seed=3)
    M = gramian(G)
    ticks = torch.linspace(0, 1, 201, dtype=torch.float64)
    grid = torch.tensor(
        [w for w in itertools.product(ticks.tolist(), repeat=T - 1) if sum(w) <= 1],
        dtype=torch.float64,
    )
    grid = torch.cat([grid, 1 - grid.sum(1, keepdim=True)], dim=1)
    best = torch.einsum("bi,ij,bj->b", grid, M, grid).min()
    assert objective(M, MGDA()(M)) <= best * (1 + 1e-12)


@pytest.mark.parametrize("T", [5, 8, 16])
@pytest.mark.parametrize("kind", ["random", "conflicting"])
def test_not_beaten_by_frank_wolfe(T, kind):
    M = gramian(sample_gradients(kind, T, seed=4))
    M = M / M.diagonal().max()
    fw = objective(M, frank_wolfe(M, iters=3000))
    assert objective(M, MGDA()(M)) <= fw + 1e-13


def test_two_task_closed_form_matches_projection_formula():
    G = sample_gradients("conflicting", 2, seed=5)
    g1, g2 = G
    gamma = ((g2 - g1) @ g2 / (g2 - g1).norm() ** 2).clamp(0, 1)
    torch.testing.assert_close(MGDA()(gramian(G)), torch.stack([gamma, 1 - gamma]))


def test_zero_gradient_gives_zero_update():
    G = sample_gradients("random", 5)
    G[3] = 0.0
    w = MGDA()(gramian(G))
    assert w.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]


def test_zero_in_the_hull_gives_a_vanishing_update():
    # Eight gradients in a 3-dimensional subspace: 0 is in their convex hull.
    base = sample_gradients("random", 3, seed=6)
    G = torch.cat([base, -base, base[:1] - base[1:2], base[2:] - base[:1]])
    w = MGDA()(gramian(G))
    assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-12
    assert (w @ G).norm() <= 1e-10 * G.norm(dim=1).max()


def test_extreme_scales_keep_relative_precision():
    # Norms from 1e-6 to 1e6: the min-norm point sits next to the smallest gradient, and the
    # large gradients' tiny weights still matter at the 1e-8 relative level.
    G = sample_gradients("extreme_scale", 8, seed=7)
    assert_kkt(G, MGDA()(gramian(G)))


def test_slightly_indefinite_gramian_is_handled():
    # Partial Gramians summed in float32 may have eigenvalues slightly below zero.
    G = sample_gradients("rank_deficient", 6, seed=8)
    M = gramian(G)
    M = M - 1e-9 * M.diagonal().max() * torch.eye(6, dtype=torch.float64)
    w = MGDA()(M)
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert abs(float(w.sum()) - 1) < 1e-12


def test_rank_deficient_is_not_conflicting():
    for seed in range(5):
        for T in (4, 8, 16):
            G = sample_gradients("rank_deficient", T, seed=seed)
            d = MGDA()(gramian(G)) @ G
            assert (G @ d >= -1e-7 * G.norm(dim=1) * d.norm() - 1e-12).all()
