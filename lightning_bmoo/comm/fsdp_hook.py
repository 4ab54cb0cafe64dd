"""Installing the bucket-MOO comm on a model's FSDP2 units (plain torch, torchrun, Lightning)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.fsdp._fully_shard._fsdp_api import ReduceScatter

from ..aggregators import Aggregator
from .fsdp_state import FSDPBucketMOOState
from .fsdp_units import Unit, find_units
from .options import HookOptions


class UnitReduceScatter(ReduceScatter):
    """FSDP2's reduce-scatter of one unit, replaced by the bucket-MOO comm.

    Args:
        state: the comm's state, shared by every unit of the model.
        unit: the unit this instance serves.
    """

    def __init__(self, state: FSDPBucketMOOState, unit: Unit) -> None:
        self.state = state
        self.unit = unit

    def allocate(
        self, size: Sequence[int | torch.SymInt], *, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """A plain buffer on FSDP's current stream (the reduce-scatter stream on GPUs)."""
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(
        self,
        output_tensor: Tensor,
        input_tensor: Tensor,
        group: dist.ProcessGroup,
        op: Any,
        async_op: bool = False,
    ) -> None:
        """Writes this rank's shard of the unit's MOO update (zeros before the last slot).

        Runs to completion before returning, whatever ``async_op`` says: FSDP reads the output
        right after the call, on the same stream.
        """
        self.state.on_reduce_scatter(self.unit, output_tensor, input_tensor, group, op)


def register_fsdp_bucket_moo_hook(
    model: nn.Module,
    aggregator: str | Aggregator = "mgda",
    *,
    transport: str = "sharded",
    granularity: str = "bucket",
    slots_per_rank: int = 1,
    nonfinite: str = "drop",
    seed: int = 0,
    aggregator_options: dict[str, Any] | None = None,
    direction_only: bool = False,
) -> FSDPBucketMOOState:
    """Installs the bucket-MOO comm on every FSDP2 unit of ``model`` and returns its state.

    Call it after ``fully_shard`` (on the blocks, then the model), on every rank. Use the state
    as the DDP hook's::

        state = register_fsdp_bucket_moo_hook(model, "mgda", slots_per_rank=K)
        for microbatch in step_batches:          # K microbatches per optimizer step
            with state.slot(microbatch.language):
                (loss_fn(model(microbatch.x)) / K).backward()
        optimizer.step(); optimizer.zero_grad()

    Each unit is one group (``granularity="bucket"``); the options are those of
    :class:`~lightning_bmoo.comm.HookOptions`. Only the ``sharded`` transport exists here:
    FSDP keeps each rank's shard, and the all-to-all exchange moves the bytes of its
    reduce-scatter.

    Raises:
        ValueError: for a bad option (``transport="gather"`` included) or an unsupported FSDP
            setup (2-D mesh, several parameter groups in a unit, world size 1), before anything
            is installed.
        TypeError: for FSDP1 modules or a model without ``fully_shard`` units.
    """
    options = HookOptions.build(
        aggregator,
        aggregator_options,
        transport=transport,
        granularity=granularity,
        slots_per_rank=slots_per_rank,
        nonfinite=nonfinite,
        seed=seed,
        direction_only=direction_only,
    )
    return install_fsdp_bucket_moo_hook(model, options)


def install_fsdp_bucket_moo_hook(model: nn.Module, options: HookOptions) -> FSDPBucketMOOState:
    """Installs the comm configured by a :class:`~lightning_bmoo.comm.HookOptions` record.

    What :func:`register_fsdp_bucket_moo_hook` and the Lightning strategy call. Every unit is
    set to reduce-scatter with a divide factor of 1 and sum reduction (the comm owns the
    scaling: its ``mean`` equals FSDP2's default average), to include zeros for parameters a
    backward pass did not use (per-language heads: every rank then sends the same layout), and
    to reduce on every backward pass (each slot must reach the comm).

    Raises:
        ValueError: for ``transport="gather"``, an undecided option, or an unsupported FSDP
            setup.
        TypeError: for FSDP1 modules or a model without ``fully_shard`` units.
    """
    if options.transport != "sharded":
        raise ValueError(
            f"transport={options.transport!r} does not apply to FSDP: each rank keeps its shard, "
            "and the comm's all-to-all exchange (the bytes of FSDP's reduce-scatter) is the only "
            "transport. Leave transport at 'sharded'."
        )
    options = options.resolved()
    param_names = {id(p): name for name, p in model.named_parameters()}
    units = find_units(model, param_names)
    state = FSDPBucketMOOState(options, units=units, param_names=param_names)
    for unit in units:
        module = unit.module
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)
        module.set_reduce_scatter_unused_params(True, recurse=False)
        module.set_requires_gradient_sync(True, recurse=False)
        module.set_custom_reduce_scatter(UnitReduceScatter(state, unit))
    return state
