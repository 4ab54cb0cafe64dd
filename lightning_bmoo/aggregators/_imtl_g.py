"""IMTL-G: an update with equal projections on every unit task gradient."""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor

from ._base import Aggregator

# Eigenvalues of the cosine matrix below this fraction of the largest are treated as zero:
# they are rounding of (near-)dependent gradients, and inverting them would amplify noise.
_RTOL = 1e-10


class IMTLG(Aggregator):
    """IMTL-G of Liu et al., "Towards Impartial Multi-task Learning" (ICLR 2021), generalised to
    linearly dependent gradients as in TorchJD (Quinton and Rey, "Jacobian Descent for
    Multi-Objective Optimization", arXiv:2406.16232).

    The weights are ``v = K^+ sqrt(diag K)`` normalised to sum to 1, so that the update ``d``
    has the same projection ``u_i . d`` on every unit gradient ``u_i`` (exactly whenever such a
    ``d`` exists in the span of the gradients, in the least-squares sense otherwise).

    The pseudo-inverse is taken on the cosine matrix ``C = D^+ K D^+`` (``D`` the diagonal of
    gradient norms): ``v = D^+ C^+ 1``. For independent gradients this is exactly
    ``K^{-1} sqrt(diag K)``, but unlike an eigendecomposition of ``K`` it stays accurate when
    the gradient norms span many orders of magnitude. Zero gradients get weight 0. If the
    weights cannot be normalised (their sum vanishes), the mean weights are returned.

    Scale: the weights sum to 1, like the mean's; the update is the mean gradient when all
    gradients are equal, and ``u_i . d = 1 / sum(v)`` in general.
    """

    name = "imtl_g"

    def _weights(
        self,
        K: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        # Scalars in Python, few tensor ops: each tiny op costs microseconds at these sizes.
        inv_norms = torch.tensor(
            [x**-0.5 if x > 0.0 else 0.0 for x in K.diagonal().tolist()], dtype=torch.float64
        )
        eigenvalues, V = torch.linalg.eigh(K * torch.outer(inv_norms, inv_norms))
        eigenvalue_list = eigenvalues.tolist()
        cutoff = _RTOL * eigenvalue_list[-1]
        inv_eigenvalues = torch.tensor(
            [1.0 / x if x > cutoff else 0.0 for x in eigenvalue_list], dtype=torch.float64
        )
        # C^+ 1 with V.sum(0) = V^T 1: a zero gradient's row of C is zero, so every kept
        # eigenvector vanishes there, and D^+ gives it weight 0 anyway.
        v = (inv_norms * (V @ (inv_eigenvalues * V.sum(dim=0)))).tolist()
        total = sum(v)
        if abs(total) <= 1e-12 * sum(map(abs, v)):
            return torch.full((len(v),), 1.0 / len(v), dtype=torch.float64)
        return torch.tensor([x / total for x in v], dtype=torch.float64)
