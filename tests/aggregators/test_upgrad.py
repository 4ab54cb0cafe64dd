"""UPGrad: per-projection KKT certificates, an independent vector-form check, degenerate inputs."""

from __future__ import annotations

import pytest
import torch

from lightning_bmoo.aggregators import UPGrad
from lightning_bmoo.aggregators._upgrad import projection_weights

from .samplers import KINDS, gramian, sample_gradients


def normalised(M):
    return M / M.diagonal().max()


def assert_projection_kkt(M, V, rtol=1e-9):
    """Row i of V solves min v^T M v s.t. v >= e_i / T (M with largest diagonal 1)."""
    T = M.shape[0]
    U = torch.eye(T, dtype=torch.float64) / T
    KV = V @ M  # row i: M v_i, i.e. g_j . d_i for every task j
    norms = M.diagonal().sqrt()
    d_norms = torch.einsum("ij,jk,ik->i", V, M, V).clamp_min(0).sqrt()
    # Scale of g_j . d_i; an absolute floor at the rounding level of unit-scale entries.
    tol = rtol * (norms[None, :] * d_norms[:, None]) + 1e-13
    assert (-1e-12 * V.abs().amax(1, keepdim=True) <= V - U).all(), "primal feasibility"
    assert (-tol <= KV).all(), "dual feasibility: the projection conflicts with a task"
    # Complementary slackness, measured in the gradient space: lambda_ij (g_j . d_i).
    lam = V - U
    assert ((lam * KV).abs() <= tol * lam.abs() + 1e-14).all(), "complementary slackness"


def project_by_enumeration(G, g):
    """Projects g onto {x : G x >= 0} by trying every active set: slow, exact, independent."""
    best = None
    T = G.shape[0]
    for mask in range(2**T):
        S = G[[j for j in range(T) if mask >> j & 1]]
        lam = -torch.linalg.pinv(S @ S.T) @ (S @ g) if len(S) else torch.zeros(0)
        x = g + S.T @ lam if len(S) else g.clone()
        feasible = (G @ x >= -1e-10 * G.norm(dim=1) * g.norm()).all() and (lam >= -1e-10).all()
        if feasible and (best is None or (x - g).norm() < (best - g).norm()):
            best = x
    return best


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [2, 3, 5, 8, 16, 32, 64])
def test_each_projection_satisfies_kkt(kind, T, request):
    if kind == "rank_deficient" and T == 64:
        # Known limitation: pivoting on 64 tasks of rank T/2 wanders (rounding noise in the
        # null space flips signs) and stops at the pivot cap with a feasible, non-optimal x.
        request.applymarker(pytest.mark.xfail(reason="pivot cap on large rank-deficient M"))
    M = normalised(gramian(sample_gradients(kind, T, n=80)))
    assert_projection_kkt(M, projection_weights(M))


@pytest.mark.parametrize("kind", ["random", "conflicting", "duplicated", "rank_deficient"])
@pytest.mark.parametrize("T", [3, 5, 6])
def test_matches_vector_form_projection(kind, T):
    G = sample_gradients(kind, T, n=10, seed=1)
    expected = sum(project_by_enumeration(G, g / T) for g in G)
    d = UPGrad()(gramian(G)) @ G
    torch.testing.assert_close(d, expected, rtol=1e-6, atol=1e-8 * G.norm(dim=1).max().item())


def test_equals_mean_without_conflict():
    G = sample_gradients("aligned", 8)
    assert (gramian(G) >= 0).all()
    assert torch.equal(UPGrad()(gramian(G)), torch.full((8,), 1 / 8, dtype=torch.float64))


def test_two_tasks_project_out_the_conflict():
    G = sample_gradients("conflicting", 2, seed=2)
    g1, g2 = G
    expected = (g1 - (g1 @ g2) / (g2 @ g2) * g2 + g2 - (g1 @ g2) / (g1 @ g1) * g1) / 2
    torch.testing.assert_close(UPGrad()(gramian(G)) @ G, expected)


def test_zero_gradient_is_ignored():
    G = sample_gradients("conflicting", 5, seed=3)
    G0 = torch.cat([G, torch.zeros(1, G.shape[1], dtype=torch.float64)])
    d = UPGrad()(gramian(G)) @ G
    d0 = UPGrad()(gramian(G0)) @ G0
    # The zero task's own projection is zero and it constrains nothing: only 1/T changes.
    torch.testing.assert_close(d0, d * 5 / 6)


def test_positively_spanning_gradients_give_zero_update():
    # +-g for three gradients: the dual cone within their span is {0}.
    base = sample_gradients("random", 3, seed=4)
    G = torch.cat([base, -base])
    d = UPGrad()(gramian(G)) @ G
    assert d.norm() <= 1e-12 * G.norm(dim=1).max()


def test_slightly_indefinite_gramian_is_handled():
    G = sample_gradients("rank_deficient", 6, seed=5)
    M = gramian(G) - 1e-9 * torch.eye(6, dtype=torch.float64) * gramian(G).diagonal().max()
    w = UPGrad()(M)
    assert torch.isfinite(w).all() and (w >= 1 / 6 - 1e-12).all()


@pytest.mark.parametrize("seed", [44, 50, 71])
def test_pivoting_through_an_empty_free_set(seed):
    # Six gradients of rank 3: block exchanges drop every free variable at once in one of the
    # projections, which once raised "max() arg is an empty sequence" on the float path.
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    G = randn(6, 3) @ randn(3, 50)
    M = normalised(gramian(G))
    assert_projection_kkt(M, projection_weights(M))
    w = UPGrad()(gramian(G))
    assert (w >= 1 / 6 - 1e-12).all()
