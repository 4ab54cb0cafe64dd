"""Nash-MTL: the fixed point M alpha = 1/alpha, warm starts, state and the ridge."""

from __future__ import annotations

import pytest
import torch

from lightning_bmoo.aggregators import NashMTL

from .samplers import KINDS, gramian, sample_gradients


def raw_alpha(G, w):
    """Rescales convex weights w to the paper's alpha: g_i . (alpha^T G) = 1 / alpha_i."""
    return w * (1.0 / (w * (G @ (w @ G)))).mean().sqrt()


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "rank_deficient"])
@pytest.mark.parametrize("T", [2, 3, 8, 16, 64])
def test_fixed_point_in_vector_form(kind, T):
    G = sample_gradients(kind, T, n=max(40, 2 * T))
    w = NashMTL()(gramian(G))
    assert (w > 0).all()
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    # Each task's improvement g_i . d, plus the ridge's share, equals 1 / alpha_i.
    ridge = NashMTL().ridge * G.norm(dim=1) ** 2
    alpha = w * (1.0 / (w * (G @ (w @ G) + ridge * w))).mean().sqrt()
    improvement = G @ (alpha @ G) + ridge * alpha
    ones = torch.ones(T, dtype=torch.float64)
    torch.testing.assert_close(improvement * alpha, ones, rtol=1e-9, atol=0)


def test_fixed_point_is_tight_without_near_singularity():
    G = sample_gradients("random", 8)
    agg = NashMTL(ridge=1e-15)
    alpha = raw_alpha(G, agg(gramian(G)))
    M = gramian(G)
    torch.testing.assert_close(M @ alpha, 1.0 / alpha, rtol=1e-12, atol=0)


def test_warm_start_reduces_iterations_and_is_per_task():
    Ks = [gramian(sample_gradients("conflicting", 6, seed=s) + 3.0) for s in range(2)]
    agg = NashMTL()
    agg(Ks[0], tasks=list("abcdef"), key="k")
    cold = agg.last_iterations
    agg(Ks[0] * 1.01, tasks=list("abcdef"), key="k")
    assert agg.last_iterations < cold
    # A call without task "c" keeps its warm start for later.
    sub = torch.tensor([0, 1, 3, 4, 5])
    agg(Ks[0][sub][:, sub], tasks=list("abdef"), key="k")
    assert set(agg.state_dict()["state"]["k"]) == set("abcdef")
    # Another key has its own state.
    agg(Ks[1], tasks=list("abcdef"), key="other")
    assert set(agg.state_dict()["state"]) == {"k", "other"}


def test_state_dict_round_trip():
    M = gramian(sample_gradients("random", 4))
    a = NashMTL()
    a(M, tasks=["en", "de", "fr", "ru"], key=0)
    b = NashMTL()
    b.load_state_dict(a.state_dict())
    tasks = ["en", "de", "fr", "ru"]
    assert torch.equal(a(M * 2, tasks=tasks, key=0), b(M * 2, tasks=tasks, key=0))
    assert isinstance(a.state_dict()["state"][0]["en"], float)


def test_opposite_gradients_use_the_ridge():
    g = sample_gradients("random", 1)
    G = torch.cat([g, -2 * g, sample_gradients("random", 2, seed=3)])
    agg = NashMTL()
    w = agg(gramian(G))
    assert torch.isfinite(w).all() and (w > 0).all()
    assert agg.last_iterations < 40
    # The opposite pair cancels to the extent the ridge allows: it gets equal pull.
    torch.testing.assert_close(w[0], 2 * w[1], rtol=1e-3, atol=0)


def test_zero_gradient_gets_zero_weight():
    G = sample_gradients("random", 4)
    G[1] = 0
    w = NashMTL()(gramian(G))
    assert w[1] == 0 and (w[[0, 2, 3]] > 0).all()


@pytest.mark.parametrize(
    "options", [{"ridge": 0.0}, {"ridge": float("nan")}, {"max_iter": 0}, {"tol": -1.0}]
)
def test_invalid_options(options):
    with pytest.raises(ValueError, match="NashMTL"):
        NashMTL(**options)
