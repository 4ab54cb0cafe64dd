"""Small exact QP solvers shared by MGDA and UPGrad.

Both methods reduce to non-negative quadratic programs ``min_x x^T Q x / 2 + c^T x, x >= 0``
with one ``T x T`` matrix ``Q`` and one or ``T`` linear terms ``c``. For ``T <= 64`` these are
solved exactly by block principal pivoting (Júdice & Pires 1994; Kim & Park 2011), batched over
the linear terms so that Python-level overhead is paid once per pivot, not once per problem,
on numpy arrays (a numpy op on such small arrays costs a fraction of a tensor op), or for a
few tasks on Python floats.
"""

from __future__ import annotations

import math
from operator import mul

import numpy as np
import torch
from torch import Tensor

# Ridge added to the unit-diagonal Gramian. It keeps the pivoting systems positive definite when
# tasks are duplicated or linearly dependent; there the solution moves by O(ridge), which does
# not change the update in any measurable way.
RIDGE = 1e-14
# Relative tolerance of the sign tests on the primal and dual variables.
TOL = 1e-12
# Block exchanges allowed without progress before falling back to single ones.
_BACKUP = 3
# Smallest batch that is compacted once most of its problems are solved: below it the
# indexing costs more than the smaller systems save.
_COMPACT_MIN = 24

#: A Cholesky factor on Python floats: its rows, and its columns below the diagonal.
Factor = tuple[list[list[float]], list[list[float]]]


