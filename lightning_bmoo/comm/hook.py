"""The DDP communication hook and its registration.

No ``from __future__ import annotations`` here: DDP inspects the hook's ``bucket``
annotation at registration and rejects a string.
"""

from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..aggregators import Aggregator
from .options import HookOptions
from .state import BucketMOOState


def bucket_moo_hook(
    state: BucketMOOState, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: replaces the bucket's all-reduce by a per-bucket MOO update."""
    return state.on_bucket(bucket)


def register_bucket_moo_hook(
    ddp: DistributedDataParallel,
    aggregator: "str | Aggregator" = "mgda",
    *,
    transport: str = "sharded",
    granularity: str = "bucket",
    slots_per_rank: int = 1,
    nonfinite: str = "drop",
    seed: int = 0,
    aggregator_options: "dict[str, Any] | None" = None,
    direction_only: bool = False,
) -> BucketMOOState:
    """Registers the bucket-MOO hook on a DDP model and returns its state.

    Before each microbatch's backward pass, declare its language::

        state = register_bucket_moo_hook(ddp, "mgda", slots_per_rank=K)
        for microbatch in step_batches:          # K microbatches per optimizer step
            with state.slot(microbatch.language):
                loss_fn(ddp(microbatch.x)).backward()
        optimizer.step(); optimizer.zero_grad()

    Do not wrap backward passes in ``ddp.no_sync()``: the hook must see every slot. The
    options are those of :class:`~lightning_bmoo.comm.HookOptions`.

    Raises:
        ValueError: for a bad option (before anything is registered).
        TypeError: if ``ddp`` is not a ``DistributedDataParallel`` model.
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
    return install_bucket_moo_hook(ddp, options)


def install_bucket_moo_hook(ddp: DistributedDataParallel, options: HookOptions) -> BucketMOOState:
    """Registers the hook configured by a :class:`~lightning_bmoo.comm.HookOptions` record.

    What :func:`register_bucket_moo_hook` and the strategy call.

    Raises:
        TypeError: if ``ddp`` is not a ``DistributedDataParallel`` model.
        ValueError: if the transport cannot run on the model's device and backend, or an
            option is undecided.
    """
    if not isinstance(ddp, DistributedDataParallel):
        raise TypeError(
            f"register_bucket_moo_hook needs a DistributedDataParallel model, got "
            f"{type(ddp).__name__}."
        )
    if (
        options.transport == "sharded"
        and dist.get_backend(ddp.process_group) == "gloo"
        and any(p.is_cuda for p in ddp.parameters())
    ):
        raise ValueError(
            "The sharded transport needs all_to_all, which the gloo backend implements for "
            "CPU tensors only. Use the nccl backend for CUDA models (Lightning does by "
            "default), or transport='gather'."
        )
    state = BucketMOOState(
        options,
        param_names={id(p): name for name, p in ddp.module.named_parameters()},
        process_group=ddp.process_group,
        find_unused_parameters=bool(ddp.find_unused_parameters),
        bucket_cap_bytes=getattr(ddp, "bucket_bytes_cap", None),
    )
    ddp.register_comm_hook(state, bucket_moo_hook)
    return state
