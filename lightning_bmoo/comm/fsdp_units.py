"""The FSDP2 units of a model, checked for what the bucket-MOO comm supports, and their shards.

A *unit* is one ``fully_shard`` module: its parameter group's gradients reach FSDP's
reduce-scatter together, laid out ``[W, -1]`` where row ``j`` is what rank ``j`` owns: every
parameter's dim-0 chunk ``j``, padded, in the group's parameter order. This module reads that
layout from FSDP2's parameter group (torch 2.13 internals, checked when the comm is installed),
so that each parameter's rows can be found in every slot by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
from torch.distributed.fsdp._fully_shard._fsdp_common import DDPMeshInfo, FSDPMeshInfo
from torch.distributed.fsdp._fully_shard._fsdp_param import FSDPParam
from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup


@dataclass(frozen=True)
class Segment:
    """Where one parameter's gradient lies in its unit's shard on every rank.

    Attributes:
        name: the parameter's name in the model.
        start: offset of its (padded) chunk in the shard.
        end: ``start`` plus the padded chunk length (the same on every rank).
        numel: elements of the whole parameter (for statistics).
    """

    name: str
    start: int
    end: int
    numel: int


class Unit:
    """One ``fully_shard`` module with its single parameter group.

    Args:
        key: the unit's name (its module's qualified name, ``"(root)"`` for the model).
        module: the FSDP module.
        param_names: name of each parameter, by ``id(parameter)``.
    """

    def __init__(self, key: str, module: FSDPModule, param_names: dict[int, str]) -> None:
        self.key = key
        self.module = module
        group: FSDPParamGroup = module._get_fsdp_state()._fsdp_param_groups[0]
        self._group = group
        info = group.mesh_info
        assert isinstance(info, FSDPMeshInfo)
        #: The group FSDP reduce-scatters this unit's gradients over.
        self.process_group: dist.ProcessGroup = (
            info.reduce_scatter_process_group or info.shard_process_group
        )
        self._names = {
            id(fp): param_names.get(id(fp.sharded_param), f"{key}.param{i}")
            for i, fp in enumerate(group.fsdp_params)
        }

    @property
    def param_names(self) -> list[str]:
        """Names of the unit's parameters, in FSDP's order."""
        return [self._names[id(fp)] for fp in self._group.fsdp_params]

    def check_reduction(self, group: dist.ProcessGroup, op: object) -> None:
        """Checks that FSDP still reduces as the comm configured it at installation.

        Raises:
            RuntimeError: if the divide factor, sum reduction, unused-parameter zeros or
                reduce-scatter group changed since.
        """
        g = self._group
        if (
            op != dist.ReduceOp.SUM
            or g.gradient_divide_factor != 1.0
            or not g.force_sum_reduction_for_comms
            or not g.reduce_scatter_unused_params
            or group is not self.process_group
        ):
            raise RuntimeError(
                f"FSDP unit {self.key!r} was reconfigured after the bucket-MOO comm was installed "
                f"(reduce op {op}, divide factor {g.gradient_divide_factor}, sum reduction "
                f"{g.force_sum_reduction_for_comms}, unused-parameter zeros "
                f"{g.reduce_scatter_unused_params}, or another reduce-scatter group). The comm "
                "owns the scaling (divide factor 1, sum reduction) and needs every rank to send "
                "the same layout: leave these settings as install_fsdp_bucket_moo_hook set them."
            )

    def fsdp_params(self) -> list[FSDPParam]:
        """FSDP's parameter records, in the order of the reduce-scatter input."""
        return list(self._group.fsdp_params)

    def segments(self, shard_numel: int) -> tuple[Segment, ...]:
        """The parameters in a reduce-scatter input of ``W * shard_numel`` elements.

        FSDP includes a parameter when it requires a gradient and has been unsharded at least
        once (``reduce_scatter_unused_params`` adds zeros for the ones a backward did not use).

        Raises:
            RuntimeError: if the parameters found do not fill the shard (FSDP changed).
        """
        out, offset = [], 0
        for fp in self._group.fsdp_params:
            if not (hasattr(fp, "_unsharded_param") and fp.unsharded_param.requires_grad):
                continue
            length = math.prod(fp.padded_sharded_param_size)
            out.append(Segment(self._names[id(fp)], offset, offset + length, fp._orig_size.numel()))
            offset += length
        if offset != shard_numel:
            raise RuntimeError(
                f"FSDP unit {self.key!r} reduce-scatters {shard_numel} elements per rank, but its "
                f"parameters that require gradients fill {offset}: this torch's FSDP2 lays out "
                "gradients differently from torch 2.13's, which the bucket-MOO comm reads."
            )
        return tuple(out)


