"""Conflict-averse gradient descent (CAGrad)."""

from __future__ import annotations

import math
from collections.abc import Hashable

import torch
from torch import Tensor

from ._base import Aggregator

# Ridge on the unit-diagonal Gramian: makes duplicated or linearly dependent tasks solvable
# while moving each task's own geometry by a relative 1e-12 only.
_RIDGE = 1e-12
# Diagonal entries below this (after normalisation to a largest diagonal of 1) are zero
# gradients; their g_i . d is 0 whatever d, so they never limit the worst task.
_ZERO = 1e-200


class CAGrad(Aggregator):
    """Conflict-averse gradient descent (Liu et al., NeurIPS 2021, arXiv:2110.14048).

    The update maximises the worst task improvement ``min_i g_i . d`` within the ball
    ``|d - g0| <= c |g0|`` around the mean gradient ``g0``. Its dual is
    ``w* = argmin_{w in simplex} w^T K 1/T + c |g0| sqrt(w^T K w)`` and
    ``d = g0 + c |g0| g_w / |g_w|`` with ``g_w = w*^T G``.

    The dual is solved exactly by an active-set method: on a support ``S`` the optimality
    conditions ``g_i . d = nu`` (``i`` in ``S``), ``|d - g0| = c |g0|`` have a closed-form
    solution (two linear solves and a quadratic in ``nu``), and ``S`` is updated by the
    primal-dual active-set rule until it stops changing. The solve runs on the Gramian
    scaled to a unit diagonal so that tasks whose norms differ by many orders of magnitude
    are resolved equally well.

    Scale: ``d`` is divided by ``1 + c^2`` as in the official code with ``rescale=1``, so
    ``c = 0`` gives exactly the mean and the step never exceeds the mean's by much.

    At a Pareto-stationary point (``0`` in the convex hull of the gradients) with ``c >= 1``
    the zero update is the optimum (the only one when 0 is inside the hull); it is returned
    as zero weights.

    Args:
        c: radius of the ball around ``g0``, relative to ``|g0|``. ``0`` gives the mean;
            ``c >= 1`` never conflicts with any task.
    """

    name = "cagrad"

    def __init__(self, c: float = 0.4) -> None:
        if not isinstance(c, (int, float)) or isinstance(c, bool) or not math.isfinite(c):
            raise ValueError(f"CAGrad's c must be a finite number, got {c!r}.")
        if c < 0:
            raise ValueError(f"CAGrad's c must be >= 0 (0 gives the mean), got {c}.")
        self.c = float(c)

    def _options(self) -> dict[str, float]:
        return {"c": self.c}

    def _weights(
        self,
        K: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        T = K.shape[0]
        mean = torch.full((T,), 1.0 / T, dtype=torch.float64)
        b = K.sum(1) / T  # b_i = g_i . g0
        s = self.c * math.sqrt(max(b.mean().item(), 0.0))  # c |g0|: |g0|^2 = mean(b)
        if s == 0.0:
            return mean / (1.0 + self.c**2)
        z = _solve(K, b, s)
        # For c >= 1 the zero update lies in the ball and conflicts with no task, so any
        # candidate whose worst task is worse than 0 is beaten by it. This is the answer at
        # Pareto-stationary points (0 in the hull of the gradients), where the dual
        # solution g_w vanishes and d is not defined by it.
        if self.c >= 1.0 and (b + K @ z).min() <= 0.0:
            return torch.zeros(T, dtype=torch.float64)
        return (mean + z) / (1.0 + self.c**2)


def _solve(K: Tensor, b: Tensor, s: float) -> Tensor:
    """Returns ``z = s w* / |g_w*|``, so that ``d = g0 + G^T z``.

    With ``z >= 0`` free and ``nu = min_i g_i . d``, optimality reads: ``K z + b >= nu``
    with equality where ``z_i > 0``, and ``z^T K z = s^2``.
    """
    T = K.shape[0]
    diag = K.diagonal()
    live = diag > _ZERO
    # Unit-diagonal coordinates: zt = sqrt(diag) * z, Kt = K / sqrt(d_i d_j).
    root = torch.where(live, diag, 1.0).sqrt()
    inv = 1.0 / root
    Kt = K * torch.outer(inv, inv)
    Kt.diagonal().add_(_RIDGE)
    eye = torch.eye(T, dtype=torch.float64)
    rhs = torch.stack((inv, b * inv), dim=1)  # columns: a = 1/sqrt(d), bt = b/sqrt(d)
    a, bt = rhs.unbind(1)
    # Start from the single best task: argmin_i of the dual objective at the vertex e_i.
    active = (b + s * root).masked_fill(~live, math.inf).argmin() == torch.arange(T)
    best = torch.zeros(T, dtype=torch.float64)
    for _ in range(4 * T + 10):
        both = active[:, None] & active[None, :]
        X = torch.linalg.solve(torch.where(both, Kt, eye), rhs * active[:, None])
        (A, B), (_, C) = (rhs.T @ X).tolist()
        # nu solves A nu^2 - 2 B nu + C = s^2: z^T K z = s^2 on the support; the larger
        # root gives sum(z) > 0. A negative discriminant means the support is too large
        # (no d in the ball ties all its tasks); nu = B/A then pushes some z_i negative.
        disc = B * B - A * (C - s * s)
        nu = (B + math.sqrt(max(disc, 0.0))) / A
        zt = nu * X[:, 0] - X[:, 1]
        slack = torch.addmv(bt - nu * a, Kt, zt)  # (g_i . d - nu) / |g_i|
        # One exchange per step (drop the most negative weight or add the most violated
        # task): swapping whole sets, as primal-dual active-set methods do, cycles on
        # rank-deficient Gramians.
        score = torch.where(active, zt, slack.masked_fill(~live, math.inf))
        i = int(score.argmin())
        if score[i] >= -1e-13:
            return zt * inv
        if disc > 0 and zt.min() >= 0:
            best = zt  # primal feasible: a fallback should the exchanges cycle
        active[i] = ~active[i]
    return best * inv
