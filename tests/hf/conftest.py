"""One intra-op thread for the Hugging Face tests (see tests/aggregators/conftest.py for why).

The one-process references run hundreds of forward and backward passes of tiny models, each
a few milliseconds: with two threads on a loaded machine every one of them can wait for the
second thread. The results do not depend on the thread count.
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