def find_units(model: nn.Module, param_names: dict[int, str]) -> list[Unit]:
    """The model's FSDP2 units that hold parameters, checked for the bucket-MOO comm.

    Raises:
        TypeError: for FSDP1 modules, or a model without ``fully_shard`` units.
        ValueError: for what the comm does not support: several parameter groups in a unit,
            2-D meshes (HSDP, tensor parallel), units over different process groups, or a
            world size of 1.
    """
    if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        raise TypeError(
            "The bucket-MOO FSDP comm works with FSDP2 (torch.distributed.fsdp.fully_shard), "
            "not FullyShardedDataParallel (FSDP1, deprecated). Apply fully_shard to the "
            "model's blocks and then to the model."
        )
    units = []
    for name, module in model.named_modules():
        if not isinstance(module, FSDPModule):
            continue
        groups = module._get_fsdp_state()._fsdp_param_groups
        if len(groups) > 1:
            raise ValueError(
                f"FSDP unit {name or '(root)'!r} has {len(groups)} parameter groups (a "
                "shard_placement_fn placing parameters on different meshes); the bucket-MOO "
                "comm replaces one reduce-scatter per unit. Use one mesh per fully_shard call."
            )
        if groups:
            _check_mesh(name or "(root)", groups[0])
            units.append(Unit(name or "(root)", module, param_names))
    if not units:
        raise TypeError(
            f"{type(model).__name__} has no fully_shard unit holding parameters: apply "
            "torch.distributed.fsdp.fully_shard to its blocks and then to the model (in "
            "Lightning, in configure_model) before installing the bucket-MOO comm."
        )
    ranks = {tuple(dist.get_process_group_ranks(u.process_group)) for u in units}
    if len(ranks) > 1:
        raise ValueError(
            f"The FSDP units shard over different process groups {sorted(ranks)}; the "
            "bucket-MOO comm needs every unit on one data-parallel group."
        )
    if dist.get_world_size(units[0].process_group) == 1:
        raise ValueError(
            "FSDP shards over a single rank, where it skips the gradient reduce-scatter the "
            "bucket-MOO comm replaces. On one device, wrap the model in DistributedDataParallel "
            "and use register_bucket_moo_hook (or Lightning's BucketMOOStrategy) with K > 1 "
            "language-homogeneous microbatches per step: that hook solves over the K slots."
        )
    return units


def _check_mesh(name: str, group: FSDPParamGroup) -> None:
    info = group.mesh_info
    two_d = isinstance(info, DDPMeshInfo) or info.mesh.ndim != 1
    tensor_parallel = any(fp.is_dtensor for fp in group.fsdp_params)
    if two_d or tensor_parallel or not isinstance(info, FSDPMeshInfo):
        what = "tensor-parallel (DTensor) parameters" if tensor_parallel else "a 2-D mesh (HSDP)"
        raise ValueError(
            f"FSDP unit {name!r} uses {what}; the bucket-MOO comm supports plain FSDP over a "
            "1-D data-parallel mesh only. Call fully_shard(module, mesh=<1-D mesh>) (in "
            "Lightning: mesh=self.device_mesh['data_parallel'])."
        )
