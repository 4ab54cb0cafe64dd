"""Aligned-MTL: aligning the principal components of the task gradients."""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor

from ._base import Aggregator

# Eigenvalues of M below this fraction of the largest are treated as zero. The eigensolver's
# absolute error is about 1e-16 of the largest, and float64 rounding in building M adds more:
# below this, the "smallest eigenvalue" that sets the step size would be rounding noise.
# (TorchJD cuts at T * 2.2e-16, which keeps such noise when M is exactly rank-deficient.)
_RTOL = 1e-12


class AlignedMTL(Aggregator):
    """Aligned-MTL, Algorithm 1 of Senushkin et al., "Independent Component Alignment for
    Multi-Task Learning" (CVPR 2023, arXiv:2305.19000), as in TorchJD with the "min" scale and
    the mean preference vector.

    With ``M = V diag(lambda) V^T``, the balance transformation
    ``B = sqrt(lambda_min) V diag(lambda)^{-1/2} V^T`` maps ``G`` to aligned gradients ``B G``
    that are orthogonal with equal norms ``sqrt(lambda_min)`` (all singular values set to the
    smallest); the update is their mean, so ``w = B 1 / T``. Rank-deficient ``M``: eigenvalues
    below ``1e-12`` times the largest are dropped, and ``lambda_min`` is the smallest kept.

    Scale: ``|d| = sqrt(lambda_min) |P 1| / T <= sqrt(lambda_min / T)``, with ``P`` the
    projection on the kept eigenvectors. It equals the mean gradient when the gradients are
    orthogonal with equal norms; otherwise it is smaller than the mean's scale, much smaller
    when the gradients are nearly dependent (small ``lambda_min``).
    """

    name = "aligned_mtl"

    def _weights(
        self,
        M: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        T = M.shape[0]
        eigenvalues, V = torch.linalg.eigh(M)
        # Scalars in Python, few tensor ops: each tiny op costs microseconds at these sizes.
        eigenvalue_list = eigenvalues.tolist()
        cutoff = _RTOL * eigenvalue_list[-1]
        smallest = min(x for x in eigenvalue_list if x > cutoff)
        balance = torch.tensor(
            [(smallest / x) ** 0.5 if x > cutoff else 0.0 for x in eigenvalue_list],
            dtype=torch.float64,
        )
        return V @ (balance * V.sum(dim=0)) / T
