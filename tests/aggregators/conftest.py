"""One intra-op thread for the aggregator tests.

On a loaded machine, LAPACK calls on tiny matrices with two OpenMP threads can wait
milliseconds for the second thread (measured: a 8 x 8 ``cholesky_ex`` at 2 us with one thread,
0.3-5 ms with two while other processes kept both cores busy), which made the degenerate
sweep take minutes. The results do not depend on the thread count.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_intra_op_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
