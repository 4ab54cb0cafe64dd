"""Gramians and weighted combinations of gradient rows, without up-casting whole buckets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

# Columns per chunk: large enough for BLAS to be efficient, small enough that an up-cast
# chunk of a bf16/fp16 bucket costs little memory.
CHUNK = 1 << 16

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def row_gramian(rows: Tensor, out: Tensor | None = None) -> Tensor:
    """Returns ``rows @ rows.T`` (R x R, float64, on the rows' device).

    Products are taken chunk by chunk in the rows' dtype (float32 for bf16/fp16) and summed
    in float64, which is as accurate as a float64 product for gradient-sized vectors at a
    fraction of the cost of up-casting the bucket.

    Args:
        rows: ``R x m`` rows.
        out: an ``R x R`` float64 tensor of zeros to accumulate into (e.g. one slice of a
            stack of Gramians), else a new one is returned.
    """
    R, m = rows.shape
    if out is None:
        out = torch.zeros(R, R, dtype=torch.float64, device=rows.device)
    dtype = _compute_dtype(rows.dtype)
    for start in range(0, m, CHUNK):
        chunk = rows[:, start : start + CHUNK]
        if chunk.dtype != dtype:
            chunk = chunk.to(dtype)
        out.add_(chunk @ chunk.T)  # summed in float64, like out + product.to(float64)
    return out


def task_gramian(slot_gramian: Tensor, averaging: Tensor) -> Tensor:
    """Maps slot Gramians (``... x WK x WK``) to task Gramians ``A P A^T`` (``... x T x T``).

    A task containing a non-finite slot gets NaN in its row and column; other tasks keep
    finite entries (a plain matmul would spread NaN through ``0 * nan``). Leading dimensions
    are a batch: one call maps every group of a bucket.
    """
    finite = torch.isfinite(slot_gramian.diagonal(dim1=-2, dim2=-1))
    if bool(finite.all()):
        return averaging @ slot_gramian @ averaging.T
    pair = finite.unsqueeze(-1) & finite.unsqueeze(-2)
    cleaned = torch.where(pair, slot_gramian, 0.0)
    K = averaging @ cleaned @ averaging.T
    # A task is bad where one of its slots is: (... x WK) @ (WK x T) counts them.
    bad_task = ((~finite).to(averaging.dtype) @ (averaging != 0).to(averaging.dtype).T) > 0
    return K.masked_fill(bad_task.unsqueeze(-1) | bad_task.unsqueeze(-2), float("nan"))


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


def combine_ranges(
    rows: Tensor, weights: Tensor, ranges: list[tuple[int, int]], out: Tensor
) -> None:
    """Writes ``weights[i] @ rows[:, a:b]`` into ``out[a:b]`` for each range ``(a, b)``.

    One small matrix product per range when every weight is nonzero and the rows need no
    up-cast (the common case); :func:`combine_rows` otherwise.

    Args:
        rows: ``R x m`` rows.
        weights: ``len(ranges) x R`` float64 weights.
        ranges: column ranges of ``rows`` (and ``out``), one per row of ``weights``.
        out: length ``m``, in the rows' dtype.
    """
    fast = rows.dtype == _compute_dtype(rows.dtype) and all(
        w != 0 for row in weights.tolist() for w in row
    )
    if not fast:
        for (a, b), w in zip(ranges, weights):
            combine_rows(rows[:, a:b], w, out[a:b])
        return
    cast = weights.to(device=rows.device, dtype=rows.dtype)
    for i, (a, b) in enumerate(ranges):
        torch.mm(cast[i : i + 1], rows[:, a:b], out=out[a:b].view(1, -1))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Runs the block with one intra-op thread, then restores the count.

    For ``T x T`` work (solves, task Gramians): microseconds of small ops and LAPACK calls,
    which waiting for OpenMP/MKL workers on a busy machine stretches to milliseconds (an
    8 x 8 Cholesky measured 0.3-5 ms with 2 threads instead of 2 us). Their results do not
    depend on the thread count.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
