"""Gramians and weighted combinations of gradient rows, without up-casting whole buckets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

# Columns per chunk: large enough for BLAS to be efficient, small enough that an up-cast
# chunk of a bf16/fp16 bucket costs little memory.
CHUNK = 1 << 16

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def row_gramian(rows: Tensor | Sequence[Tensor], out: Tensor | None = None) -> Tensor:
    """Returns ``rows @ rows.T`` (R x R, float64, on the rows' device).

    Products are taken chunk by chunk in the rows' dtype (float32 for bf16/fp16) and summed
    in float64, which is as accurate as a float64 product for gradient-sized vectors at a
    fraction of the cost of up-casting the bucket.

    Args:
        rows: ``R x m`` rows, or blocks of rows over the same ``m`` columns, stacked in order
            (never copied into one matrix).
        out: an ``R x R`` float64 tensor of zeros to accumulate into (e.g. one slice of a
            stack of Gramians), else a new one is returned.
    """
    blocks = [rows] if isinstance(rows, Tensor) else list(rows)
    starts = [0]
    for block in blocks:
        starts.append(starts[-1] + block.shape[0])
    R, m = starts[-1], blocks[0].shape[1]
    dtype = _compute_dtype(blocks[0].dtype)
    if len(blocks) == 1 and dtype == blocks[0].dtype:
        # The hook's common case (one slot per rank): one product, no accumulator.
        product = _chunked_product(blocks[0], blocks[0])
        return product if out is None else out.add_(product)
    if out is None:
        out = torch.zeros(R, R, dtype=torch.float64, device=blocks[0].device)
    if dtype == blocks[0].dtype:
        for i, a in enumerate(blocks):
            rows_i = slice(starts[i], starts[i + 1])
            for j in range(i, len(blocks)):
                product = _chunked_product(a, blocks[j])
                out[rows_i, starts[j] : starts[j + 1]].add_(product)
                if j > i:
                    out[starts[j] : starts[j + 1], rows_i].add_(product.T)
        return out
    for start in range(0, m, CHUNK):
        chunks = [block[:, start : start + CHUNK] for block in blocks]
        if chunks[0].dtype != dtype:
            chunks = [chunk.to(dtype) for chunk in chunks]
        for i, a in enumerate(chunks):
            rows_i = slice(starts[i], starts[i + 1])
            out[rows_i, rows_i].add_(a @ a.T)  # summed in float64, like out + p.to(float64)
            for j in range(i + 1, len(chunks)):
                product = a @ chunks[j].T
                out[rows_i, starts[j] : starts[j + 1]].add_(product)
                out[starts[j] : starts[j + 1], rows_i].add_(product.T)
    return out


def _chunked_product(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b.T`` in float64 from the products of ``CHUNK``-column chunks in the rows' dtype.

    The chunks' products are one batched matrix product over strided views (no copy): the
    same partial sums as a loop over chunks, in a third of the time on a CPU, where each
    small product and each accumulation paid a call's overhead.
    """
    m = a.shape[1]
    chunks, tail = divmod(m, CHUNK)
    head = m - tail
    if m == 0:
        return torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64, device=a.device)
    # Each small op costs microseconds, paid per bucket: no accumulator to fill, and no
    # slice where the whole row is the tail.
    total = None
    if chunks:
        va = a[:, :head].unflatten(1, (chunks, CHUNK)).transpose(0, 1)
        vb = va if b is a else b[:, :head].unflatten(1, (chunks, CHUNK)).transpose(0, 1)
        total = torch.bmm(va, vb.transpose(1, 2)).to(torch.float64).sum(0)
    if tail:
        ta, tb = (a, b) if head == 0 else (a[:, head:], b[:, head:])
        product = (ta @ tb.T).to(torch.float64)
        total = product if total is None else total.add_(product)
    return total


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


def combine_rows(rows: Tensor | Sequence[Tensor], weights: Tensor, out: Tensor) -> None:
    """Writes ``weights @ rows`` into ``out`` (length m) in the rows' dtype.

    Rows with zero weight are skipped, so a dropped non-finite row cannot turn the result
    into NaN through ``0 * inf``.

    Args:
        rows: ``R x m`` rows, or blocks of rows over the same ``m`` columns, stacked in order.
        weights: ``R`` float64 weights.
        out: length ``m``, in the rows' dtype.
    """
    parts, offset = [], 0
    for block in [rows] if isinstance(rows, Tensor) else rows:
        w = weights[offset : offset + block.shape[0]]
        offset += block.shape[0]
        keep = w != 0
        if not bool(keep.all()):
            block, w = block[keep], w[keep]
        if block.shape[0] > 0:
            parts.append((block, w))
    if not parts:
        out.zero_()
        return
    dtype = _compute_dtype(parts[0][0].dtype)
    ws = [w.to(device=block.device, dtype=dtype)[None] for block, w in parts]
    if dtype == parts[0][0].dtype:
        _accumulate(ws, [block for block, _ in parts], out)
        return
    for start in range(0, out.numel(), CHUNK):
        chunks = [block[:, start : start + CHUNK].to(dtype) for block, _ in parts]
        acc = torch.empty(chunks[0].shape[1], dtype=dtype, device=out.device)
        _accumulate(ws, chunks, acc)
        out[start : start + CHUNK].copy_(acc)


def _accumulate(weights: list[Tensor], blocks: list[Tensor], out: Tensor) -> None:
    """``out = sum_i weights[i] @ blocks[i]`` (``1 x R_i`` weights, one matrix product each)."""
    view = out.view(1, -1)
    torch.mm(weights[0], blocks[0], out=view)
    for w, block in zip(weights[1:], blocks[1:]):
        view.addmm_(w, block)


def combine_ranges(
    rows: Sequence[Tensor], weights: Tensor, ranges: list[tuple[int, int]], out: Tensor
) -> None:
    """Writes ``weights[i] @ rows[:, a:b]`` into ``out[a:b]`` for each range ``(a, b)``.

    One matrix product per block and range when every weight is nonzero and the rows need no
    up-cast (the common case); :func:`combine_rows` otherwise.

    Args:
        rows: blocks of rows over the same ``m`` columns, stacked in order (``R`` rows).
        weights: ``len(ranges) x R`` float64 weights.
        ranges: column ranges of the rows (and of ``out``), one per row of ``weights``.
        out: length ``m``, in the rows' dtype.
    """
    dtype = rows[0].dtype
    if dtype != _compute_dtype(dtype) or not all(w != 0 for r in weights.tolist() for w in r):
        for (a, b), w in zip(ranges, weights):
            combine_rows([block[:, a:b] for block in rows], w, out[a:b])
        return
    cast = weights.to(device=rows[0].device, dtype=dtype)
    splits = cast.split([block.shape[0] for block in rows], dim=1)
    for i, (a, b) in enumerate(ranges):
        _accumulate([w[i : i + 1] for w in splits], [block[:, a:b] for block in rows], out[a:b])


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
