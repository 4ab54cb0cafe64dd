"""UPGrad: the average of each task gradient projected onto the dual cone of all of them."""

from __future__ import annotations

import math
from collections.abc import Hashable
from operator import mul

import numpy as np
import torch
from torch import Tensor

from ._base import Aggregator
from ._qp import nonneg_qp_array, nonneg_qp_floats

# Squared norm (relative to |g_i|^2) below which a projection counts as vanishing.
_VANISHING = 1e-6
# Once the bias is refined away, a larger ridge only damps rounding noise in singular systems.
_REFINED_RIDGE = 1e-12
# Up to this many tasks the projections are solved one by one on Python floats; beyond, the
# batched array solver's fixed cost per pivot round is the smaller one.
_FLOAT_MAX_TASKS = 4


class UPGrad(Aggregator):
    """UPGrad: the average of each task gradient projected onto the dual cone of all of them.

    For each task ``i``, ``v_i = argmin_v v^T M v`` s.t. ``v >= e_i / T`` gives the weights of
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
        M: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        T = M.shape[0]
        if T == 2:
            (k11, k12), (_, k22) = M.tolist()
            if k12 >= 0.0:
                return torch.full((2,), 0.5, dtype=torch.float64)
            return torch.tensor([0.5 - 0.5 * k12 / k11, 0.5 - 0.5 * k12 / k22], dtype=torch.float64)
        # Only the column sums of V are needed: w_j = (1 + s_j sum_i r_i x_ij) / T.
        if T <= _FLOAT_MAX_TASKS:
            solved = _float_projections(M)
            if solved is not None:
                X, r, s = solved
                rX = [0.0] * T
                for ri, xi in zip(r, X, strict=True):
                    rX = [a + ri * b for a, b in zip(rX, xi, strict=True)]
                return torch.tensor(
                    [(1.0 + sj * a) / T for sj, a in zip(s, rX, strict=True)], dtype=torch.float64
                )
        X, r, s = _array_projections(M.numpy())
        return torch.from_numpy((r @ X * s + 1.0) / T)


def projection_weights(M: Tensor) -> Tensor:
    """Returns ``V`` whose row ``i`` gives the projection of ``g_i / T`` onto the dual cone.

    That is ``v_i = argmin_v v^T M v`` s.t. ``v >= e_i / T``, for a Gramian ``M`` with largest
    diagonal 1 and ``T >= 2``.
    """
    T = M.shape[0]
    if T == 2:
        # Each gradient loses its component along the other when they conflict.
        (k11, k12), (_, k22) = M.tolist()
        if k12 >= 0.0:
            return torch.eye(2, dtype=torch.float64) / 2
        return torch.tensor([[0.5, -0.5 * k12 / k22], [-0.5 * k12 / k11, 0.5]], dtype=torch.float64)
    solved = _float_projections(M) if T <= _FLOAT_MAX_TASKS else None
    if solved is None:
        X, r, s = (torch.from_numpy(a) for a in _array_projections(M.numpy()))
    else:
        X, r, s = (torch.tensor(v, dtype=torch.float64) for v in solved)
    return torch.eye(T, dtype=M.dtype).add_(r[:, None] * X * s).div_(T)


def _float_projections(M: Tensor) -> tuple[list[list[float]], list[float], list[float]] | None:
    """The unit-diagonal solutions ``X`` and the scalings ``r``, ``s`` on Python floats.

    ``None`` where a factorisation fails (a Gramian that is not positive semi-definite).
    """
    Kl = M.tolist()
    T = len(Kl)
    r = [math.sqrt(Kl[i][i]) for i in range(T)]
    s = [1.0 / ri if ri > 0.0 else 0.0 for ri in r]
    K1 = [
        [kij * si * sj for kij, sj in zip(Ki, s, strict=True)] for Ki, si in zip(Kl, s, strict=True)
    ]
    # Problems share K1, so each distinct free set is factorised once for all of them.
    cache: dict = {}
    refined_cache: dict = {}
    X = []
    for Ki in K1:
        x = nonneg_qp_floats(K1, Ki, cache=cache)
        if x is None:
            return None
        # As in _array_projections, but only the problems that need it are solved again.
        if sum(map(mul, Ki, x)) < _VANISHING - 1.0:
            support = [j for j, xj in enumerate(x) if xj > 0.0]
            x = nonneg_qp_floats(
                K1, Ki, ridge=_REFINED_RIDGE, refine=True, cache=refined_cache, free=support
            )
            if x is None:
                return None
        X.append(x)
    return X, r, s


def _array_projections(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The unit-diagonal solutions ``X`` and the scalings ``r``, ``s``, batched on arrays."""
    # The scalings on Python floats, cheaper than array ops at this size; zero gradients get
    # s = 0: their rows of K1 are zero.
    r_list = [math.sqrt(d) for d in M.diagonal().tolist()]
    r = np.array(r_list)
    s = np.array([1.0 / ri if ri > 0.0 else 0.0 for ri in r_list])
    K1 = M * (s[:, None] * s)
    # In unit-diagonal variables problem i reads min (e_i + x)^T K1 (e_i + x), x >= 0, scaled
    # by r_i / T (the QP is positively homogeneous); row i of K1 is its linear term.
    X = nonneg_qp_array(K1, K1)
    # |d_i|^2 = 1 + K1_i . x_i at the optimum. Where some projection (nearly) vanishes, the
    # ridge's O(1e-14) bias is no longer small next to it: solve again without the bias.
    if (K1 * X).sum(1).min() < _VANISHING - 1.0:
        # Warm: the supports barely move with the ridge, and pivoting from scratch on the
        # near-singular Gramians where projections vanish can take dozens of rounds.
        X = nonneg_qp_array(K1, K1, ridge=_REFINED_RIDGE, refine=True, free=X > 0)
    return X, r, s
