"""Multiple-gradient descent: the min-norm point of the convex hull of the task gradients."""

from __future__ import annotations

import math
from collections.abc import Hashable

import torch
from torch import Tensor

from ._base import Aggregator
from ._qp import RIDGE, TOL, nonneg_qp, nonneg_qp_floats, unit_diagonal

# Up to this many tasks the dual is solved on Python floats, where it beats tensor ops.
_FLOAT_MAX_TASKS = 8


class MGDA(Aggregator):
    """Multiple-gradient descent: the min-norm point of the convex hull of the task gradients.

    Solves ``w = argmin_{w in simplex} w^T M w`` exactly (closed form for two tasks, an
    active-set solver otherwise). The update ``d = w @ G`` satisfies ``g_i . d >= |d|^2`` for
    every task, so it conflicts with none. Weights sum to 1: ``d`` is a convex combination of
    the task gradients, on the same scale as mean's ``1/T`` weights.

    References:
        Désidéri, "Multiple-gradient descent algorithm (MGDA) for multiobjective
        optimization", Comptes Rendus Mathématique, 2012.
        Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018.
    """

    name = "mgda"

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
            return _two_tasks(M)
        if T <= _FLOAT_MAX_TASKS:
            w = _float_weights(M.tolist())
            if w is not None:
                return torch.tensor(w, dtype=torch.float64)
        K1, r, s = unit_diagonal(M)
        if r.min() == 0:
            # A zero gradient is in the hull: the min-norm point is 0.
            zero = r == 0
            return zero / zero.sum()
        # The dual of min |z|^2 s.t. G z >= 1 is min a^T M a / 2 - 1^T a, a >= 0, and
        # w = a / sum(a) (then z = d / |d|^2); in unit-diagonal variables a = s * x. Try the
        # full support first: one Cholesky solve when every task is in it.
        Q = K1 + RIDGE * torch.eye(T, dtype=M.dtype)
        L, info = torch.linalg.cholesky_ex(Q)
        x = torch.cholesky_solve(s[:, None], L)[:, 0]
        if info != 0 or x.min() < -TOL * x.abs().max():
            x = nonneg_qp(K1, -s[None, :], free=(x > 0)[None, :])[0]
        alpha = s * x
        return alpha / alpha.sum()


def _float_weights(M: list[list[float]]) -> list[float] | None:
    """``_weights`` on Python floats (the same dual and solver); ``None`` if it fails."""
    T = len(M)
    r = [math.sqrt(M[i][i]) for i in range(T)]
    if 0.0 in r:
        zero = [float(ri == 0.0) for ri in r]
        return [z / sum(zero) for z in zero]
    s = [1.0 / ri for ri in r]
    K1 = [[kij * si * sj for kij, sj in zip(Ki, s)] for Ki, si in zip(M, s)]
    # Every coordinate of c = -s is a descent one: the first free set is the full support.
    x = nonneg_qp_floats(K1, [-si for si in s])
    if x is None:
        return None
    alpha = [si * xi for si, xi in zip(s, x)]
    total = sum(alpha)
    return [a / total for a in alpha]


def _two_tasks(M: Tensor) -> Tensor:
    """Closed form for T = 2: the point of the segment [g1, g2] closest to 0."""
    (k11, k12), (_, k22) = M.tolist()
    # Each weight from its own numerator, not 1 - other, so that a weight of 1e-24 (norms
    # differing by 1e12) keeps its relative precision.
    a, b = k22 - k12, k11 - k12
    if a <= 0.0:
        w = (0.0, 1.0)
    elif b <= 0.0:
        w = (1.0, 0.0)
    else:
        w = (a / (a + b), b / (a + b))
    return torch.tensor(w, dtype=torch.float64)
