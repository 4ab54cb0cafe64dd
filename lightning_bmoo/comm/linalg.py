"""Gramians and weighted combinations of gradient rows, without up-casting whole buckets."""

from __future__ import annotations

import torch
from torch import Tensor

# Columns per chunk: large enough for BLAS to be efficient, small enough that an up-cast
# chunk of a bf16/fp16 bucket costs little memory.
CHUNK = 1 << 16

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def row_gramian(rows: Tensor) -> Tensor:
    """Returns ``rows @ rows.T`` (R x R, float64, on the rows' device).

    Products are taken chunk by chunk in the rows' dtype (float32 for bf16/fp16) and summed
    in float64, which is as accurate as a float64 product for gradient-sized vectors at a
    fraction of the cost of up-casting the bucket.
    """
    R, m = rows.shape
    out = torch.zeros(R, R, dtype=torch.float64, device=rows.device)
    dtype = _compute_dtype(rows.dtype)
    for start in range(0, m, CHUNK):
        chunk = rows[:, start : start + CHUNK].to(dtype)
        out += (chunk @ chunk.T).to(torch.float64)
    return out


def task_gramian(slot_gramian: Tensor, averaging: Tensor) -> Tensor:
    """Maps a slot Gramian (WK x WK) to the task Gramian ``A P A^T`` (T x T).

    A task containing a non-finite slot gets NaN in its row and column; other tasks keep
    finite entries (a plain matmul would spread NaN through ``0 * nan``).
    """
    finite = torch.isfinite(slot_gramian.diagonal())
    if bool(finite.all()):
        return averaging @ slot_gramian @ averaging.T
    cleaned = torch.where(finite[:, None] & finite[None, :], slot_gramian, 0.0)
    K = averaging @ cleaned @ averaging.T
    bad_task = (averaging[:, ~finite] != 0).any(dim=1)
    K[bad_task, :] = float("nan")
    K[:, bad_task] = float("nan")
    return K


def combine_rows(rows: Tensor, weights: Tensor, out: Tensor) -> None:
    """Writes ``weights @ rows`` into ``out`` (length m) in the rows' dtype.

    Rows with zero weight are skipped, so a dropped non-finite row cannot turn the result
    into NaN through ``0 * inf``.
    """
    keep = weights != 0
    if not bool(keep.all()):
        rows, weights = rows[keep], weights[keep]
    if rows.shape[0] == 0:
        out.zero_()
        return
    dtype = _compute_dtype(rows.dtype)
    w = weights.to(device=rows.device, dtype=dtype)[None]
    if dtype == rows.dtype:
        torch.mm(w, rows, out=out.view(1, -1))
        return
    for start in range(0, rows.shape[1], CHUNK):
        chunk = rows[:, start : start + CHUNK].to(dtype)
        out[start : start + CHUNK].copy_((w @ chunk)[0])
