"""IMTL-G: an update with equal projections on every unit task gradient."""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
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

    The weights are ``v = M^+ sqrt(diag M)`` normalised to sum to 1, so that the update ``d``
    has the same projection ``u_i . d`` on every unit gradient ``u_i`` (exactly whenever such a
    ``d`` exists in the span of the gradients, in the least-squares sense otherwise).

    The pseudo-inverse is taken on the cosine matrix ``C = D^+ M D^+`` (``D`` the diagonal of
    gradient norms): ``v = D^+ C^+ 1``. For independent gradients this is exactly
    ``M^{-1} sqrt(diag M)``, but unlike an eigendecomposition of ``M`` it stays accurate when
    the gradient norms span many orders of magnitude. Zero gradients get weight 0. If the
    weights cannot be normalised (their sum vanishes), the mean weights are returned.

    Scale: the weights sum to 1, like the mean's; the update is the mean gradient when all
    gradients are equal, and ``u_i . d = 1 / sum(v)`` in general.
    """

    name = "imtl_g"

    def _weights(
        self,
        M: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        T = M.shape[0]
        if T == 2:
            # C = [[1, c], [c, 1]] has C^+ 1 = 1 / (1 + c) along 1 whenever that eigenvalue is
            # kept: the weights are the inverse norms normalised, unless the gradients are
            # (nearly) exactly opposite; a zero gradient gets weight 0.
            (k11, k12), (_, k22) = M.tolist()
            inv_norms = [x**-0.5 if x > 0.0 else 0.0 for x in (k11, k22)]
            c = k12 * inv_norms[0] * inv_norms[1]
            if 1.0 + c > _RTOL * (1.0 + abs(c)):
                total = inv_norms[0] + inv_norms[1]
                return torch.tensor([x / total for x in inv_norms], dtype=torch.float64)
            return torch.full((2,), 0.5, dtype=torch.float64)
        # On numpy arrays around numpy's LAPACK call: each tiny tensor op would cost
        # microseconds, and Python loops over the T x T eigenvectors grow as T^2.
        a = M.numpy()
        diag = a.diagonal()
        inv = np.divide(1.0, np.sqrt(diag), out=np.zeros(T), where=diag > 0.0)  # D^+
        eigenvalues, V = np.linalg.eigh(inv[:, None] * a * inv)
        # C^+ 1 = V diag(1 / lambda) V^T 1 over the kept eigenvalues: a zero gradient's row of
        # C is zero, so every kept eigenvector vanishes there, and D^+ gives it weight 0 anyway.
        kept = eigenvalues > _RTOL * eigenvalues[-1]
        coefs = np.divide(V.sum(0), eigenvalues, out=np.zeros(T), where=kept)
        v = inv * (V @ coefs)
        total = v.sum()
        if abs(total) <= 1e-12 * np.abs(v).sum():
            return torch.full((T,), 1.0 / T, dtype=torch.float64)
        return torch.from_numpy(v / total)