def unit_diagonal(M: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rescales a Gramian to unit diagonal: returns ``(M', r, s)`` with ``M' = S M S``.

    ``r`` holds the task-gradient norms and ``s = 1 / r`` (0 for zero gradients, whose rows of
    ``M'`` are then zero). Both QPs keep ``x >= 0`` under a positive diagonal change of
    variables, so solving on ``M'`` is exact and makes tasks whose norms differ by 1e12 equally
    well conditioned.
    """
    r = M.diagonal().sqrt()
    # 1 / 0 = inf becomes 0: no test (and no sync) for zero gradients.
    s = r.reciprocal().nan_to_num_(posinf=0.0)
    return M * torch.outer(s, s), r, s


def nonneg_qp(
    M: Tensor,
    c: Tensor,
    *,
    free: Tensor | None = None,
    ridge: float = RIDGE,
    refine: bool = False,
    max_pivots: int | None = None,
) -> Tensor:
    """:func:`nonneg_qp_array` on tensors (CPU float64; the result shares no memory)."""
    x = nonneg_qp_array(
        M.numpy(),
        c.numpy(),
        free=None if free is None else free.numpy(),
        ridge=ridge,
        refine=refine,
        max_pivots=max_pivots,
    )
    return torch.from_numpy(x)


def nonneg_qp_array(
    M: np.ndarray,
    c: np.ndarray,
    *,
    free: np.ndarray | None = None,
    ridge: float = RIDGE,
    refine: bool = False,
    max_pivots: int | None = None,
) -> np.ndarray:
    """Solves ``min_x x^T (M + ridge I) x / 2 + c^T x, x >= 0`` for every row ``c`` of ``c``.

    On numpy arrays: at this size each numpy op costs a fraction of a microsecond, a tensor op
    several, and the pivoting is dozens of small ops per round.

    Args:
        M: symmetric positive semi-definite ``T x T`` float64 matrix of order one (unit diagonal
            or zero rows, see :func:`unit_diagonal`).
        c: ``B x T`` linear terms.
        free: ``B x T`` boolean guess of the support of ``x``; defaults to ``c < 0``.
        ridge: added to the diagonal of ``M`` (see ``RIDGE``). Smaller is less biased, larger
            is less noisy where ``M`` is singular; with ``refine`` the bias goes anyway.
        refine: remove the ridge's O(ridge) bias (two more solves). Worth it when the
            solution should make ``M x + c`` vanish exactly on a singular ``M``.
        max_pivots: pivot cap; defaults to ``8 T + 32``. Reaching it (seen only for 64 tasks
            of rank 32) returns the last iterate clipped to ``x >= 0``: feasible, if not
            optimal, rather than an error in the middle of training.

    Returns:
        ``x`` (``B x T``) with ``x >= 0``, ``y = x Q + c >= 0`` and ``x * y == 0`` up to
        rounding (``Q = M + ridge I``): the exact KKT point.
    """
    eye = np.eye(len(M))
    for _ in range(3):
        Q = M + ridge * eye
        try:
            # The pivoting solves its systems by LU, which does not test definiteness: one
            # Cholesky of Q does, for every principal submatrix of Q at once.
            np.linalg.cholesky(Q)
            return _pivot(Q, eye, c, free, refine, ridge, max_pivots)
        except np.linalg.LinAlgError:
            # Gramians summed in float32 can have eigenvalues slightly below zero: lift them.
            ridge = 1e3 * ridge + 2.0 * max(0.0, -float(np.linalg.eigvalsh(M)[0]))
    raise torch.linalg.LinAlgError("nonneg_qp: the Gramian is far from positive semi-definite.")


def _pivot(
    Q: np.ndarray,
    eye: np.ndarray,
    c: np.ndarray,
    free: np.ndarray | None,
    refine: bool,
    ridge: float,
    max_pivots: int | None,
) -> np.ndarray:
    B, T = c.shape
    # x = 0 off the free set and y = 0 on it (up to rounding far below the tolerance), so the
    # sign test on both is one test on x + y = x (Q + I) + c.
    Q_plus_eye = Q + eye
    neg_tol_c = np.abs(c).max(1, keepdims=True) * -TOL
    if free is None:
        # Start from x = 0 with every descent coordinate freed: the first block exchange.
        free = c < neg_tol_c
        if not np.count_nonzero(free):
            return np.zeros_like(c)
    neg_c = -c
    # Solved problems leave a large batch once they are the majority (refinement needs every
    # problem's last free set, so the batch stays whole then); their solutions are kept at
    # rows ``rows`` of ``out``. In a small batch the indexing costs more than it saves.
    compact = not refine and B >= _COMPACT_MIN
    out = rows = None
    # Kim & Park's bookkeeping is per problem and scalar: on Python ints it costs no array
    # ops. Their rule exchanges whole blocks in the first _BACKUP + 1 rounds whatever the
    # counts, so counting starts after.
    best = [T + 1] * B
    backup = [_BACKUP] * B
    for it in range(8 * T + 32 if max_pivots is None else max_pivots):
        # The system Q_FF x_F = -c_F, padded with identity rows so that x is 0 off the free set.
        solved = free
        x = np.linalg.solve(_padded(Q, eye, free), (neg_c * free)[:, :, None])[:, :, 0]
        neg_tol = neg_tol_c - TOL * np.abs(x).max(1, keepdims=True)
        bad = x @ Q_plus_eye + c < neg_tol
        if it <= _BACKUP and not compact:
            if not np.count_nonzero(bad):
                break
            free = free ^ bad
            continue
        n_bad = bad.sum(1).tolist()
        todo = [b for b, n in enumerate(n_bad) if n]
        if not todo:
            break
        if it > _BACKUP:
            _kim_park(bad, n_bad, best, backup)
        free = free ^ bad
        if compact and 2 * len(todo) <= len(n_bad):
            out, rows = _compacted(out, rows, x * solved)
            keep = np.array(todo)
            rows, x, solved, c, neg_c, neg_tol_c, free = (
                v[keep] for v in (rows, x, solved, c, neg_c, neg_tol_c, free)
            )
            best = [best[b] for b in todo]
            backup = [backup[b] for b in todo]
    if refine:
        step = _unbias(x, ridge, solved, Q, eye)
        x += step * _feasible_fraction(x, step)
    # LU's row exchanges may leave rounding-level entries off the free set (see _padded).
    x *= solved
    if out is not None:
        out[rows] = x
        x = out
    return np.maximum(x, 0.0, out=x)


def _padded(Q: np.ndarray, eye: np.ndarray, free: np.ndarray) -> np.ndarray:
    """The matrices (one per row of ``free``) with the rows of ``Q`` on the free set and of the
    identity off it.

    With a right-hand side that is 0 off the free set they give ``x_N = 0`` and then
    ``Q_FF x_F = b_F``: the free set's system, for masking rows only (one broadcast op fewer
    than also masking columns), at the price of symmetry, which LU does not need. Up to
    rounding: LU's row exchanges can mix the identity rows into the others.
    """
    return np.where(free[:, :, None], Q, eye)


def _compacted(
    out: np.ndarray | None, rows: np.ndarray | None, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Stores the batch's solutions ``x`` at rows ``rows`` of ``out`` (the first time,
    ``x`` itself becomes ``out``)."""
    if out is None:
        return x, np.arange(len(x))
    out[rows] = x
    return out, rows


def _kim_park(bad: np.ndarray, n_bad: list[int], best: list[int], backup: list[int]) -> None:
    """Kim & Park's rule, per problem: keep exchanging every infeasible variable while their
    number drops (or for a few more tries), else only the last one (Murty's rule, which cannot
    cycle); the count dropping below its best so far is what makes this finite.

    Edits ``bad`` (the variables to exchange, one row per problem), ``best`` and ``backup``.
    """
    for b, n in enumerate(n_bad):
        if not n:
            continue
        if n < best[b]:
            best[b], backup[b] = n, _BACKUP
        else:
            backup[b] -= 1
            if backup[b] < 0:
                last = bad[b].nonzero()[0][-1]
                bad[b] = False
                bad[b, last] = True


def _feasible_fraction(x: np.ndarray, step: np.ndarray) -> np.ndarray:
    """The largest ``t`` in ``[0, 1]`` (per row) with ``x + t step >= 0``.

    The bias correction moves mostly along near-null directions of ``K_FF``, where ``y`` barely
    changes. Where ``K_FF`` is near-singular (eigenvalues near the ridge) it can still push an
    entry below zero; clipping that entry alone would be an O(1) move in a direction that is
    not null, breaking ``y >= 0`` (an update that conflicts with a task). Shortening the whole
    step keeps ``x >= 0`` and ``y`` where the pivoting left it.
    """
    shrinking = step < 0
    ratio = np.divide(np.maximum(x, 0.0), -step, out=np.full_like(x, np.inf), where=shrinking)
    return np.minimum(ratio.min(-1, keepdims=True), 1.0)


def _unbias(
    x: np.ndarray, ridge: float, free: np.ndarray, Q: np.ndarray, eye: np.ndarray
) -> np.ndarray:
    """Returns the correction that removes the ridge's O(ridge) bias from ``x``.

    A step of iterated Tikhonov, ``A^-1 (ridge x)`` with ``A = K_FF + ridge I``, solves the
    unregularised system on the free set to O(ridge^2), but where ``K_FF`` is singular it also
    doubles the (harmless) null-space part of ``x``, which can push entries below zero; a
    second step estimates that part and takes it back out.
    """
    A = _padded(Q, eye, free)
    step = np.linalg.solve(A, np.where(free, ridge * x, 0.0)[:, :, None])
    return (step - np.linalg.solve(A, ridge * step))[:, :, 0]


def nonneg_qp_floats(
    M: list[list[float]],
    c: list[float],
    *,
    ridge: float = RIDGE,
    refine: bool = False,
    cache: dict[tuple[int, ...], tuple[Factor, list[list[float]]]] | None = None,
    free: list[int] | None = None,
) -> list[float] | None:
    """:func:`nonneg_qp` for one linear term, on Python floats.

    The same pivoting rule, tolerances and ridge, so the same solution up to rounding, but
    without array ops, whose fixed costs dominate a tiny problem. ``cache``
    maps free sets to their Cholesky factors, so that problems sharing ``M`` and ``ridge``
    (UPGrad's ``T`` projections) factorise each distinct free set once. ``free`` is a guess of
    the support (sorted indices), as in :func:`nonneg_qp`.

    Returns ``None`` where a factorisation fails (``M`` not positive semi-definite): the
    caller falls back to :func:`nonneg_qp`, which lifts the ridge.
    """
    T = len(c)
    neg_tol_c = -TOL * max(map(abs, c))
    F = [j for j in range(T) if c[j] < neg_tol_c] if free is None else free
    if not F and free is None:
        return [0.0] * T
    if cache is None:
        cache = {}
    best, backup = T + 1, _BACKUP
    for _ in range(8 * T + 32):
        key = tuple(F)
        entry = cache.get(key)
        if entry is None:
            factor = cholesky_floats([[M[a][b] for b in F] for a in F], ridge)
            if factor is None:
                return None
            entry = cache[key] = (factor, [M[f] for f in F])
        factor, rows = entry
        xF = cholesky_solve_floats(factor, [-c[j] for j in F])
        # Block exchanges can empty the free set (every free variable came out negative):
        # then x = 0, as in nonneg_qp, whose norm of a zero row is 0.
        neg_tol = neg_tol_c - TOL * max(map(abs, xF), default=0.0)
        # The sign test of nonneg_qp on x + y: x on the free set, y = M x + c off it.
        if len(F) > 1:
            z = [cj + sum(map(mul, col, xF)) for cj, col in zip(c, zip(*rows))]
        elif F:
            (x0,), (r0,) = xF, rows
            z = [cj + x0 * a for cj, a in zip(c, r0)]
        else:
            z = list(c)
        for j, xj in zip(F, xF):
            z[j] = xj
        bad = [j for j in range(T) if z[j] < neg_tol]
        if not bad:
            break
        if len(bad) < best:
            best, backup = len(bad), _BACKUP
        else:
            backup -= 1
        # Kim & Park's rule as in nonneg_qp: every infeasible variable, or only the last one.
        F = sorted(set(F).symmetric_difference(bad if backup >= 0 else bad[-1:]))
    if refine:
        # nonneg_qp's _unbias on the free set's factor.
        step = cholesky_solve_floats(factor, [ridge * xj for xj in xF])
        back = cholesky_solve_floats(factor, [ridge * sj for sj in step])
        delta = [sj - bj for sj, bj in zip(step, back)]
        # As _feasible_fraction: shorten the correction rather than clip entries.
        t = min([max(xj, 0.0) / -dj for xj, dj in zip(xF, delta) if dj < 0.0], default=1.0)
        xF = [xj + min(t, 1.0) * dj for xj, dj in zip(xF, delta)]
    x = [0.0] * T
    for j, xj in zip(F, xF):
        if xj > 0.0:
            x[j] = xj
    return x


def cholesky_floats(A: list[list[float]], ridge: float) -> Factor | None:
    """Returns the rows and the columns below the diagonal of the Cholesky factor of A + ridge I.

    ``None`` if ``A + ridge I`` is not (numerically) positive definite.
    """
    L: list[list[float]] = []
    for i, Ai in enumerate(A):
        Li: list[float] = []
        for j, Lj in enumerate(L):
            Li.append((Ai[j] - sum(map(mul, Li, Lj))) / Lj[j])
        d = Ai[i] + ridge - sum(map(mul, Li, Li))
        if not d > 0.0:
            return None
        Li.append(math.sqrt(d))
        L.append(Li)
    m = len(L)
    cols = [[L[k][i] for k in range(i + 1, m)] for i in range(m)]
    return L, cols


def cholesky_solve_floats(factor: Factor, b: list[float]) -> list[float]:
    """Solves ``A x = b`` given the factor of ``A`` from :func:`cholesky_floats`."""
    L, cols = factor
    y: list[float] = []
    for Li, bi in zip(L, b, strict=True):
        y.append((bi - sum(map(mul, Li, y))) / Li[-1])
    x = y
    for i in range(len(L) - 1, -1, -1):
        x[i] = (y[i] - sum(map(mul, cols[i], x[i + 1 :]))) / L[i][i]
    return x
