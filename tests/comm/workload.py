"""A small multi-task regression workload in which languages genuinely conflict."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from lightning_bmoo.comm import register_bucket_moo_hook

LANGUAGES = ("ar", "de", "en", "fa", "fr", "ru")


class MLP(nn.Module):
    """Layers registered in the opposite order of their use, so that DDP's initial buckets
    (reverse registration order) differ from the ones it rebuilds after the first iteration."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(32, 4)
        self.hidden = nn.Linear(32, 32)
        self.embed = nn.Linear(8, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(torch.tanh(self.embed(x)))))


class OddMLP(nn.Module):
    """Parameters of 56, 7, 35, 5, 20 and 4 elements: most of them no multiple of 2 or 3, so
    that shards of W = 2 or 3 ranks are uneven."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(8, 7), nn.Tanh(), nn.Linear(7, 5), nn.Tanh())
        self.head = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x))


def make_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return MLP().to(dtype)


def batch(language: str, step: int, slot: int, dtype: torch.dtype = torch.float32):
    """Deterministic data; each language maps inputs to targets with its own matrix."""
    g = torch.Generator().manual_seed(zlib.crc32(language.encode()))
    mapping = torch.randn(8, 4, generator=g)
    g.manual_seed(zlib.crc32(f"{language}/{step}/{slot}".encode()))
    x = torch.randn(6, 8, generator=g)
    return x.to(dtype), (x @ mapping).to(dtype)


def loss_of(model: nn.Module, language: str, step: int, slot: int, dtype=torch.float32):
    x, y = batch(language, step, slot, dtype)
    return ((model(x) - y) ** 2).mean()


def nan_for_ru_at_step_1(
    model: nn.Module, language: str, step: int, slot: int, dtype=torch.float32
):
    """:func:`loss_of`, but NaN for ``ru``'s slots of step 1: a non-finite language gradient."""
    value = loss_of(model, language, step, slot, dtype)
    return value * float("nan") if (language == "ru" and step == 1) else value


def round_robin(world_size: int, K: int, languages=LANGUAGES) -> Callable[[int], list[str]]:
    """Slot s of step t gets language (t + s) mod L: every step has min(WK, L) languages."""
    return lambda step: [languages[(step + s) % len(languages)] for s in range(world_size * K)]


def _on_cuda(loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``loss`` of a model on CUDA, its data made on the CPU as everywhere else."""

    def on_cuda(model: nn.Module, *args: Any) -> torch.Tensor:
        return loss(lambda x: model(x.cuda()).float().cpu(), *args)

    return on_cuda


def train(
    rank: int,
    world_size: int,
    *,
    steps: int = 3,
    K: int = 1,
    layout: Callable[[int], list[str]] | None = None,
    aggregator: str | None = "mean",
    dtype: torch.dtype = torch.float32,
    bucket_cap_mb: float = 0.002,
    lr: float = 0.1,
    make: Callable[[], nn.Module] | None = None,
    loss: Callable[..., torch.Tensor] | None = None,
    find_unused_parameters: bool = False,
    device: str = "cpu",
    **hook_options: Any,
) -> dict[str, Any]:
    """Trains on this rank; ``aggregator=None`` is plain DDP. Returns params and stats (on the
    CPU); ``device="cuda"`` trains on CUDA device ``rank``."""
    layout = layout or round_robin(world_size, K)
    loss = loss or loss_of
    model = make() if make else make_model(dtype=dtype)
    if device == "cuda":
        model, loss = model.cuda(), _on_cuda(loss)
    ddp = DDP(
        model,
        device_ids=[rank] if device == "cuda" else None,
        bucket_cap_mb=bucket_cap_mb,
        find_unused_parameters=find_unused_parameters,
    )
    state = None
    if aggregator is not None:
        state = register_bucket_moo_hook(ddp, aggregator, slots_per_rank=K, **hook_options)
    opt = torch.optim.SGD(ddp.parameters(), lr=lr)
    stats, grads = [], []
    for step in range(steps):
        for k in range(K):
            language = layout(step)[rank * K + k]
            value = loss(ddp, language, step, k, dtype) / K
            if state is None:
                value.backward()
            else:
                with state.slot(language):
                    value.backward()
        grads.append([p.grad.detach().cpu().clone() for p in model.parameters()])
        opt.step()
        opt.zero_grad()
        if state is not None:
            stats.append(state.last_step)
    params = [p.detach().cpu().clone() for p in model.parameters()]
    del ddp
    dist.barrier()
    return {
        "params": params,
        "grads": grads,
        "stats": stats,
        "state": state.state_dict() if state else None,
    }
