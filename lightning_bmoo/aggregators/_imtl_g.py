"""IMTL-G: an update with equal projections on every unit task gradient."""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor

from ._base import Aggregator


class IMTLG(Aggregator):
    """IMTL-G: an update with equal projections on every unit task gradient."""

    name = "imtl_g"

    def _weights(
        self,
        K: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        raise NotImplementedError
