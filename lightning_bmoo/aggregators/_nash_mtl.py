"""Nash-MTL: the Nash bargaining solution among tasks."""

from __future__ import annotations

import math
from collections.abc import Hashable
from operator import mul

import numpy as np
import torch
from torch import Tensor

from ._base import StatefulAggregator

# Diagonal entries below this (after normalisation to a largest diagonal of 1) are zero
# gradients: their utility log(g_i . d) is -inf whatever d, so they get weight 0.
_ZERO = 1e-200
# Up to this many tasks Newton runs on Python floats; beyond, numpy's fixed cost per
# iteration is the smaller one.
_FLOAT_MAX_TASKS = 4
# A squared Newton decrement whose square is at rounding level (relative residual ~1e-16).
_ROUNDING_LAM2 = 1e-16


class NashMTL(StatefulAggregator):
    """Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022,
    arXiv:2202.01017).

    The update ``d = sum_i alpha_i g_i`` with ``alpha > 0`` and ``M alpha = 1 / alpha``
    elementwise (each task's improvement ``g_i . d`` is ``1 / alpha_i``). ``alpha`` is the
    minimiser of the self-concordant ``f(a) = a^T M a / 2 - sum_i log a_i``, found exactly by
    damped Newton (no convex-programming package, unlike the official code). It is solved on
    the unit-diagonal Gramian, where ``alpha_i |g_i|`` is invariant to each task's scale.

    Scale: the paper's ``d`` has ``|d|^2 = T`` whatever the gradient norms. We keep its
    direction and return ``alpha / sum(alpha)``, a convex combination like the mean, so that
    learning rates tuned for averaging stay sensible.

    Singular ``M`` with a positive null combination (e.g. two exactly opposite gradients)
    has no solution: ``f`` is unbounded below. A ridge of ``ridge`` times the (unit)
    diagonal, i.e. relative to the trace, is therefore always added; it changes regular
    solutions by about that relative amount.

    State: the solution ``alpha_i |g_i|`` per key and per task name, used to warm-start the
    next call; tasks missing from a call keep their value, new tasks start at 1. The first
    call for a key starts from the best multiple of the all-ones vector.

    Args:
        ridge: relative ridge added to the unit-diagonal Gramian (> 0).
        max_iter: cap on Newton iterations; the iterate reached is used if it is hit.
        tol: stop when the squared Newton decrement falls below this.
    """

    name = "nash_mtl"

    def __init__(self, ridge: float = 1e-8, max_iter: int = 100, tol: float = 1e-20) -> None:
        super().__init__()
        if not (isinstance(ridge, (int, float)) and math.isfinite(ridge) and ridge > 0):
            raise ValueError(f"NashMTL's ridge must be a finite number > 0, got {ridge!r}.")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"NashMTL's max_iter must be an int >= 1, got {max_iter!r}.")
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
            raise ValueError(f"NashMTL's tol must be a finite number > 0, got {tol!r}.")
        self.ridge = float(ridge)
        self.max_iter = max_iter
        self.tol = float(tol)
        #: Newton iterations of the last call (for tests and diagnostics).
        self.last_iterations = 0

    def _options(self) -> dict[str, float | int]:
        return {"ridge": self.ridge, "max_iter": self.max_iter, "tol": self.tol}

    def _weights(
        self,
        M: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        state = self._state.setdefault(key, {})
        T = M.shape[0]
        if T <= _FLOAT_MAX_TASKS:
            w = self._float_weights(M.tolist(), tasks, state)
            if w is not None:
                return torch.tensor(w, dtype=torch.float64)
        return torch.from_numpy(self._array_weights(M.numpy(), tasks, state))

    def _array_weights(
        self, M: np.ndarray, tasks: tuple[Hashable, ...], state: dict[Hashable, float]
    ) -> np.ndarray:
        """``_weights`` on numpy arrays: a numpy op costs a fraction of a tensor op's
        microseconds at this size, and each Newton iteration is a dozen of them."""
        T = len(M)
        # The scalars on Python floats: cheaper than array ops at this size.
        diag = M.diagonal().tolist()
        if min(diag) <= _ZERO:
            # Zero gradients drop out; solve among the others.
            live = [i for i in range(T) if diag[i] > _ZERO]
            sub = self._array_weights(M[np.ix_(live, live)], tuple(tasks[i] for i in live), state)
            w = np.zeros(T)
            w[live] = sub
            return w
        inv = np.array([1.0 / math.sqrt(d) for d in diag])
        eye = np.eye(T)
        Kt = M * (inv[:, None] * inv)
        Kt += self.ridge * eye
        if state:
            start = np.array([state.get(t, 1.0) for t in tasks])
        else:
            # Cold: the best multiple of 1, minimising f(t 1) = t^2 1'K1 / 2 - T log t.
            start = np.full(T, math.sqrt(T / float(Kt.sum())))
        alpha, self.last_iterations = _newton(Kt, eye, start, self.max_iter, self.tol)
        state.update(zip(tasks, alpha.tolist(), strict=True))
        w = alpha * inv
        return w / w.sum()

    def _float_weights(
        self, M: list[list[float]], tasks: tuple[Hashable, ...], state: dict[Hashable, float]
    ) -> list[float] | None:
        """``_weights`` on Python floats for a few tasks: each array op costs more there.

        ``None`` where a Newton system does not factorise (a Gramian summed in float32 that
        is slightly indefinite): the array path's LU solve handles that.
        """
        T = len(M)
        live = [i for i in range(T) if M[i][i] > _ZERO]
        if len(live) < T:
            # Zero gradients drop out; solve among the others.
            sub = [[M[i][j] for j in live] for i in live]
            w_live = self._float_weights(sub, tuple(tasks[i] for i in live), state)
            if w_live is None:
                return None
            w = [0.0] * T
            for i, wi in zip(live, w_live, strict=True):
                w[i] = wi
            return w
        inv = [1.0 / math.sqrt(M[i][i]) for i in range(T)]
        Kt = [
            [kij * si * sj for kij, sj in zip(Ki, inv, strict=True)]
            for Ki, si in zip(M, inv, strict=True)
        ]
        for i in range(T):
            Kt[i][i] += self.ridge
        # Warm, or cold from the best multiple of 1, as in the array path.
        a = [state.get(t, 1.0) for t in tasks] if state else [math.sqrt(T / sum(map(sum, Kt)))] * T
        solved = _newton_floats(Kt, a, self.max_iter, self.tol)
        if solved is None:
            return None
        alpha, self.last_iterations = solved
        state.update(zip(tasks, alpha, strict=True))
        w = [ai * si for ai, si in zip(alpha, inv, strict=True)]
        total = sum(w)
        return [wi / total for wi in w]


def _newton(
    M: np.ndarray, eye: np.ndarray, a: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, int]:
    """Damped Newton on ``f(a) = a^T M a / 2 - sum log a`` from ``a > 0``.

    Returns the minimiser and the number of iterations. Far from the solution the step is
    cut to ``1 / (1 + lambda)`` (``lambda`` the Newton decrement), which for this
    self-concordant ``f`` decreases it and keeps ``a > 0``, or to 0.9 of the way to the
    boundary ``a = 0`` if that is longer: when ``M`` is near-singular ``a`` must grow by
    orders of magnitude, which the cautious step alone does in hundreds of iterations.
    Near it (``lambda < 1/4``) full steps converge quadratically.

    The Newton system ``(M + diag(1/a^2)) p = M a - 1/a`` is solved as
    ``(D M D + I) u = a * (M a) - 1`` with ``D = diag(a)`` and ``p = a * u``: better
    conditioned, and fewer ops per iteration (``eye`` is the identity of ``M``'s size). By
    LU: its matrix is positive definite wherever ``M`` is, and LU also solves it for a
    Gramian summed in float32 that is slightly indefinite.
    """
    prev = math.inf
    for it in range(1, max_iter + 1):
        # In place where it saves an allocation: each op costs about a microsecond here.
        H = a[:, None] * M
        H *= a
        # a * (M a) - 1 from the row sums of D M D + I: the same terms, one op fewer.
        r = H.sum(1)
        r -= 1.0
        H += eye
        u = np.linalg.solve(H, r)
        lam2 = float(r @ u)
        if lam2 >= 1 / 16:
            to_boundary = 0.9 / max(float(u.max()), 1e-300)
            u *= min(1.0, max(to_boundary, 1.0 / (1.0 + math.sqrt(lam2))))
        u *= a
        a = a - u
        if _converged(lam2, prev, tol):
            return a, it
        prev = lam2
    return a, max_iter


def _converged(lam2: float, prev: float, tol: float) -> bool:
    """Whether Newton stops after the step of squared decrement ``lam2`` (``prev`` before)."""
    # At the tolerance; or when the full step just taken leaves a decrement below the tolerance
    # or at rounding level (for self-concordant f it at most squares, lambda+ <= (lambda /
    # (1 - lambda))^2), which spares an iteration that would only confirm it; or when Newton
    # stops converging quadratically: then rounding (a near-singular M) sets the floor.
    if lam2 < tol or lam2 < _ROUNDING_LAM2 or (lam2 < 1e-6 and lam2 > 0.25 * prev):
        return True
    if lam2 >= 1 / 16:
        return False  # a damped step: no bound
    lam = math.sqrt(lam2)
    return (lam / (1.0 - lam)) ** 4 < tol


def _newton_floats(
    M: list[list[float]], a: list[float], max_iter: int, tol: float
) -> tuple[list[float], int] | None:
    """:func:`_newton` on Python floats; ``None`` if a Newton system does not factorise."""
    prev = math.inf
    for it in range(1, max_iter + 1):
        r = [ai * sum(map(mul, Ki, a)) - 1.0 for ai, Ki in zip(a, M)]
        # Cholesky of H = I + D M D (lower triangle only) fused with the forward solve
        # L y = r, so that lam2 = r^T H^-1 r = |y|^2 before the back substitution.
        L: list[list[float]] = []
        y: list[float] = []
        for i, (Ki, ai, ri) in enumerate(zip(M, a, r)):
            Mi = [ai * kij * aj for kij, aj in zip(Ki[: i + 1], a)]
            Li: list[float] = []
            for Mij, Lj in zip(Mi, L):
                Li.append((Mij - sum(map(mul, Li, Lj))) / Lj[-1])
            d = 1.0 + Mi[i] - sum(map(mul, Li, Li))
            if not d > 0.0:
                return None
            d = math.sqrt(d)
            y.append((ri - sum(map(mul, Li, y))) / d)
            Li.append(d)
            L.append(Li)
        lam2 = sum(map(mul, y, y))
        u = y
        for i in range(len(L) - 1, -1, -1):
            u[i] = (y[i] - sum(L[k][i] * u[k] for k in range(i + 1, len(L)))) / L[i][i]
        if lam2 >= 1 / 16:
            to_boundary = 0.9 / max(max(u), 1e-300)
            t = min(1.0, max(to_boundary, 1.0 / (1.0 + math.sqrt(lam2))))
        else:
            t = 1.0
        a = [ai - t * ai * ui for ai, ui in zip(a, u)]
        if _converged(lam2, prev, tol):
            return a, it
        prev = lam2
    return a, max_iter
