"""Lightning fits with FSDP2 on forked gloo ranks, each started as torchrun would start it.

With ``LOCAL_RANK`` set, Lightning launches no processes: every forked rank builds its own
Trainer, as under torchrun or SLURM. Importable (fork needs no local classes).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from lightning_bmoo.comm.transports import group_timeout

from ..strategy.models import LanguageData, Recorder, TinyModel


class ShardedTinyModel(TinyModel):
    """The strategy tests' regression model, sharded per layer in ``configure_model``."""

    def __init__(self, mp_policy: MixedPrecisionPolicy | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mp_policy = mp_policy

    def configure_model(self) -> None:
        if isinstance(self.net, FSDPModule):
            return
        options: dict[str, Any] = {"mesh": self.device_mesh["data_parallel"]}
        if self.mp_policy is not None:
            options["mp_policy"] = self.mp_policy
        for block in (self.net.embed, self.net.hidden):
            fully_shard(block, **options)
        fully_shard(self.net, **options)


class ShardRecorder(Recorder):
    """The strategy tests' recorder, keeping each rank's parameter shards in ``record``."""

    record: dict[str, Any]

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        state = getattr(trainer.strategy, "hook_state", None)
        self.record = {
            "params": [p.to_local().detach().clone() for p in pl_module.parameters()],
            "global_step": trainer.global_step,
            "hook_step": None if state is None else state.step,
            "slots_per_rank": None if state is None else state.slots_per_rank,
            "layouts": self.layouts,
            "expected": self.expected,
            "groups": self.groups,
            # The timeouts of the mesh's data-parallel group, the comm's group and its channel.
            "timeouts": None
            if state is None
            else [
                group_timeout(trainer.strategy.device_mesh["data_parallel"].get_group()),
                group_timeout(state.process_group),
                group_timeout(state.channels.control),
            ],
        }


def fit(rank: int, world_size: int, out_dir: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Fits on this rank; ``spec`` holds ``strategy`` (a factory) and optional ``model``,
    ``data``, ``ckpt_path``, ``callbacks`` (a factory) and Trainer arguments."""
    spec = dict(spec)
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0")
    make_strategy: Callable[[], Any] = spec.pop("strategy")
    make_callbacks: Callable[[], list[Any]] = spec.pop("callbacks", list)
    model = spec.pop("model", None) or ShardedTinyModel()
    data = spec.pop("data", None) or LanguageData()
    ckpt_path = spec.pop("ckpt_path", None)
    spec.setdefault("max_steps", 4)
    recorder = ShardRecorder(out_dir)
    trainer = quiet_trainer(
        out_dir, make_strategy(), world_size, callbacks=[recorder, *make_callbacks()], **spec
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return recorder.record


def quiet_trainer(out_dir: str, strategy: Any, devices: int, **kwargs: Any) -> pl.Trainer:
    """A CPU Trainer for these tests: no logger, bars, sanity checks or validation."""
    kwargs.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=out_dir,
        **kwargs,
    )


def same_shards(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 0.0) -> None:
    """Asserts two ranks' parameter shards are equal (bitwise with ``atol=0``)."""
    assert len(a) == len(b)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, atol=atol, rtol=0.0)


class FullMeshModel(ShardedTinyModel):
    """Shards over the strategy's whole 2-D mesh (data x tensor parallel): HSDP."""

    def configure_model(self) -> None:
        fully_shard(self.net, mesh=self.device_mesh)
