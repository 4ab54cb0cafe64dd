"""IMTL-G: equal projections of the update on every unit gradient."""

from __future__ import annotations

import pytest
import torch

from lightning_bmoo.aggregators import IMTLG

from .samplers import gramian, sample_gradients


def assert_equal_projections(G: torch.Tensor, w: torch.Tensor) -> None:
    d = w @ G
    norms = G.norm(dim=1)
    projections = (G[norms > 0] @ d) / norms[norms > 0]
    torch.testing.assert_close(projections, projections.mean().expand_as(projections))
    assert projections.mean() > 0


@pytest.mark.parametrize("kind", ["random", "conflicting", "duplicated", "extreme_scale"])
@pytest.mark.parametrize("T", [2, 3, 5, 8, 16])
def test_update_has_equal_projections_on_unit_gradients(kind, T):
    G = sample_gradients(kind, T)
    w = IMTLG()(gramian(G))
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert_equal_projections(G, w)


@pytest.mark.parametrize("kind", ["random", "conflicting", "aligned"])
@pytest.mark.parametrize("T", [2, 5, 8])
def test_full_rank_matches_the_closed_form(kind, T):
    M = gramian(sample_gradients(kind, T))
    v = torch.linalg.solve(M, M.diagonal().sqrt())
    torch.testing.assert_close(IMTLG()(M), v / v.sum(), rtol=1e-8, atol=1e-10)


def test_zero_gradient_gets_no_weight():
    G = sample_gradients("random", 5)
    G[1] = 0.0
    w = IMTLG()(gramian(G))
    assert w[1] == 0.0
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert_equal_projections(G, w)


def test_equal_gradients_give_their_value():
    G = sample_gradients("random", 1).expand(4, -1)
    torch.testing.assert_close(IMTLG()(gramian(G)) @ G, G[0])


def test_parallel_gradients_are_the_limit_of_nearly_parallel_ones():
    # Rank-deficient M: the pseudo-inverse on cosines keeps the update continuous.
    h, e = sample_gradients("random", 2)
    e = e - (e @ h) / (h @ h) * h
    exact = torch.stack([h, 3 * h])
    nearly = torch.stack([h, 3 * h + 1e-5 * e])
    d_exact = IMTLG()(gramian(exact)) @ exact
    d_nearly = IMTLG()(gramian(nearly)) @ nearly
    torch.testing.assert_close(d_exact, d_nearly, rtol=1e-4, atol=1e-4 * h.norm().item())
    torch.testing.assert_close(d_exact, 1.5 * h)  # the harmonic mean of the norms, along h


def test_rank_deficient_is_finite_and_normalised():
    G = sample_gradients("rank_deficient", 8)
    w = IMTLG()(gramian(G))
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
