"""CAGrad: optimality certificates for the dual and the primal problem."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lightning_bmoo.aggregators import CAGrad

from .samplers import KINDS, gramian, sample_gradients


def dual_objective(M, w, c):
    """F(w) = w^T M 1/T + c |g0| sqrt(w^T M w) for rows w of a batch."""
    b = M.mean(1)
    s = c * math.sqrt(b.mean().item())
    return w @ b + s * torch.einsum("bi,ij,bj->b", w, M, w).clamp(min=0).sqrt()


def dual_weights(w, c):
    """Recovers the dual solution w* (on the simplex) from the returned weights."""
    T = w.shape[0]
    z = w * (1 + c * c) - 1.0 / T
    return z / z.sum()


def simplex_grid(T, steps):
    pts = [p for p in itertools.product(range(steps + 1), repeat=T - 1) if sum(p) <= steps]
    grid = torch.tensor([[*p, steps - sum(p)] for p in pts], dtype=torch.float64)
    return grid / steps


def projected_gradient(M, c, iters=1500):
    """Slow reference: projected subgradient descent on the simplex, best iterate."""
    T = M.shape[0]
    w = torch.full((T,), 1.0 / T, dtype=torch.float64)
    b, s = M.mean(1), c * math.sqrt(M.mean().item())
    best = dual_objective(M, w[None], c).item()
    for k in range(iters):
        g = b + s * M @ w / (w @ M @ w).sqrt().clamp(min=1e-300)
        v = w - 0.5 / math.sqrt(k + 10) * g
        u = v.sort(descending=True).values
        css = u.cumsum(0) - 1
        idx = torch.arange(1, T + 1)
        r = idx[u - css / idx > 0][-1]
        w = (v - css[r - 1] / r).clamp(min=0)
        best = min(best, dual_objective(M, w[None], c).item())
    return best


@pytest.mark.parametrize("T", [2, 3])
@pytest.mark.parametrize("kind", ["random", "conflicting", "extreme_scale", "aligned"])
@pytest.mark.parametrize("c", [0.4, 1.0])
def test_dual_not_beaten_by_a_grid(T, kind, c):
    M = gramian(sample_gradients(kind, T, seed=4))
    M = M / M.diagonal().max()
    ours = dual_objective(M, dual_weights(CAGrad(c=c)(M), c)[None], c).item()
    grid = dual_objective(M, simplex_grid(T, 200 if T == 3 else 4000), c).min().item()
    assert ours <= grid + 1e-12


@pytest.mark.parametrize("T", [5, 8])
@pytest.mark.parametrize("kind", ["random", "conflicting"])
def test_dual_not_beaten_by_projected_gradient(T, kind):
    M = gramian(sample_gradients(kind, T, seed=5))
    M = M / M.diagonal().max()
    ours = dual_objective(M, dual_weights(CAGrad()(M), 0.4)[None], 0.4).item()
    assert ours <= projected_gradient(M, 0.4) + 1e-9


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [2, 5, 16])
@pytest.mark.parametrize("c", [0.4, 1.0])
def test_primal_optimality(kind, T, c):
    """d/(scale) lies on the ball |d - g0| = c|g0| and no task is below min_i g_i.d at the
    tasks that tie: the direction of d - g0 is the dual combination g_w (KKT)."""
    G = sample_gradients(kind, T, seed=6)
    w = CAGrad(c=c)(gramian(G))
    if c >= 1 and not w.any():
        # The zero update: only allowed when some combination of the gradients vanishes,
        # or at least conflicts no more than 0.
        return
    d = (1 + c * c) * (w @ G)
    g0 = G.mean(0)
    u = d - g0
    torch.testing.assert_close(u.norm(), c * g0.norm(), rtol=1e-7, atol=0.0)
    # u = s g_w / |g_w| with g_w in the hull: z = (1 + c^2) w - 1/T >= 0.
    z = (1 + c * c) * w - 1.0 / T
    assert (z >= -1e-12 * z.abs().max()).all()
    # Complementarity: tasks in the support attain the worst improvement nu.
    gd = (G @ d) / G.norm(dim=1).clamp(min=1e-300)
    nu = (G @ d)[z > 1e-9 * z.max()]
    worst = (G @ d).min()
    scale = G.norm(dim=1).max() * d.norm()
    assert (nu - worst).abs().max() <= 1e-7 * scale
    assert torch.isfinite(gd).all()


def test_primal_not_beaten_by_random_points_in_the_ball():
    G = sample_gradients("conflicting", 4, seed=7)
    c = 0.5
    d = (1 + c * c) * (CAGrad(c=c)(gramian(G)) @ G)
    g0 = G.mean(0)
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(20000, G.shape[1], generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True) * c * g0.norm()
    others = ((g0 + u) @ G.T).min(dim=1).values
    assert (G @ d).min() >= others.max() - 1e-12


def test_c_zero_is_the_mean():
    M = gramian(sample_gradients("conflicting", 5))
    torch.testing.assert_close(CAGrad(c=0.0)(M), torch.full((5,), 0.2, dtype=torch.float64))


def test_opposite_gradients_with_c_one_give_zero_update():
    G = torch.tensor([[1.0, 2.0], [-2.0, -4.0]], dtype=torch.float64)
    assert torch.equal(CAGrad(c=1.0)(gramian(G)), torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.4", True])
def test_invalid_c(bad):
    with pytest.raises(ValueError, match="c must be"):
        CAGrad(c=bad)


def test_repr():
    assert repr(CAGrad(c=0.5)) == "CAGrad(c=0.5)"
