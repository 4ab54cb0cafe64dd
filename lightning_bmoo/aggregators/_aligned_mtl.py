"""Aligned-MTL: aligning the principal components of the task gradients."""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor

from ._base import Aggregator


class AlignedMTL(Aggregator):
    """Aligned-MTL: aligning the principal components of the task gradients."""

    name = "aligned_mtl"

    def _weights(
        self,
        K: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        raise NotImplementedError
