"""Small exact QP solvers shared by MGDA and UPGrad.

Both methods reduce to non-negative quadratic programs ``min_x x^T Q x / 2 + c^T x, x >= 0``
with one ``T x T`` matrix ``Q`` and one or ``T`` linear terms ``c``. For ``T <= 64`` these are
solved exactly by block principal pivoting (Júdice & Pires 1994; Kim & Park 2011), batched over
the linear terms so that Python-level overhead is paid once per pivot, not once per problem.
"""

from __future__ import annotations

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


def unit_diagonal(K: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rescales a Gramian to unit diagonal: returns ``(K', r, s)`` with ``K' = S K S``.

    ``r`` holds the task-gradient norms and ``s = 1 / r`` (0 for zero gradients, whose rows of
    ``K'`` are then zero). Both QPs keep ``x >= 0`` under a positive diagonal change of
    variables, so solving on ``K'`` is exact and makes tasks whose norms differ by 1e12 equally
    well conditioned.
    """
    r = K.diagonal().sqrt()
    # The masked reciprocal only when needed: it costs two more ops on every call.
    s = 1.0 / r if r.min() > 0 else torch.where(r > 0, 1.0 / r, 0.0)
    return K * torch.outer(s, s), r, s


def nonneg_qp(
    K: Tensor,
    c: Tensor,
    *,
    free: Tensor | None = None,
    ridge: float = RIDGE,
    refine: bool = False,
    max_pivots: int | None = None,
) -> Tensor:
    """Solves ``min_x x^T (K + ridge I) x / 2 + c^T x, x >= 0`` for every row ``c`` of ``c``.

    Args:
        K: symmetric positive semi-definite ``T x T`` float64 matrix of order one (unit diagonal
            or zero rows, see :func:`unit_diagonal`).
        c: ``B x T`` linear terms.
        free: ``B x T`` guess of the support of ``x``; defaults to ``c < 0``.
        ridge: added to the diagonal of ``K`` (see ``RIDGE``). Smaller is less biased, larger
            is less noisy where ``K`` is singular; with ``refine`` the bias goes anyway.
        refine: remove the ridge's O(ridge) bias (two more triangular solves). Worth it when
            the solution should make ``K x + c`` vanish exactly on a singular ``K``.
        max_pivots: pivot cap; defaults to ``8 T + 32``. Reaching it (seen only for 64 tasks
            of rank 32) returns the last iterate clipped to ``x >= 0``: feasible, if not
            optimal, rather than an error in the middle of training.

    Returns:
        ``x`` (``B x T``) with ``x >= 0``, ``y = x Q + c >= 0`` and ``x * y == 0`` up to
        rounding (``Q = K + ridge I``): the exact KKT point.
    """
    for _ in range(3):
        try:
            return _pivot(K, ridge, c, free, refine, max_pivots)
        except torch.linalg.LinAlgError:
            # Gramians summed in float32 can have eigenvalues slightly below zero: lift them.
            ridge = 1e3 * ridge + 2.0 * max(0.0, -float(torch.linalg.eigvalsh(K)[0]))
    raise torch.linalg.LinAlgError("nonneg_qp: the Gramian is far from positive semi-definite.")


def _pivot(
    K: Tensor,
    ridge: float,
    c: Tensor,
    free: Tensor | None,
    refine: bool,
    max_pivots: int | None,
) -> Tensor:
    T = K.shape[0]
    eye = torch.eye(T, dtype=K.dtype)
    Q = K + ridge * eye
    # x = 0 off the free set and y = 0 on it (up to rounding far below the tolerance), so the
    # sign test on both is one test on x + y = x (Q + I) + c.
    Q_plus_eye = Q + eye
    neg_tol_c = c.abs().amax(1, keepdim=True).mul_(-TOL)
    if free is None:
        # Start from x = 0 with every descent coordinate freed: the first block exchange.
        free = c < neg_tol_c
        if not free.any():
            return torch.zeros_like(c)
    neg_c = -c
    rows = torch.arange(T)
    best = torch.full((c.shape[0], 1), T + 1)
    backup = torch.full_like(best, _BACKUP)
    for _ in range(8 * T + 32 if max_pivots is None else max_pivots):
        # The system Q_FF x_F = -c_F, padded with identity rows so that x is 0 off the free set.
        L, info = torch.linalg.cholesky_ex(torch.where(free[:, :, None] & free[:, None, :], Q, eye))
        x = torch.cholesky_solve((neg_c * free).unsqueeze(-1), L).squeeze(-1)
        neg_tol = x.abs().amax(1, keepdim=True).mul_(-TOL).add_(neg_tol_c)
        bad = torch.addmm(c, x, Q_plus_eye) < neg_tol
        if not bad.any():
            break
        # Kim & Park's rule, per problem: exchange every infeasible variable while their number
        # drops (or for a few more tries), else only the last one (Murty's rule, which cannot
        # cycle); the count dropping below its best so far is what makes this finite.
        n_bad = bad.sum(1, keepdim=True)
        better = n_bad < best
        best = torch.minimum(best, n_bad)
        backup = torch.where(better, _BACKUP, backup - 1)
        bad &= (backup >= 0) | (rows == (bad * rows).argmax(1, keepdim=True))
        free = free ^ bad
    # A failed factorisation leaves NaNs, which compare False: checked once, here.
    if info.any():
        raise torch.linalg.LinAlgError("nonneg_qp: the matrix is not positive definite.")
    if refine:
        x = x + _unbias(x, ridge, free, L)
    return x.clamp_min(0.0)


def _unbias(x: Tensor, ridge: float, free: Tensor, L: Tensor) -> Tensor:
    """Returns the correction that removes the ridge's O(ridge) bias from ``x``.

    A step of iterated Tikhonov, ``A^-1 (ridge x)`` with ``A = K_FF + ridge I``, solves the
    unregularised system on the free set to O(ridge^2), but where ``K_FF`` is singular it also
    doubles the (harmless) null-space part of ``x``, which can push entries below zero; a
    second step estimates that part and takes it back out.
    """
    step = torch.cholesky_solve(torch.where(free, ridge * x, 0.0).unsqueeze(-1), L)
    return (step - torch.cholesky_solve(ridge * step, L)).squeeze(-1)
