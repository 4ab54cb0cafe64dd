"""Sharded models and a training loop for the FSDP comm's tests (plain torch, gloo ranks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from lightning_bmoo.comm import register_fsdp_bucket_moo_hook

from ..comm.heads import Heads
from ..comm.workload import loss_of, make_model


def sharded_mlp(mp_policy: MixedPrecisionPolicy | None = None) -> nn.Module:
    """The workload MLP with three units (embed, hidden, and the root holding the head)."""
    model = make_model()
    kwargs = {} if mp_policy is None else {"mp_policy": mp_policy}
    for block in (model.embed, model.hidden):
        fully_shard(block, **kwargs)
    return fully_shard(model, **kwargs)


def sharded_heads() -> nn.Module:
    """Per-language heads in the root unit, the shared body in its own unit."""
    model = Heads()
    fully_shard(model.body)
    return fully_shard(model)


def plain_fsdp(model: nn.Module) -> None:
    """FSDP2's default reduction, with the zeros for unused parameters the comm also sends."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_reduce_scatter_unused_params(True, recurse=False)


def local_grads(model: nn.Module) -> dict[str, torch.Tensor | None]:
    """This rank's shard (dim-0 chunk) of every parameter's gradient, by name."""
    return {
        name: None if p.grad is None else p.grad.to_local().detach().clone()
        for name, p in model.named_parameters()
    }


def assembled(per_rank: list[list[dict[str, torch.Tensor | None]]]) -> list[dict[str, Any]]:
    """Whole gradients per step from every rank's :func:`local_grads` (``per_rank[r][step]``)."""
    return [
        {
            name: None if shards[0][name] is None else torch.cat([s[name] for s in shards])
            for name in shards[0]
        }
        for shards in zip(*per_rank)
    ]


def run_steps(
    model: nn.Module,
    layouts: list[list[str]],
    K: int,
    rank: int,
    aggregator: str | None,
    loss: Callable[..., torch.Tensor] = loss_of,
    optimizer: torch.optim.Optimizer | None = None,
    state: Any = None,
    start: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Runs one step per layout (slot ``s`` of a layout: microbatch ``s % K`` of rank ``s // K``).

    ``aggregator=None`` is FSDP2's default reduction. Without an optimizer this rank's shards
    of every step's gradients are recorded (and zeroed); with one, it steps.
    """
    if aggregator is not None and state is None:
        state = register_fsdp_bucket_moo_hook(model, aggregator, slots_per_rank=K, **options)
    elif aggregator is None:
        plain_fsdp(model)
    grads, stats = [], []
    for i, layout in enumerate(layouts):
        step = start + i
        for k in range(K):
            language = layout[rank * K + k]
            value = loss(model, language, step, k) / K
            if state is None:
                value.backward()
            else:
                with state.slot(language):
                    value.backward()
        if optimizer is None:
            grads.append(local_grads(model))
            model.zero_grad(set_to_none=True)
        else:
            optimizer.step()
            optimizer.zero_grad()
        if state is not None:
            stats.append(state.last_step)
    return {"grads": grads, "stats": stats, "state": state}
