"""UPGrad: the average of each task gradient projected onto the dual cone of all of them."""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor

from ._base import Aggregator
from ._qp import nonneg_qp, unit_diagonal

# Squared norm (relative to |g_i|^2) below which a projection counts as vanishing.
_VANISHING = 1e-6
# Once the bias is refined away, a larger ridge only damps rounding noise in singular systems.
_REFINED_RIDGE = 1e-12


class UPGrad(Aggregator):
    """UPGrad: the average of each task gradient projected onto the dual cone of all of them.

    For each task ``i``, ``v_i = argmin_v v^T K v`` s.t. ``v >= e_i / T`` gives the weights of
    the projection of ``g_i / T`` onto the dual cone ``{x : G x >= 0}``; ``w = sum_i v_i``.
    The update conflicts with no task, and equals the mean (``w = 1/T``) when no two gradients
    conflict, so it is on mean's scale. The ``T`` projections are solved exactly and batched.

    Reference:
        Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232,
        2024.
    """

    name = "upgrad"

    def _weights(
        self,
        K: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        return projection_weights(K).sum(0)


def projection_weights(K: Tensor) -> Tensor:
    """Returns ``V`` whose row ``i`` gives the projection of ``g_i / T`` onto the dual cone.

    That is ``v_i = argmin_v v^T K v`` s.t. ``v >= e_i / T``, for a Gramian ``K`` with largest
    diagonal 1 and ``T >= 2``.
    """
    T = K.shape[0]
    if T == 2:
        # Each gradient loses its component along the other when they conflict.
        (k11, k12), (_, k22) = K.tolist()
        if k12 >= 0.0:
            return torch.eye(2, dtype=torch.float64) / 2
        return torch.tensor([[0.5, -0.5 * k12 / k22], [-0.5 * k12 / k11, 0.5]], dtype=torch.float64)
    K1, r, s = unit_diagonal(K)
    # In unit-diagonal variables problem i reads min (e_i + x)^T K1 (e_i + x), x >= 0, scaled
    # by r_i / T (the QP is positively homogeneous); row i of K1 is its linear term.
    X = nonneg_qp(K1, K1)
    # |d_i|^2 = 1 + K1_i . x_i at the optimum. Where some projection (nearly) vanishes, the
    # ridge's O(1e-14) bias is no longer small next to it: solve again without the bias.
    if (K1 * X).sum(1).min() < _VANISHING - 1.0:
        X = nonneg_qp(K1, K1, ridge=_REFINED_RIDGE, refine=True)
    return torch.eye(T, dtype=K.dtype).add_(r[:, None] * X * s).div_(T)
