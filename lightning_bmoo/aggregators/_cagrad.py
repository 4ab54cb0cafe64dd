"""Conflict-averse gradient descent (CAGrad)."""

from __future__ import annotations

import math
from collections.abc import Hashable
from operator import mul

import torch
from torch import Tensor

from ._base import Aggregator

# Ridge on the unit-diagonal Gramian: makes duplicated or linearly dependent tasks solvable
# while moving each task's own geometry by a relative 1e-12 only.
_RIDGE = 1e-12
# Diagonal entries below this (after normalisation to a largest diagonal of 1) are zero
# gradients; their g_i . d is 0 whatever d, so they never limit the worst task.
_ZERO = 1e-200
# The first _BLOCK_STEPS steps of the active-set walk add up to _BLOCK tasks each.
_BLOCK = 3
_BLOCK_STEPS = 3


class CAGrad(Aggregator):
    """Conflict-averse gradient descent (Liu et al., NeurIPS 2021, arXiv:2110.14048).

    The update maximises the worst task improvement ``min_i g_i . d`` within the ball
    ``|d - g0| <= c |g0|`` around the mean gradient ``g0``. Its dual is
    ``w* = argmin_{w in simplex} w^T M 1/T + c |g0| sqrt(w^T M w)`` and
    ``d = g0 + c |g0| g_w / |g_w|`` with ``g_w = w*^T G``.

    The dual is solved exactly by an active-set method: on a support ``S`` the optimality
    conditions ``g_i . d = nu`` (``i`` in ``S``), ``|d - g0| = c |g0|`` have a closed-form
    solution (two solves with an incrementally updated Cholesky factor and a quadratic in
    ``nu``), and ``S`` gains violated tasks or loses negative weights until neither is left.
    The solve runs on the Gramian scaled to a unit diagonal so that tasks whose norms differ
    by many orders of magnitude are resolved equally well.

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
        M: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        T = M.shape[0]
        shrink = 1.0 / (1.0 + self.c**2)
        # T is small and the solver takes one step per support change: Python floats cost
        # well under a microsecond per operation where each torch op costs several.
        rows = M.tolist()
        b = [sum(row) / T for row in rows]  # b_i = g_i . g0
        s = self.c * math.sqrt(max(sum(b) / T, 0.0))  # c |g0|: |g0|^2 = mean(b)
        if s == 0.0:
            return torch.full((T,), shrink / T, dtype=torch.float64)
        z = _solve(rows, b, s)
        # For c >= 1 the zero update lies in the ball and conflicts with no task, so any
        # candidate whose worst task is worse than 0 is beaten by it. This is the answer at
        # Pareto-stationary points (0 in the hull of the gradients), where the dual
        # solution g_w vanishes and d is not defined by it.
        if self.c >= 1.0 and min(bi + sum(map(mul, row, z)) for bi, row in zip(b, rows)) <= 0:
            return torch.zeros(T, dtype=torch.float64)
        return torch.tensor([(1.0 / T + zi) * shrink for zi in z], dtype=torch.float64)


def _solve(M: list[list[float]], b: list[float], s: float) -> list[float]:
    """Returns ``z = s w* / |g_w*|``, so that ``d = g0 + G^T z``.

    With ``z >= 0`` free and ``nu = min_i g_i . d``, optimality reads: ``M z + b >= nu``
    with equality where ``z_i > 0``, and ``z^T M z = s^2``.
    """
    T = len(M)
    live = [M[i][i] > _ZERO for i in range(T)]
    # Unit-diagonal coordinates: zt = sqrt(diag) * z, Kt = M / sqrt(d_i d_j).
    root = [math.sqrt(M[i][i]) if live[i] else 1.0 for i in range(T)]
    inv = [1.0 / r for r in root]
    Kt = [[k * (ii * ij) for k, ij in zip(row, inv)] for row, ii in zip(M, inv)]
    for i in range(T):
        Kt[i][i] += _RIDGE
    a = inv
    bt = [bi * ii for bi, ii in zip(b, inv)]
    chol = _Cholesky(Kt, a, bt)
    # Start from the single best task: argmin_i of the dual objective at the vertex e_i.
    chol.add(min((i for i in range(T) if live[i]), key=lambda i: b[i] + s * root[i]))
    best = [0.0] * T
    for step in range(4 * T + 10):
        # On the support: Kt_SS zt_S = nu a_S - bt_S; with y = L^-1 [a_S, bt_S] the quadratic
        # A nu^2 - 2 B nu + C = s^2 is z^T M z = s^2. The larger root gives sum(z) > 0. A
        # negative discriminant means the support is too large (no d in the ball ties all
        # its tasks); nu = B/A then pushes some z_i negative.
        ya, yb = chol.ya, chol.yb
        A, B, C = sum(map(mul, ya, ya)), sum(map(mul, ya, yb)), sum(map(mul, yb, yb))
        disc = B * B - A * (C - s * s)
        nu = (B + math.sqrt(max(disc, 0.0))) / A
        zS = chol.back([nu * p - q for p, q in zip(ya, yb)])
        support = chol.support
        zt = [0.0] * T
        for i, zi in zip(support, zS):
            zt[i] = zi
        # Drop the most negative weight, else add the most violated tasks (slack
        # (g_i . d - nu) / |g_i| < 0). Adding a few at a time in the first steps saves
        # steps when many tasks tie at the optimum; later steps make one exchange, as
        # swapping whole sets cycles on rank-deficient Gramians.
        z_min = min(zS)
        if z_min < -1e-13:
            chol.remove(support[zS.index(z_min)])
            continue
        if disc > 0:
            best = zt  # primal feasible: a fallback should the exchanges cycle
        on = set(support)
        violated = sorted(
            (slack, i)
            for i in range(T)
            if live[i]
            and i not in on
            and (slack := bt[i] - nu * a[i] + sum(map(mul, Kt[i], zt))) < -1e-13
        )
        if not violated:
            return [zi * ii for zi, ii in zip(zt, inv)]
        for _, i in violated[: _BLOCK if step < _BLOCK_STEPS else 1]:
            chol.add(i)
    return [zi * ii for zi, ii in zip(best, inv)]


class _Cholesky:
    """Cholesky factor ``L`` of ``Kt_SS`` for a growing support ``S``, with ``L^-1 [a_S, bt_S]``.

    Adding a task costs one forward substitution; removing one refactors the rows after it.
    """

    def __init__(self, Kt: list[list[float]], a: list[float], bt: list[float]) -> None:
        self.Kt, self.a, self.bt = Kt, a, bt
        self.support: list[int] = []
        self.rows: list[list[float]] = []  # strictly lower part of L, by row
        self.cols: list[list[float]] = []  # the same entries by column (for back substitution)
        self.diag: list[float] = []
        self.ya: list[float] = []
        self.yb: list[float] = []

    def add(self, j: int) -> None:
        Kj = self.Kt[j]
        col = [Kj[i] for i in self.support]
        row: list[float] = []
        for r, (c, lr, d) in enumerate(zip(col, self.rows, self.diag)):
            row.append((c - sum(map(mul, lr, row))) / d)
            self.cols[r].append(row[-1])
        # Kt_jj carries the ridge, so d2 >= ridge but for rounding.
        d = math.sqrt(max(Kj[j] - sum(map(mul, row, row)), 0.5 * _RIDGE))
        self.support.append(j)
        self.rows.append(row)
        self.cols.append([])
        self.diag.append(d)
        self.ya.append((self.a[j] - sum(map(mul, row, self.ya))) / d)
        self.yb.append((self.bt[j] - sum(map(mul, row, self.yb))) / d)

    def remove(self, j: int) -> None:
        p = self.support.index(j)
        later = self.support[p + 1 :]
        for lst in (self.support, self.rows, self.cols, self.diag, self.ya, self.yb):
            del lst[p:]
        # Column r holds L[r+1:, r]: keep its entries in the rows before p.
        for r, col in enumerate(self.cols):
            del col[p - r - 1 :]
        for k in later:
            self.add(k)

    def back(self, y: list[float]) -> list[float]:
        """Returns ``L^-T y``."""
        x: list[float] = []
        for yi, col, d in zip(reversed(y), reversed(self.cols), reversed(self.diag)):
            x.insert(0, (yi - sum(map(mul, col, x))) / d)
        return x
