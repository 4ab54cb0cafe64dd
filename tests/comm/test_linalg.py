"""The hook's Gramians and combinations against float64 references, on the shapes it meets:
several blocks of rows, columns below, at and across the chunk size, low precision."""

from __future__ import annotations

import pytest
import torch

from lightning_bmoo.comm.linalg import CHUNK, combine_ranges, row_gramian


@pytest.mark.parametrize("m", [1, 7, CHUNK, CHUNK + 1, 3 * CHUNK - 5])
@pytest.mark.parametrize("sizes", [(2,), (4, 2), (1, 3, 2)])
def test_row_gramian_of_blocks_is_the_stacked_rows_gramian(m, sizes):
    g = torch.Generator().manual_seed(m)
    blocks = [torch.randn(r, m, generator=g) for r in sizes]
    stacked = torch.cat(blocks).to(torch.float64)
    expected = stacked @ stacked.T
    got = row_gramian(blocks)
    assert got.dtype == torch.float64 and got.shape == expected.shape
    # float32 products within a chunk, float64 across chunks.
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 * expected.abs().max().item())
    # A slice of a wider matrix (the hook's segments) is read in place, not copied first.
    wide = torch.randn(2, m + 9, generator=g)
    part = wide[:, 4 : 4 + m]
    ref = part.to(torch.float64) @ part.to(torch.float64).T
    torch.testing.assert_close(row_gramian(part), ref, rtol=0, atol=1e-6 * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_row_gramian_accumulates_into_out_and_up_casts_low_precision(dtype):
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 2 * CHUNK + 3, generator=g).to(dtype)
    exact = rows.to(torch.float64) @ rows.to(torch.float64).T
    out = torch.ones(3, 3, dtype=torch.float64)
    assert row_gramian(rows, out=out) is out
    torch.testing.assert_close(out - 1.0, exact, rtol=0, atol=1e-5 * exact.abs().max().item())


@pytest.mark.parametrize("blocks", [1, 2])
def test_row_gramian_of_no_columns_is_zero(blocks):
    rows = [torch.empty(2, 0)] * blocks
    assert torch.equal(row_gramian(rows), torch.zeros(2 * blocks, 2 * blocks, dtype=torch.float64))


def test_combine_ranges_matches_a_float64_weighted_sum():
    g = torch.Generator().manual_seed(1)
    blocks = [torch.randn(2, 50, generator=g), torch.randn(2, 50, generator=g)]
    weights = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 0.0]], dtype=torch.float64)
    ranges = [(0, 20), (20, 50)]
    out = torch.empty(50)
    combine_ranges(blocks, weights, ranges, out)
    stacked = torch.cat(blocks).to(torch.float64)
    for (a, b), w in zip(ranges, weights):
        torch.testing.assert_close(
            out[a:b].to(torch.float64), w @ stacked[:, a:b], atol=1e-6, rtol=0
        )
