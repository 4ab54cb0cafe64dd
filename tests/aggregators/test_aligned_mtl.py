"""Aligned-MTL against the paper's SVD form: aligned rows orthogonal with equal norms."""

from __future__ import annotations

import pytest
import torch

from lightning_bmoo.aggregators import AlignedMTL

from .samplers import gramian, sample_gradients


def aligned_gradients(G: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """Algorithm 1 of Senushkin et al. (2023) on the gradient vectors: G = U S V^T becomes
    s_min U V^T (singular values below rtol * s_max dropped)."""
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    r = int((S / S[0] > rtol).sum())
    return S[r - 1] * U[:, :r] @ Vh[:r]


@pytest.mark.parametrize("kind", ["random", "conflicting", "aligned", "graded"])
@pytest.mark.parametrize("T", [2, 3, 5, 8, 16])
def test_update_is_the_mean_of_orthogonal_equal_norm_aligned_rows(kind, T):
    if kind == "graded":
        # Norms 1e-2 .. 1e2 (extreme_scale's 1e-6 .. 1e6 puts eigenvalues under any cutoff).
        G = 10.0 ** torch.linspace(-2, 2, T, dtype=torch.float64)[:, None] * sample_gradients(
            "random", T
        )
    else:
        G = sample_gradients(kind, T)
    aligned = aligned_gradients(G)
    s_min = torch.linalg.svdvals(G)[-1]
    eye = torch.eye(G.shape[0], dtype=torch.float64)
    torch.testing.assert_close(aligned @ aligned.T, s_min**2 * eye, atol=1e-9 * s_min**2, rtol=0)
    d = AlignedMTL()(gramian(G)) @ G
    scale = s_min.item()
    torch.testing.assert_close(d, aligned.mean(dim=0), rtol=1e-7, atol=1e-9 * scale)
    assert d.norm() <= (s_min / G.shape[0] ** 0.5) * (1 + 1e-9)


@pytest.mark.parametrize("kind", ["rank_deficient", "duplicated"])
@pytest.mark.parametrize("T", [3, 5, 8, 16])
def test_rank_deficient_truncates_null_directions(kind, T):
    G = sample_gradients(kind, T)
    d = AlignedMTL()(gramian(G)) @ G
    torch.testing.assert_close(d, aligned_gradients(G).mean(dim=0), rtol=1e-7, atol=1e-9)


def test_orthogonal_equal_norm_gradients_give_the_mean():
    G = 2.5 * torch.eye(4, 10, dtype=torch.float64)
    torch.testing.assert_close(
        AlignedMTL()(gramian(G)), torch.full((4,), 0.25, dtype=torch.float64)
    )


def test_zero_gradient_is_finite_and_gets_no_weight():
    G = sample_gradients("random", 4)
    G[2] = 0.0
    w = AlignedMTL()(gramian(G))
    assert torch.isfinite(w).all()
    assert abs(w[2]) < 1e-12
    torch.testing.assert_close(w @ G, aligned_gradients(G).mean(dim=0))


def test_step_shrinks_with_nearly_dependent_gradients():
    h, e = sample_gradients("random", 2)
    mean_norm = lambda G: (AlignedMTL()(gramian(G)) @ G).norm()  # noqa: E731
    assert mean_norm(torch.stack([h, h + 1e-3 * e])) < 1e-2 * mean_norm(torch.stack([h, e]))
